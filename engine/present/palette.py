"""Display colours shared by every figure and the report (no analysis here).

Classes use the UDD5 display colours. Clusters take the colour of the GT class they are
matched to (display only: a Hungarian on the cluster x class overlap of the encoder
labels), so a cluster that covers the road is drawn road-purple in every figure of an
image; unmatched clusters, and every cluster when there is no GT, use the Okabe-Ito
qualitative colours, which none of the class colours resemble.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from engine.data.classes import UDD5_CLASSES, UDD5_COLOURS
from kernels.grid import IGNORE

# Okabe-Ito (colour-blind safe), then a few extras for large k.
EXTRA_COLOURS = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (213, 94, 0), (204, 121, 167),
    (0, 114, 178), (153, 153, 153), (255, 127, 127), (127, 255, 212), (188, 143, 143), (218, 165, 32),
)
SCOPE_COLOURS = {"encoder": (110, 110, 110), "global": (230, 159, 0)}
IGNORE_COLOUR = (255, 255, 255)  # GT cells with no valid pixel (255)
FLIP_COLOUR = (220, 20, 60)  # changed tokens in agreement maps
SAME_COLOUR = (46, 139, 87)  # unchanged effective tokens in agreement maps


def class_name(class_id: int | None) -> str:
    if class_id is None:
        return "global"
    return UDD5_CLASSES[class_id] if 0 <= class_id < len(UDD5_CLASSES) else f"class {class_id}"


def class_colour(class_id: int) -> tuple[int, int, int]:
    if 0 <= class_id < len(UDD5_COLOURS):
        return UDD5_COLOURS[class_id]
    return EXTRA_COLOURS[class_id % len(EXTRA_COLOURS)]


def scope_colour(scope: str, class_id: int | None) -> tuple[int, int, int]:
    """Colour of a scope in dataset plots: its class colour, or a fixed one for encoder/global."""
    if class_id is not None and scope not in SCOPE_COLOURS:
        return class_colour(int(class_id))
    return SCOPE_COLOURS.get(scope, EXTRA_COLOURS[zlib.crc32(scope.encode()) % len(EXTRA_COLOURS)])


def to_unit(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)


@dataclass
class ClusterPalette:
    """Colour and legend name of each cluster id 0..k-1 of one image."""

    colours: np.ndarray  # (k, 3) uint8
    names: list[str]  # legend entries, e.g. "cluster 2 ≈ road"
    matched_class: list[int | None]

    def rgb(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) cluster ids -> (H, W, 3) uint8."""
        return self.colours[np.asarray(labels, dtype=np.int64)]


def cluster_palette(encoder_labels: np.ndarray, k: int, gt: np.ndarray | None = None, ignore: int = IGNORE) -> ClusterPalette:
    """Colours for k clusters; with GT, each cluster matched (one-to-one) to the class it overlaps most.

    encoder_labels, gt: (H, W) on the same grid. The matching maximises total overlap over
    valid GT cells; a cluster matched to a class it does not overlap at all stays unmatched.
    """
    matched: list[int | None] = [None] * k
    if gt is not None:
        from scipy.optimize import linear_sum_assignment

        lab = np.asarray(encoder_labels, dtype=np.int64).ravel()
        cls = np.asarray(gt, dtype=np.int64).ravel()
        valid = cls != ignore
        n_cls = max(len(UDD5_CLASSES), int(cls[valid].max()) + 1 if valid.any() else 0)
        overlap = np.zeros((k, n_cls), dtype=np.int64)
        np.add.at(overlap, (lab[valid], cls[valid]), 1)
        rows, cols = linear_sum_assignment(-overlap)
        for r, c in zip(rows, cols, strict=True):
            if overlap[r, c] > 0:
                matched[r] = int(c)
    colours, names = [], []
    spare = iter(EXTRA_COLOURS * (k // len(EXTRA_COLOURS) + 1))
    for cid in range(k):
        if matched[cid] is not None:
            colours.append(class_colour(matched[cid]))
            names.append(f"cluster {cid} ≈ {class_name(matched[cid])}")
        else:
            colours.append(next(spare))
            names.append(f"cluster {cid}")
    return ClusterPalette(np.array(colours, dtype=np.uint8), names, matched)


def class_rgb(gt: np.ndarray, ignore: int = IGNORE) -> np.ndarray:
    """(H, W) class ids (ignore -> white) -> (H, W, 3) uint8 in the UDD5 display colours."""
    gt = np.asarray(gt, dtype=np.int64)
    top = max(int(gt[gt != ignore].max()) + 1 if (gt != ignore).any() else 0, len(UDD5_COLOURS))
    table = np.array([class_colour(c) for c in range(top)] + [IGNORE_COLOUR], dtype=np.uint8)
    return table[np.where(gt == ignore, top, gt)]
