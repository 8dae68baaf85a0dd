"""Batches of model inputs from a DatasetIndex: decode, crop or squash, GT grids, in plan order.

`Loader` runs a torch DataLoader over planned batches of index positions (the same items
always share a batch, whatever the workers do). Each item becomes a (3, 1008, 1008)
uint8 image -- the whole image squashed exactly as SAM3's processor does
(`engine.data.preprocess.squash_image`), or a tile padded to 1008 at the bottom/right
with black pixels and ignored (255) ground truth -- plus the 288 and 72 GT grids. In
tile mode a worker decodes each image once for all its tiles in a batch.

Decoding: `decode="cpu"` decodes with PIL in the DataLoader workers; `decode="cuda"`
reads the JPEG bytes in the workers and decodes them on the GPU with
`torchvision.io.decode_jpeg` (non-JPEG files are still decoded by PIL in the workers);
`decode="auto"` uses cuda when the target device is CUDA and a probe decode on it works,
else cpu, and records the choice and the reason (`Loader.decode_used`, `describe()`).
Asking for cuda where it cannot work is a BackendError.

Problems found while loading (truncated image, bad GT values) are in
`LoadedBatch.errors` as (image_id, path, one-line message), never raised.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.core.config import DataConfig
from engine.core.errors import BackendError, ConfigError, DataError, one_line
from engine.core.geometry import MASK_GRID, MODEL_SIDE, TOKEN_GRID
from engine.core.processes import die_with_parent
from engine.data.classes import UDD5_CLASSES
from engine.data.index import TILE_SIDE, DatasetIndex, Item, image_size
from engine.data.labels import SCHEMES, LabelScheme, majority_grids, read_gt
from engine.data.preprocess import squash_image
from kernels.grid import IGNORE

JPEG_SUFFIXES = (".jpg", ".jpeg")


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
    """(3, H, W) uint8 via PIL; DataError for unreadable or truncated files.

    16-bit grey PNGs (mode I;16*) are rescaled to 8 bits (value / 257, rounded; PIL's
    RGB conversion would clip them to white); 32-bit integer and float images have no
    fixed range and are refused. 16-bit RGB PNGs PIL itself reads as 8-bit RGB.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16"):
                grey = np.asarray(img).astype(np.float64) / 257.0
                rgb = np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)
            elif img.mode in ("I", "F"):
                kind = "32-bit integer" if img.mode == "I" else "floating-point"
                raise DataError(f"{path}: a {kind} image (PIL mode {img.mode}) has no fixed 0-255 range; convert it to "
                                "8-bit RGB (or 16-bit PNG) first")
            else:
                rgb = np.array(img.convert("RGB"))  # a writable copy torch can own
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({one_line(err, path)}); re-copy or remove it") from None
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


def _worker_init(_: int, parent: int) -> None:
    torch.set_num_threads(1)  # workers decode in parallel; intra-op threads would oversubscribe
    die_with_parent(parent)  # killed with the run, even by kill -9 (torch's own check takes a while, and not mid-batch)


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
        return False, f"torchvision.io.decode_jpeg unavailable ({one_line(err)})"
    try:
        data = torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8)
        out = decode_jpeg([data], device=device)
        if tuple(out[0].shape) != (3, 16, 16):
            return False, f"GPU decode gave shape {tuple(out[0].shape)}"
    except Exception as err:  # noqa: BLE001
        return False, f"GPU JPEG decode failed ({one_line(err)})"
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
            worker_init_fn=functools.partial(_worker_init, parent=os.getpid()) if self.num_workers > 0 else None,
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
                    batch.errors.append((e.image_id, e.path, f"{e.path}: cannot decode JPEG on the GPU ({one_line(err)}); re-copy or remove it"))
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


