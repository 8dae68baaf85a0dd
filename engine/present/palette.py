"""Display colours shared by every figure and the report (no analysis here): one meaning per colour.

Every colour comes from Paul Tol's colour-blind-safe schemes (bright and muted), and each
is used for one thing only:

    classes         vegetation green, building blue, road purple, vehicle yellow, other grey
                    (Tol bright; the UDD5 release's own display colours are not colour-blind
                    safe: olive / slate / purple and navy / black collapse for deuteranopes)
    clusters        the colour of the GT class they are matched to (display only: a Hungarian
                    on the cluster x class overlap of the encoder labels), so a cluster that
                    covers the road is drawn road-purple in every figure of an image;
                    unmatched clusters (and all of them without GT) take the Tol muted colours
    scopes          encoder black, global cyan (report plots); a prompt's scope takes its class colour
    changed token   Tol red; an unchanged effective token is white; outside the effective region: darkened
    decoder/encoder magenta (decoder) and green (encoder) in the composite, white where both
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from engine.core.choices import GLOBAL
from engine.data.classes import UDD5_CLASSES
from kernels.grid import IGNORE

# Tol bright, one per UDD5 class (vegetation, building, road, vehicle, other)
CLASS_COLOURS = ((34, 136, 51), (68, 119, 170), (170, 51, 119), (204, 187, 68), (187, 187, 187))
# Tol muted, for clusters matched to no class (and extra classes); the muted colours close to a class, scope or
# the changed-token red (rose, purple, green, cyan, pale grey) are left out, so every colour keeps one meaning
EXTRA_COLOURS = ((51, 34, 136), (153, 153, 51), (136, 34, 85), (68, 170, 153), (221, 204, 119), (102, 17, 0))
SCOPE_COLOURS = {"encoder": (0, 0, 0), "global": (102, 204, 238)}
IGNORE_COLOUR = (255, 255, 255)  # GT cells with no valid pixel (255)
FLIP_COLOUR = (238, 102, 119)  # changed tokens (Tol bright red)
SAME_COLOUR = (255, 255, 255)  # unchanged effective tokens
OUTSIDE_COLOUR = (96, 96, 96)  # the legend swatch of "outside the effective region" (those tokens darkened by half)
DECODER_COLOUR = (255, 0, 255)  # composite: decoder activation (magenta = red + blue channels)
ENCODER_COLOUR = (0, 255, 0)  # composite: encoder similarity (green channel); both at once read white


def class_name(class_id: int | None) -> str:
    if class_id is None:
        return GLOBAL
    return UDD5_CLASSES[class_id] if 0 <= class_id < len(UDD5_CLASSES) else f"class {class_id}"


def class_colour(class_id: int) -> tuple[int, int, int]:
    if 0 <= class_id < len(CLASS_COLOURS):
        return CLASS_COLOURS[class_id]
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
    """(H, W) class ids (ignore -> white) -> (H, W, 3) uint8 in the class display colours."""
    gt = np.asarray(gt, dtype=np.int64)
    top = max(int(gt[gt != ignore].max()) + 1 if (gt != ignore).any() else 0, len(CLASS_COLOURS))
    table = np.array([class_colour(c) for c in range(top)] + [IGNORE_COLOUR], dtype=np.uint8)
    return table[np.where(gt == ignore, top, gt)]
