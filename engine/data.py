"""UDD5 / UDD6 / plain-image datasets: index the files, then load batches for the model.

Layouts read (case of `.JPG`/`.jpg` does not matter):

    ROOT/{split}/src/*.JPG + ROOT/{split}/gt/*.png     (the UDD5 / UDD6 release)
    ROOT/UDD5/{split}/...  or ROOT/UDD6/{split}/...     (the folder above it)
    ROOT/src + ROOT/gt                                   (one split, flat; or ROOT = that src/)
    ROOT/*.jpg                                           (images only, no ground truth)

Ground truth is always returned in the UDD5 class list `UDD5_CLASSES`, 255 = ignore.
Accepted encodings: a single-channel index PNG (mode L, or mode P whose indices are the
class ids) and a colour PNG (RGB/RGBA, or a palette PNG whose colours are the class
colours). UDD6 (Other, Facade, Road, Vegetation, Vehicle, Roof) is mapped onto UDD5
with Facade + Roof -> building.

Which dataset a tree is (`dataset="auto"`): a UDD6 marker in a few sampled GT files
(index 5 or colour (70, 70, 70), i.e. Roof) means UDD6; otherwise a folder named
UDD6/UDD5 decides; otherwise UDD5. The choice and the reason are in `describe()`.
Index PNGs of UDD6 without any roof look like UDD5 to the sampler: name the folder or
pass `dataset="udd6"` for those.

Modes: `squash` resizes the whole image to 1008 x 1008 exactly as SAM3's processor does
(`engine.preprocess.squash_image`); `tile` cuts 1008 x 1008 crops in original pixels with
stride 1008 - tile_overlap, the last crop aligned to the far edge. A side shorter than
1008 gives one crop of that length, padded to 1008 at the bottom/right with black
pixels and ignored (255) ground truth. Image ids: `{stem}` (squash), `{stem}_r{top}_c{left}`
(tile); with `split=None` over several splits, `{split}_` is prefixed. In tile mode a
worker decodes each image once for all its tiles in a batch.

Bad input never stops a run silently: problems found while indexing (unreadable image
header, missing GT, GT of the wrong size or mode, duplicate stems) are in
`DatasetIndex.bad`; problems found while loading (truncated image, bad GT values) are in
`LoadedBatch.errors`. Both are (image_id, path, one-line message); the run writes both to
errors.parquet. Tree-level problems (no such folder, no images, wrong layout, a UDD6
tree read as UDD5) raise `DataError`.

The GT grids (288 for masks, 72 for tokens) are majority votes over the FULL-RESOLUTION
GT with exactly the rule of `kernels.grid.majority_downsample` (pixel -> cell of its
centre, 255 ignored, ties to the smallest class); `majority_grids` below computes both in
one pass with numpy (~10x faster than the torch scatter on a 12 MP label map on CPU) and
is tested equal to it. By that rule a GT smaller than 288 pixels on a side leaves whole
rows/columns of mask cells without a pixel, hence ignored (255).

Decoding: `decode="cpu"` decodes with PIL in the DataLoader workers; `decode="cuda"`
reads the JPEG bytes in the workers and decodes them on the GPU with
`torchvision.io.decode_jpeg` (non-JPEG files are still decoded by PIL in the workers);
`decode="auto"` uses cuda when the target device is CUDA and a probe decode on it works,
else cpu, and records the choice and the reason (`Loader.decode_used`, `describe()`).
Asking for cuda where it cannot work is a BackendError.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.errors import BackendError, ConfigError, DataError
from engine.preprocess import MODEL_SIDE, squash_image
from engine.source import MASK_GRID, TOKEN_GRID
from kernels.grid import IGNORE, class_counts, coarsen_counts, vote

UDD5_CLASSES = ("vegetation", "building", "road", "vehicle", "other")
UDD5_COLOURS = ((107, 142, 35), (102, 102, 156), (128, 64, 128), (0, 0, 142), (0, 0, 0))
UDD6_CLASSES = ("other", "facade", "road", "vegetation", "vehicle", "roof")
UDD6_COLOURS = ((0, 0, 0), (102, 102, 156), (128, 64, 128), (107, 142, 35), (0, 0, 142), (70, 70, 70))
UDD6_TO_UDD5 = (4, 1, 2, 0, 3, 1)  # other, facade->building, road, vegetation, vehicle, roof->building
UDD6_ROOF_INDEX = 5
UDD6_ROOF_COLOUR = (70, 70, 70)

TILE_SIDE = MODEL_SIDE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_SUFFIXES = (".jpg", ".jpeg")
MODES = ("squash", "tile")
DATASETS = ("auto", "udd5", "udd6", "images")
DECODES = ("auto", "cpu", "cuda")
SPLIT_ORDER = ("train", "val", "test")
GT_PROBE_FILES = 3  # GT files decoded to tell UDD5 from UDD6


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how to turn them into 1008 x 1008 model inputs.

    split: the split folder to read (None: ROOT itself, or every split under it).
    limit: read only the first `limit` images (sorted by name) -- before tiling.
    """

    root: Path
    split: str | None = "val"
    mode: str = "squash"  # or "tile"
    tile_overlap: int = 0  # pixels shared by neighbouring tiles, 0 <= overlap < 1008
    dataset: str = "auto"  # "udd5" | "udd6" | "images" | "auto"
    num_workers: int = 2
    decode: str = "auto"  # "cpu" | "cuda" | "auto"
    limit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.tile_overlap < TILE_SIDE:
            raise ConfigError(f"--tile-overlap must be in [0, {TILE_SIDE - 1}] pixels, got {self.tile_overlap}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.decode not in DECODES:
            raise ConfigError(f"--decode must be one of {', '.join(DECODES)}, got {self.decode!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.split is not None and (not self.split or "/" in self.split or self.split in (".", "..")):
            raise ConfigError(f"--split must be a folder name such as val or train, got {self.split!r}")


@dataclass(frozen=True)
class Item:
    """One model input: a whole image (squash) or one 1008 crop of it (tile)."""

    image_id: str
    image_path: Path
    gt_path: Path | None
    tile: tuple[int, int, int, int] | None  # (top, left, height, width) in original pixels


@dataclass
class DatasetIndex:
    """The items of a dataset, in a fixed order, plus what was skipped while indexing."""

    root: Path
    split: str | None
    mode: str
    tile_overlap: int
    dataset: str  # resolved: "udd5" | "udd6" | "images"
    dataset_reason: str
    classes: tuple[str, ...]
    has_gt: bool
    items: list[Item]
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, path, error)
    folders: list[tuple[str | None, Path, Path | None]] = field(default_factory=list)  # (split, src, gt)
    num_images: int = 0

    def describe(self) -> dict:
        """What run.json records about the data."""
        return {
            "root": str(self.root),
            "split": self.split,
            "folders": [{"split": s, "src": str(src), "gt": None if gt is None else str(gt)} for s, src, gt in self.folders],
            "dataset": self.dataset,
            "dataset_reason": self.dataset_reason,
            "classes": list(self.classes),
            "has_gt": self.has_gt,
            "mode": self.mode,
            "tile_side": TILE_SIDE if self.mode == "tile" else None,
            "tile_overlap": self.tile_overlap if self.mode == "tile" else None,
            "num_images": self.num_images,
            "num_items": len(self.items),
            "num_bad": len(self.bad),
            "model_side": MODEL_SIDE,
        }


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelScheme:
    """How one dataset's GT values map onto UDD5 class ids (255 = ignore)."""

    name: str
    colours: tuple[tuple[int, int, int], ...]
    to_udd5: tuple[int, ...]

    def index_lut(self) -> np.ndarray:
        lut = np.full(256, -1, dtype=np.int16)  # -1 marks a value that is not a class
        lut[: len(self.to_udd5)] = self.to_udd5
        lut[IGNORE] = IGNORE
        return lut

    def colour_keys(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in self.colours], dtype=np.int32)
        order = np.argsort(keys)
        return keys[order], np.asarray(self.to_udd5, dtype=np.uint8)[order]


