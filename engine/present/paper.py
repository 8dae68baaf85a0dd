"""The paper's own single-image numbers (seed/sam3-clustering-paper.txt), shown beside a run's.

The paper reports one UDD5 image at its own settings and does not define these measures;
the engine's definitions are DESIGN.md's, so the column is a point of reference, not a target.
"""

from __future__ import annotations

from typing import NamedTuple

from engine.core.choices import GLOBAL

PAPER_NOTE = ("paper (one image, one seed): the paper's single-image numbers, one KMeans seed's; it does not define "
              "these measures, the engine's definitions are DESIGN.md's")
TOTAL_TOKENS = 5184  # the 72 x 72 grid


class PaperScope(NamedTuple):
    masks: int | None  # kept decoder queries; None where the paper gives no count
    effective_tokens: int
    flip_ratio: float  # a fraction (the paper prints a percentage)
    cos_distance: float


# Scope name (as in the rows' `scope` column) -> the paper's numbers for that scope.
PAPER_NUMBERS: dict[str, PaperScope] = {
    GLOBAL: PaperScope(None, 4099, 0.474, 0.8359),
    "vegetation": PaperScope(17, 729, 0.342, 0.7040),
    "building": PaperScope(9, 2500, 0.496, 0.7987),
    "road": PaperScope(2, 812, 0.155, 0.7346),
    "vehicle": PaperScope(30, 139, 0.619, 0.6378),
}


def paper_scope(scope: str) -> PaperScope | None:
    """The paper's numbers for a scope name, or None for a scope the paper does not report (e.g. `other`)."""
    return PAPER_NUMBERS.get(scope)
