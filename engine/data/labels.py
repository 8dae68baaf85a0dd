"""Ground-truth PNGs -> UDD5 class maps (255 = ignore), and the GT grids the analysis reads.

Accepted encodings: a single-channel index PNG (mode L, or mode P whose indices are the
class ids) and a colour PNG (RGB/RGBA, or a palette PNG whose colours are the class
colours). UDD6 is mapped onto UDD5 (Facade + Roof -> building). Anything else is a
DataError naming the file and the fix.

The GT grids (288 for masks, 72 for tokens) are majority votes over the FULL-RESOLUTION
GT with exactly the rule of `kernels.grid.majority_downsample` (pixel -> cell of its
centre, 255 ignored, ties to the smallest class): `majority_grids` counts the pixels
once on the 288 grid (one torch bincount) and sums those counts onto the 72 grid. By
that rule a GT smaller than 288 pixels on a side leaves whole rows/columns of mask
cells without a pixel, hence ignored (255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.core.errors import DataError, one_line
from engine.core.geometry import MASK_GRID, TOKEN_GRID
from engine.data.classes import (
    UDD5_CLASSES,
    UDD5_COLOURS,
    UDD6_COLOURS,
    UDD6_ROOF_COLOUR,
    UDD6_ROOF_INDEX,
    UDD6_TO_UDD5,
)
from kernels.grid import IGNORE, class_counts, coarsen_counts, vote

GT_MODES = ("L", "P", "RGB", "RGBA")


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
        raise DataError(f"{path}: cannot read ground truth ({one_line(err, path)}); re-export it as a PNG") from None



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
        raise DataError(f"{path}: cannot read ground truth ({one_line(err, path)}); re-export it as a PNG") from None


def gt_markers(path: Path) -> tuple[bool, str] | None:
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