SCHEMES = {
    "udd5": LabelScheme("udd5", UDD5_COLOURS, tuple(range(len(UDD5_CLASSES)))),
    "udd6": LabelScheme("udd6", UDD6_COLOURS, UDD6_TO_UDD5),
}


def _udd6_hint(scheme: LabelScheme) -> str:
    return "; it looks like UDD6 (5 / (70,70,70) = Roof): pass --dataset udd6" if scheme.name == "udd5" else ""


def _fmt_colour(key: int) -> str:
    return f"({key >> 16},{(key >> 8) & 255},{key & 255})"


def _map_index(values: np.ndarray, scheme: LabelScheme, path: Path) -> np.ndarray:
    lut = scheme.index_lut()
    mapped = lut[values]
    if (mapped < 0).any():
        bad = np.unique(values[mapped < 0])
        shown = ", ".join(str(v) for v in bad[:8])
        hint = _udd6_hint(scheme) if UDD6_ROOF_INDEX in bad else ""
        raise DataError(
            f"{path}: ground-truth values {shown} are not {scheme.name.upper()} class indices "
            f"(0-{len(scheme.to_udd5) - 1}, 255 = ignore){hint}"
        )
    return mapped.astype(np.uint8)


def _map_colour(rgb: np.ndarray, scheme: LabelScheme, path: Path) -> np.ndarray:
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    keys, classes = scheme.colour_keys()
    pos = np.searchsorted(keys, key).clip(max=len(keys) - 1)
    known = keys[pos] == key
    if not known.all():
        bad = np.unique(key[~known])
        shown = ", ".join(_fmt_colour(int(k)) for k in bad[:6])
        roof = (UDD6_ROOF_COLOUR[0] << 16) | (UDD6_ROOF_COLOUR[1] << 8) | UDD6_ROOF_COLOUR[2]
        hint = _udd6_hint(scheme) if roof in bad else ""
        raise DataError(
            f"{path}: colours {shown} are not {scheme.name.upper()} class colours "
            f"(colour PNG GT must use exactly the class colours, no anti-aliasing){hint}"
        )
    return classes[pos]


