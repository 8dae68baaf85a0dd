"""UDD5 / UDD6 / plain-image datasets: list the items (images or tiles) in a fixed order.

Layouts read (case of `.JPG`/`.jpg` does not matter):

    ROOT/{split}/src/*.JPG + ROOT/{split}/gt/*.png     (the UDD5 / UDD6 release)
    ROOT/UDD5/{split}/...  or ROOT/UDD6/{split}/...     (the folder above it)
    ROOT/src + ROOT/gt                                   (one split, flat; or ROOT = that src/)
    ROOT/*.jpg                                           (images only, no ground truth)

Which dataset a tree is (`dataset="auto"`): a UDD6 marker in a few sampled GT files
(index 5 or colour (70, 70, 70), i.e. Roof) means UDD6; otherwise a folder named
UDD6/UDD5 decides; otherwise UDD5. The choice and the reason are in `describe()`.
Index PNGs of UDD6 without any roof look like UDD5 to the sampler: name the folder or
pass `dataset="udd6"` for those.

Modes: `squash` makes one item per image (resized to 1008 x 1008 by the loader, as
SAM3's processor does); `tile` cuts 1008 x 1008 crops in original pixels with stride
1008 - tile_overlap, the last crop aligned to the far edge. A side shorter than 1008
gives one crop of that length (the loader pads it). Image ids: `{stem}` (squash),
`{stem}_r{top}_c{left}` (tile); with `split=None` over several splits, `{split}_` is
prefixed.

Problems found while indexing (unreadable image header, missing GT, GT of the wrong
size or mode, duplicate stems) are in `DatasetIndex.bad` as (image_id, path, one-line
message); the run writes them to errors.parquet. Tree-level problems (no such folder,
no images, wrong layout, a UDD6 tree read as UDD5) raise `DataError`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from engine.core.config import DataConfig
from engine.core.errors import DataError, one_line
from engine.core.geometry import MODEL_SIDE
from engine.data.classes import UDD5_CLASSES
from engine.data.labels import check_gt_file, gt_markers

TILE_SIDE = MODEL_SIDE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_ORDER = ("train", "val", "test")
GT_PROBE_FILES = 3  # GT files decoded to tell UDD5 from UDD6


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



def _list_images(folder: Path) -> list[Path]:
    """The image files of a folder by name, including links that lead nowhere (recorded as bad by the caller)."""
    def wanted(p: Path) -> bool:
        return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink())

    return sorted(p for p in folder.iterdir() if wanted(p))


def _unreachable(path: Path) -> str | None:
    """Why a listed image cannot be opened (a symlink loop or a dangling link), or None."""
    try:
        path.stat()
    except OSError as err:
        what = "a symbolic link loop" if err.errno == errno.ELOOP else "a link to nothing"
        return f"{path}: {what} ({one_line(err, path)}); fix or remove the link"
    return None if path.is_file() else f"{path}: a link to something that is not a file; fix or remove the link"


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
    markers = [(p, gt_markers(p)) for p in probe]
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
    if name is not None:  # taken at its word: a GT file that contradicts it is an error for that item (engine.data.labels)
        found = f"a UDD6 Roof label in {roof.name}, which is an error for that item" if roof is not None else \
            f"no Roof label in {len(probe)} sampled GT files"
        return name, f"auto: folder named {name.upper()} ({found})"
    if roof is not None:
        return "udd6", f"auto: UDD6 Roof label found in {roof.name}"
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
        raise DataError(f"{path}: not a readable image ({one_line(err, path)}); re-copy or remove it") from None


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
    if cfg.root is None:
        raise DataError("give a DATASET folder (the one that holds val/src/ and val/gt/)")
    folders = _find_folders(cfg.root, cfg.split)
    prefix_split = cfg.split is None and len(folders) > 1
    images: list[tuple[str, Path, Path | None]] = []  # (base id, image, gt folder)
    bad: list[tuple[str, str, str]] = []
    seen: dict[str, Path] = {}
    for split, src, gt_dir in folders:
        for path in _list_images(src):
            base_id = f"{split}_{path.stem}" if prefix_split else path.stem
            if base_id in seen:  # recorded under its file name: the first one's id may well finish
                bad.append((f"{base_id}{path.suffix}", str(path), f"{path}: same name as {seen[base_id].name} (image ids "
                            "are file stems); rename one of them"))
                continue
            unreachable = _unreachable(path)
            if unreachable is not None:
                bad.append((base_id, str(path), unreachable))
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
    dataset, reason = _resolve_dataset(cfg.kind, folders, gt_files)
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
    cfg = DataConfig(root=image.parent, split=None, mode=mode, tile_overlap=tile_overlap, kind=dataset)
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