def _palette_is_colour_coded(img: Image.Image, used: np.ndarray, scheme: LabelScheme) -> bool:
    """A palette PNG whose used entries are all class colours is read by colour."""
    palette = img.getpalette() or []
    table = np.asarray(palette + [0] * (768 - len(palette)), dtype=np.int32)[:768].reshape(256, 3)
    colours = {tuple(c) for c in scheme.colours}
    return all(tuple(int(v) for v in table[u]) in colours for u in used)


def read_gt(path: Path, scheme: LabelScheme, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a GT PNG to an (H, W) uint8 UDD5 class map, 255 = ignore. Raises DataError.

    expected_size: (width, height) of the image it labels.
    """
    try:
        with Image.open(path) as img:
            check_gt_header(img, path, expected_size)
            img.load()
            mode = img.mode
            if mode == "L":
                return _map_index(np.asarray(img), scheme, path)
            if mode == "P":
                idx = np.asarray(img)
                used = np.unique(idx)
                if _palette_is_colour_coded(img, used, scheme):
                    return _map_colour(np.asarray(img.convert("RGB")), scheme, path)
                return _map_index(idx, scheme, path)
            return _map_colour(np.asarray(img.convert("RGB")), scheme, path)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read ground truth ({_one_line(err, path)}); re-export it as a PNG") from None


GT_MODES = ("L", "P", "RGB", "RGBA")


def check_gt_header(img: Image.Image, path: Path, expected_size: tuple[int, int] | None) -> None:
    """Size and mode checks that need only the PNG header."""
    if img.format not in (None, "PNG"):
        raise DataError(f"{path}: ground truth is {img.format}, not PNG; lossy formats corrupt labels, export PNG")
    if img.mode not in GT_MODES:
        raise DataError(
            f"{path}: ground-truth mode {img.mode} is not supported; expected an 8-bit index PNG "
            f"(mode L or P) or an RGB colour PNG"
        )
    if expected_size is not None and tuple(img.size) != tuple(expected_size):
        raise DataError(
            f"{path}: ground truth is {img.size[0]}x{img.size[1]} but its image is "
            f"{expected_size[0]}x{expected_size[1]}; GT must have the image's size"
        )


def check_gt_file(path: Path, expected_size: tuple[int, int] | None) -> None:
    """check_gt_header on a file; DataError also when it is no image at all."""
    try:
        with Image.open(path) as img:
            check_gt_header(img, path, expected_size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read ground truth ({_one_line(err, path)}); re-export it as a PNG") from None


def _raw_gt_markers(path: Path) -> tuple[bool, str] | None:
    """(has a UDD6 roof marker, encoding) for one GT file, or None if unreadable."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode == "L":
                return bool((np.asarray(img) == UDD6_ROOF_INDEX).any()), "index"
            if mode == "P":
                idx = np.asarray(img)
                used = np.unique(idx)
                if _palette_is_colour_coded(img, used, SCHEMES["udd6"]):
                    rgb = np.asarray(img.convert("RGB"))
                    return bool((rgb == UDD6_ROOF_COLOUR).all(-1).any()), "colour"
                return bool(UDD6_ROOF_INDEX in used), "index"
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
                return bool((rgb == UDD6_ROOF_COLOUR).all(-1).any()), "colour"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return None


def majority_grids(labels: np.ndarray, num_classes: int, grid: int = MASK_GRID, coarse: int = TOKEN_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 label map -> ((grid, grid), (coarse, coarse)) uint8 majority maps.

    The rule of kernels.grid.majority_downsample; the coarse grid (which must divide the
    fine one) is voted from the fine counts summed, so the pixels are counted once.
    """
    assert labels.ndim == 2 and labels.dtype == np.uint8, f"labels must be (H, W) uint8, got {labels.dtype} {labels.shape}"
    counts = class_counts(torch.from_numpy(labels)[None], grid, num_classes)
    return vote(counts)[0].numpy(), vote(coarsen_counts(counts, coarse))[0].numpy()


# ----------------------------------------------------------------------------- indexing


def _one_line(err: BaseException, path: Path | None = None) -> str:
    """The exception as one line, without repeating the path the message already starts with."""
    text = str(err)
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(f" {path}", "")
    return " ".join(text.split()) or type(err).__name__


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _child(folder: Path, name: str) -> Path | None:
    """A child folder by case-insensitive name."""
    if not folder.is_dir():
        return None
    exact = folder / name
    if exact.is_dir():
        return exact
    matches = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _split_dirs(folder: Path) -> list[Path]:
    """Children of `folder` that hold a src/ folder, in train, val, test, then name order."""
    found = [p for p in folder.iterdir() if p.is_dir() and _child(p, "src") is not None]
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return sorted(found, key=lambda p: (rank.get(p.name.lower(), len(rank)), p.name))


def _find_folders(root: Path, split: str | None) -> list[tuple[str | None, Path, Path | None]]:
    """The (split, src, gt-or-None) folders of the tree at root; DataError if none."""
    if not root.exists():
        raise DataError(f"{root}: no such dataset folder; pass the folder that holds {split or 'val'}/src/ and {split or 'val'}/gt/")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a dataset folder; use `datr analyze {root}` for one image")

    def with_gt(name: str | None, split_dir: Path) -> tuple[str | None, Path, Path | None]:
        return (name, _child(split_dir, "src"), _child(split_dir, "gt"))

    if _child(root, "src") is not None:
        return [with_gt(None, root)]
    if root.name.lower() == "src" and _child(root.parent, "gt") is not None:  # the src folder itself was given
        return [(None, root, _child(root.parent, "gt"))]
    base = root
    dataset_dirs = [d for d in (_child(root, "UDD5"), _child(root, "UDD6")) if d is not None and _split_dirs(d)]
    if not _split_dirs(root) and dataset_dirs:
        if len(dataset_dirs) > 1:
            raise DataError(f"{root}: holds both {dataset_dirs[0].name}/ and {dataset_dirs[1].name}/; pass one of them as the dataset folder")
        base = dataset_dirs[0]
    splits = _split_dirs(base)
    if splits:
        if split is None:
            return [with_gt(d.name, d) for d in splits]
        chosen = _child(base, split)
        if chosen is None or _child(chosen, "src") is None:
            names = ", ".join(d.name for d in splits)
            raise DataError(f"{base}: no split {split!r} with a src/ folder (found: {names}); pass --split with one of those")
        return [with_gt(chosen.name, chosen)]
    if _list_images(root):
        return [(None, root, None)]
    raise DataError(
        f"{root}: not a UDD dataset and no images in it; expected {root}/{split or 'val'}/src/*.JPG with "
        f"{root}/{split or 'val'}/gt/*.png, or a folder of .jpg/.png images"
    )


def _name_marker(folder: Path) -> str | None:
    """'udd5' / 'udd6' if the src folder or the two folders above it are so named."""
    for part in (folder.parent.name, folder.parent.parent.name, folder.parent.parent.parent.name):
        low = part.lower()
        if "udd6" in low:
            return "udd6"
        if "udd5" in low:
            return "udd5"
    return None


def _resolve_dataset(requested: str, folders: list[tuple[str | None, Path, Path | None]], gt_files: list[Path]) -> tuple[str, str]:
    """(dataset, reason). Raises DataError for a UDD6 tree read as UDD5 or GT asked for but absent."""
    has_gt_dir = all(gt is not None for _, _, gt in folders)
    if requested == "images":
        return "images", "requested (ground truth, if any, is not read)"
    if not has_gt_dir:
        src = next(src for _, src, gt in folders if gt is None)
        if requested in ("udd5", "udd6"):
            if src.name.lower() == "src":
                raise DataError(f"{src.parent / 'gt'}: no ground-truth folder for --dataset {requested}; add gt/*.png or pass --dataset images")
            raise DataError(f"{src}: a plain image folder has no ground truth for --dataset {requested}; pass --dataset images")
        return "images", f"auto: no gt/ folder for {src}: images only"
    if not gt_files:
        raise DataError(f"{folders[0][2]}: ground-truth folder holds no .png files; add them or pass --dataset images")
    step = max(1, len(gt_files) // GT_PROBE_FILES)
    probe = gt_files[::step][:GT_PROBE_FILES]
    markers = [(p, _raw_gt_markers(p)) for p in probe]
    roof = next((p for p, m in markers if m is not None and m[0]), None)
    name = _name_marker(folders[0][1])
    if requested == "udd5":
        if roof is not None:
            raise DataError(
                f"{roof}: holds UDD6 labels (index 5 / colour (70,70,70) = Roof) but the dataset is read as UDD5; "
                f"pass --dataset udd6 (or auto)"
            )
        return "udd5", "requested"
    if requested == "udd6":
        return "udd6", "requested"
    if roof is not None:
        return "udd6", f"auto: UDD6 Roof label found in {roof.name}"
    if name is not None:
        return name, f"auto: folder named {name.upper()} (no Roof label in {len(probe)} sampled GT files)"
    return "udd5", f"auto: no UDD6 Roof label in {len(probe)} sampled GT files and no UDD5/UDD6 folder name; assuming UDD5"


def tile_origins(length: int, overlap: int, side: int = TILE_SIDE) -> list[int]:
    """Start offsets of the crops along one side: stride side - overlap, last one at the edge."""
    if length <= side:
        return [0]
    stride = side - overlap
    starts = list(range(0, length - side, stride))
    starts.append(length - side)
    return starts


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding; DataError if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image ({_one_line(err, path)}); re-copy or remove it") from None


def _items_for(image_id: str, image: Path, gt: Path | None, mode: str, overlap: int, size: tuple[int, int]) -> list[Item]:
    if mode == "squash":
        return [Item(image_id, image, gt, None)]
    width, height = size
    tiles = []
    for top in tile_origins(height, overlap):
        for left in tile_origins(width, overlap):
            tile = (top, left, min(TILE_SIDE, height), min(TILE_SIDE, width))
            tiles.append(Item(f"{image_id}_r{top}_c{left}", image, gt, tile))
    return tiles


def index_dataset(cfg: DataConfig) -> DatasetIndex:
    """List the items of the dataset at cfg.root (sorted by file name, tiles row-major)."""
    folders = _find_folders(cfg.root, cfg.split)
    prefix_split = cfg.split is None and len(folders) > 1
    images: list[tuple[str, Path, Path | None]] = []  # (base id, image, gt folder)
    bad: list[tuple[str, str, str]] = []
    seen: dict[str, Path] = {}
    for split, src, gt_dir in folders:
        for path in _list_images(src):
            base_id = f"{split}_{path.stem}" if prefix_split else path.stem
            if base_id in seen:
                bad.append((base_id, str(path), f"{path}: same name as {seen[base_id].name}; rename one of them"))
                continue
            seen[base_id] = path
            images.append((base_id, path, gt_dir))
    if not images:
        where = ", ".join(str(src) for _, src, _ in folders)
        raise DataError(f"{where}: no images (.jpg, .jpeg, .png) in the image folder")
    if cfg.limit is not None:
        images = images[: cfg.limit]

    gt_by_dir: dict[Path, dict[str, Path]] = {}
    for _, _, gt_dir in folders:
        if gt_dir is not None:
            gt_by_dir[gt_dir] = {p.stem: p for p in sorted(gt_dir.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}
    gt_files = [gt_by_dir[g][path.stem] for _, path, g in images if g is not None and path.stem in gt_by_dir[g]]
    dataset, reason = _resolve_dataset(cfg.dataset, folders, gt_files)
    has_gt = dataset != "images"

    items: list[Item] = []
    for base_id, path, gt_dir in images:
        try:
            size = image_size(path)
        except DataError as err:
            bad.append((base_id, str(path), err.message))
            continue
        gt = None
        if has_gt:
            gt = gt_by_dir[gt_dir].get(path.stem)
            if gt is None:
                bad.append((base_id, str(path), f"{path}: no ground truth {gt_dir / (path.stem + '.png')}; add it or remove the image"))
                continue
            try:
                check_gt_file(gt, size)
            except DataError as err:
                bad.append((base_id, str(gt), err.message))
                continue
        items.extend(_items_for(base_id, path, gt, cfg.mode, cfg.tile_overlap, size))
    return DatasetIndex(
        root=cfg.root, split=cfg.split, mode=cfg.mode, tile_overlap=cfg.tile_overlap, dataset=dataset,
        dataset_reason=reason, classes=UDD5_CLASSES, has_gt=has_gt, items=items, bad=bad,
        folders=folders, num_images=len(images),
    )


def index_image(image: Path, gt: Path | None = None, *, mode: str = "squash", tile_overlap: int = 0, dataset: str = "auto") -> DatasetIndex:
    """An index over one image file (and its GT), for `datr analyze IMAGE [--gt GT.png]`."""
    image, gt = Path(image), None if gt is None else Path(gt)
    cfg = DataConfig(root=image.parent, split=None, mode=mode, tile_overlap=tile_overlap, dataset=dataset)
    if not image.is_file():
        raise DataError(f"{image}: no such image file")
    if gt is not None and not gt.is_file():
        raise DataError(f"{gt}: no such ground-truth file")
    size = image_size(image)
    if gt is None:
        if dataset in ("udd5", "udd6"):
            raise DataError(f"{image}: --dataset {dataset} needs ground truth; pass --gt GT.png")
        resolved, reason = "images", "no ground truth given"
    else:
        resolved, reason = _resolve_dataset(dataset, [(None, image.parent, gt.parent)], [gt])
        if resolved == "images":
            gt = None
        else:
            check_gt_file(gt, size)
    items = _items_for(image.stem, image, gt, cfg.mode, cfg.tile_overlap, size)
    return DatasetIndex(
        root=image.parent, split=None, mode=mode, tile_overlap=tile_overlap, dataset=resolved, dataset_reason=reason,
        classes=UDD5_CLASSES, has_gt=gt is not None, items=items, folders=[(None, image.parent, None if gt is None else gt.parent)],
        num_images=1,
    )


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedItem:
    """One item ready for the model (CPU tensors).

    image:     (3, 1008, 1008) uint8
    gt_full:   (h, w) uint8 UDD5 class map of the item at original resolution (for a tile
               the crop, padded to 1008 with 255), or None without GT
    gt_mask:   (288, 288) uint8 majority of gt_full, 255 = ignore, or None
    gt_tokens: (72, 72) uint8 majority of gt_full, 255 = ignore, or None
    """

    image_id: str
    index: int
    image: torch.Tensor
    gt_full: torch.Tensor | None
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None


@dataclass
class LoadedBatch:
    """A batch of model inputs; items that failed to load are in `errors`, not in the tensors.

    images:    (B, 3, 1008, 1008) uint8 -- pinned when the target device is CUDA; already on
               the device when decoding there (decode_used == "cuda"). B may be 0 when every
               item of the batch failed.
    gt_mask:   (B, 288, 288) uint8 or None; gt_tokens: (B, 72, 72) uint8 or None (255 = ignore)
    indices:   positions in DatasetIndex.items, aligned with image_ids
    errors:    (image_id, path, one-line message) for the items of this batch that failed
    """

    images: torch.Tensor
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None
    image_ids: list[str]
    indices: list[int]
    errors: list[tuple[str, str, str]]

    def pin_memory(self) -> LoadedBatch:
        """Called by the DataLoader's pinning thread."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None or t.is_cuda else t.pin_memory()

        return replace(self, images=pin(self.images), gt_mask=pin(self.gt_mask), gt_tokens=pin(self.gt_tokens))

    def to(self, device: torch.device | str, non_blocking: bool = True) -> LoadedBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(self, images=move(self.images), gt_mask=move(self.gt_mask), gt_tokens=move(self.gt_tokens))


def _decode_cpu(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 via PIL; DataError for unreadable or truncated files."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = np.array(img.convert("RGB"))  # a writable copy torch can own
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({_one_line(err, path)}); re-copy or remove it") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _crop_image(image: torch.Tensor, tile: tuple[int, int, int, int] | None, side: int = TILE_SIDE) -> torch.Tensor:
    """(3, H, W) -> the model input (3, 1008, 1008): squashed whole image or padded crop."""
    if tile is None:
        return squash_image(image)
    top, left, h, w = tile
    crop = image[:, top : top + h, left : left + w]
    if (h, w) != (side, side):
        crop = torch.nn.functional.pad(crop, (0, side - w, 0, side - h), value=0)
    return crop.contiguous()


def _crop_gt(gt: np.ndarray, tile: tuple[int, int, int, int] | None, side: int = TILE_SIDE) -> np.ndarray:
    if tile is None:
        return gt
    top, left, h, w = tile
    out = np.full((side, side), IGNORE, dtype=np.uint8)
    out[:h, :w] = gt[top : top + h, left : left + w]
    return out


class _FullImageCache:
    """The last whole image and GT decoded in this process.

    Tiles of one image are consecutive in the index and a batch goes to one worker, so
    the tiles of a batch share one decode instead of one each.
    """

    def __init__(self) -> None:
        self.key: tuple[Path, Path | None] | None = None
        self.image: torch.Tensor | None = None
        self.gt: np.ndarray | None = None


def _read_full(item: Item, scheme: LabelScheme | None, cache: _FullImageCache | None, with_image: bool = True,
               size: tuple[int, int] | None = None) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """The whole image (3, H, W) uint8 (if with_image) and its UDD5 GT (H, W) (or None)."""
    key = (item.image_path, item.gt_path)
    if cache is not None and cache.key == key and (cache.image is not None or not with_image):
        return cache.image, cache.gt
    image = _decode_cpu(item.image_path) if with_image else None
    if image is not None:
        size = (image.shape[2], image.shape[1])
    gt = None
    if item.gt_path is not None and scheme is not None:
        if not item.gt_path.is_file():
            raise DataError(f"{item.gt_path}: ground truth missing; add it or remove {item.image_path.name}")
        gt = read_gt(item.gt_path, scheme, size)
    if cache is not None:
        cache.key, cache.image, cache.gt = key, image, gt
    return image, gt


def _gt_grids(gt: np.ndarray | None, tile: tuple[int, int, int, int] | None) -> tuple[torch.Tensor, ...] | None:
    """(crop at full resolution, 288 majority, 72 majority) or None without GT."""
    if gt is None:
        return None
    crop = _crop_gt(gt, tile)
    mask, tokens = majority_grids(crop, len(UDD5_CLASSES))
    return torch.from_numpy(crop), torch.from_numpy(mask), torch.from_numpy(tokens)


def _check_tile_fits(item: Item, size: tuple[int, int]) -> None:
    if item.tile is not None:
        top, left, h, w = item.tile
        if top + h > size[1] or left + w > size[0]:
            raise DataError(f"{item.image_path}: image is {size[0]}x{size[1]}, smaller than when it was indexed; re-index")


def load_item(index: DatasetIndex, i: int, *, _cache: _FullImageCache | None = None) -> LoadedItem:
    """Load item i on the CPU (PIL decode); DataError if the image or its GT is bad."""
    item = index.items[i]
    image, gt = _read_full(item, SCHEMES.get(index.dataset), _cache)
    _check_tile_fits(item, (image.shape[2], image.shape[1]))
    grids = _gt_grids(gt, item.tile)
    model_input = _crop_image(image, item.tile)
    if grids is None:
        return LoadedItem(item.image_id, i, model_input, None, None, None)
    return LoadedItem(item.image_id, i, model_input, *grids)


@dataclass
class _Encoded:
    """A JPEG read as bytes in a worker, decoded on the GPU in the main process."""

    image_id: str
    index: int
    data: torch.Tensor  # (n,) uint8 file bytes
    tile: tuple[int, int, int, int] | None
    size: tuple[int, int]
    path: str
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None


class _ItemDataset(torch.utils.data.Dataset):
    """Map-style dataset over index positions; returns LoadedItem, _Encoded or an error tuple."""

    def __init__(self, index: DatasetIndex, gpu_jpeg: bool):
        self.index = index
        self.gpu_jpeg = gpu_jpeg
        self.scheme = SCHEMES.get(index.dataset)
        self.cache = _FullImageCache() if index.mode == "tile" else None

    def __len__(self) -> int:
        return len(self.index.items)

    def __getitem__(self, i: int):
        item = self.index.items[i]
        try:
            if self.gpu_jpeg and item.image_path.suffix.lower() in JPEG_SUFFIXES:
                data = item.image_path.read_bytes()
                # a JPEG without its end marker is truncated: PIL on the CPU reports that
                # reliably, a GPU decoder may not
                if data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    return self._encoded(i, item, data)
            loaded = load_item(self.index, i, _cache=self.cache)
            loaded.gt_full = None  # not needed by the batch; spares the inter-process copy
            return loaded
        except DataError as err:
            gt = item.gt_path
            path = gt if gt is not None and err.message.startswith(str(gt)) else item.image_path
            return (item.image_id, str(path), err.message)

    def _encoded(self, i: int, item: Item, data: bytes) -> _Encoded:
        size = image_size(item.image_path)
        _check_tile_fits(item, size)
        _, gt = _read_full(item, self.scheme, self.cache, with_image=False, size=size)
        grids = _gt_grids(gt, item.tile)
        return _Encoded(item.image_id, i, torch.frombuffer(bytearray(data), dtype=torch.uint8), item.tile, size,
                        str(item.image_path), None if grids is None else grids[1], None if grids is None else grids[2])


@dataclass
class _Collated:
    """One batch out of the workers: CPU-decoded items stacked, JPEG bytes left for the GPU."""

    batch: LoadedBatch
    encoded: list[_Encoded]

    def pin_memory(self) -> _Collated:  # called by the DataLoader's pinning thread
        return _Collated(self.batch.pin_memory(), self.encoded)


class _Collate:
    def __init__(self, has_gt: bool):
        self.has_gt = has_gt

    def __call__(self, samples: list) -> _Collated:
        loaded = [s for s in samples if isinstance(s, LoadedItem)]
        encoded = [s for s in samples if isinstance(s, _Encoded)]
        errors = [s for s in samples if isinstance(s, tuple)]
        return _Collated(_stack(loaded, errors, self.has_gt), encoded)


def _stack(loaded: Sequence[LoadedItem], errors: list[tuple[str, str, str]], has_gt: bool) -> LoadedBatch:
    def stacked(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not loaded:
            return torch.empty(0, *shape, dtype=torch.uint8)
        return torch.stack([getattr(s, name) for s in loaded])

    images = stacked("image", (3, MODEL_SIDE, MODEL_SIDE))
    gt_mask = stacked("gt_mask", (MASK_GRID, MASK_GRID)) if has_gt else None
    gt_tokens = stacked("gt_tokens", (TOKEN_GRID, TOKEN_GRID)) if has_gt else None
    return LoadedBatch(images, gt_mask, gt_tokens, [s.image_id for s in loaded], [s.index for s in loaded], list(errors))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode in parallel; intra-op threads would oversubscribe


def _tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def probe_cuda_decode(device: torch.device) -> tuple[bool, str]:
    """Can torchvision decode a JPEG on this CUDA device? (ok, reason)."""
    if device.type != "cuda":
        return False, f"device {device} is not CUDA"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    try:
        from torchvision.io import decode_jpeg
    except Exception as err:  # noqa: BLE001 -- torchvision fails in many ways next to a mismatched torch
        return False, f"torchvision.io.decode_jpeg unavailable ({_one_line(err)})"
    try:
        data = torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8)
        out = decode_jpeg([data], device=device)
        if tuple(out[0].shape) != (3, 16, 16):
            return False, f"GPU decode gave shape {tuple(out[0].shape)}"
    except Exception as err:  # noqa: BLE001
        return False, f"GPU JPEG decode failed ({_one_line(err)})"
    return True, "torchvision.io.decode_jpeg works on the device"


def resolve_decode(decode: str, device: torch.device | str) -> tuple[str, str]:
    """(decode_used, reason): 'cuda' or 'cpu'. decode='cuda' that cannot work is a BackendError."""
    device = torch.device(device)
    if decode == "cpu":
        return "cpu", "requested"
    ok, why = probe_cuda_decode(device)
    if decode == "cuda":
        if not ok:
            raise BackendError(f"--decode cuda is not available: {why}; use --decode cpu or auto")
        return "cuda", "requested"
    return ("cuda", f"auto: {why}") if ok else ("cpu", f"auto: {why}")


class Loader:
    """Iterates LoadedBatch over planned batches of index positions (deterministic order).

    `batches` is the plan: consecutive runs of `batch_size` positions from `indices`
    (default: every item), so the same items always share a batch, whatever the workers do.
    """

    def __init__(self, index: DatasetIndex, cfg: DataConfig, batch_size: int, device: torch.device | str,
                 indices: Sequence[int] | None = None):
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        self.index = index
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = cfg.num_workers
        positions = list(range(len(index.items))) if indices is None else [int(i) for i in indices]
        for i in positions:
            if not 0 <= i < len(index.items):
                raise ConfigError(f"item position {i} is outside the index (0-{len(index.items) - 1})")
        self.batches = [positions[s : s + batch_size] for s in range(0, len(positions), batch_size)]
        self.decode_requested = cfg.decode
        self.decode_used, self.decode_reason = resolve_decode(cfg.decode, self.device)
        self.pin_memory = self.device.type == "cuda"  # CPU-decoded images and the GT grids

    def __len__(self) -> int:
        return len(self.batches)

    def describe(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "num_batches": len(self.batches),
            "num_workers": self.num_workers,
            "decode_requested": self.decode_requested,
            "decode_used": self.decode_used,
            "decode_reason": self.decode_reason,
            "pin_memory": self.pin_memory,
        }

    def __iter__(self) -> Iterator[LoadedBatch]:
        if not self.batches:
            return
        dataset = _ItemDataset(self.index, gpu_jpeg=self.decode_used == "cuda")
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.batches,
            num_workers=self.num_workers,
            collate_fn=_Collate(self.index.has_gt),
            pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )
        for planned, collated in zip(self.batches, loader, strict=True):
            batch = self._merge_gpu(collated.batch, collated.encoded) if collated.encoded else collated.batch
            yield self._in_plan_order(batch, planned)

    def _merge_gpu(self, batch: LoadedBatch, encoded: list[_Encoded]) -> LoadedBatch:
        """Decode the JPEG bytes on the device, crop/squash there, and join the CPU items."""
        from torchvision.io import ImageReadMode, decode_jpeg

        rgb = ImageReadMode.RGB
        try:
            decoded = decode_jpeg([e.data for e in encoded], mode=rgb, device=self.device)
            pairs = list(zip(encoded, decoded, strict=True))
        except Exception:  # noqa: BLE001 -- one bad file fails the whole call: redo one by one
            pairs = []
            for e in encoded:
                try:
                    pairs.append((e, decode_jpeg(e.data, mode=rgb, device=self.device)))
                except Exception as err:  # noqa: BLE001
                    batch.errors.append((e.image_id, e.path, f"{e.path}: cannot decode JPEG on the GPU ({_one_line(err)}); re-copy or remove it"))
        good = []
        for e, image in pairs:
            if (image.shape[2], image.shape[1]) != e.size:
                batch.errors.append((e.image_id, e.path, f"{e.path}: GPU decode gave {image.shape[2]}x{image.shape[1]}, header says {e.size[0]}x{e.size[1]}; re-copy it"))
                continue
            good.append((e, _crop_image(image, e.tile)))
        images = torch.cat([batch.images.to(self.device, non_blocking=True)] + [img[None] for _, img in good])
        gt_mask = gt_tokens = None
        if batch.gt_mask is not None:  # the GT grids stay on the CPU, as on the CPU path
            gt_mask = torch.cat([batch.gt_mask] + [e.gt_mask[None] for e, _ in good])
            gt_tokens = torch.cat([batch.gt_tokens] + [e.gt_tokens[None] for e, _ in good])
        return LoadedBatch(images, gt_mask, gt_tokens, batch.image_ids + [e.image_id for e, _ in good],
                           batch.indices + [e.index for e, _ in good], batch.errors)

    def _in_plan_order(self, batch: LoadedBatch, planned: list[int]) -> LoadedBatch:
        """Images and errors in the planned order, whichever path (CPU/GPU) each item took."""
        rank = {self.index.items[pos].image_id: r for r, pos in enumerate(planned)}
        errors = sorted(batch.errors, key=lambda e: rank.get(e[0], len(rank)))
        order = sorted(range(len(batch.image_ids)), key=lambda r: rank[batch.image_ids[r]])
        if order == list(range(len(order))):
            return replace(batch, errors=errors)
        perm = torch.tensor(order, dtype=torch.long)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[perm.to(t.device)]

        return LoadedBatch(take(batch.images), take(batch.gt_mask), take(batch.gt_tokens),
                           [batch.image_ids[r] for r in order], [batch.indices[r] for r in order], errors)


def make_loader(index: DatasetIndex, cfg: DataConfig, batch_size: int, device: torch.device | str,
                indices: Sequence[int] | None = None) -> Loader:
    """Batches of `index` (or of the positions `indices`, e.g. the unfinished ones on resume)."""
    return Loader(index, cfg, batch_size, device, indices)

