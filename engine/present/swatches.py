"""A figure legend of colour swatches drawn as plain artists: a rectangle and a label per entry.

The per-image figures' legends are colour keys (cluster, class, changed token): matplotlib's
Legend lays each entry out through nested offset boxes on every draw, which cost as much as
the rest of a figure's text. Here the layout is done once, in inches, from the labels'
measured widths (handed over by engine.present.layout), and the entries fill rows left to right.
"""

from __future__ import annotations

from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox

SWATCH = (2.0, 0.7)  # swatch width and height, em (matplotlib's legend handle)
GAP = 0.8  # em between a swatch and its label
COLUMN_GAP = 2.0  # em between columns
ROW = 1.4  # em from one row to the next


class SwatchLegend:
    """entries: (label, facecolor, edgecolor, hatch) in reading order; placed by engine.present.layout.arrange."""

    def __init__(self, fig, entries: list[tuple], title: str | None, ncols: int, label_widths: list[float],
                 size: float = 8.0):
        self.fig, self.size, self.em = fig, size, size / 72.0
        self.ncols = max(1, min(ncols, len(entries)))
        self.rows = -(-len(entries) // self.ncols)
        em = self.em
        self.columns = [max(label_widths[c::self.ncols]) + (SWATCH[0] + GAP) * em for c in range(self.ncols)]
        self.width = sum(self.columns) + COLUMN_GAP * em * (self.ncols - 1)
        self.patches, self.texts = [], []
        for label, face, edge, hatch in entries:
            patch = Rectangle((0, 0), SWATCH[0] * em, SWATCH[1] * em, facecolor=face, edgecolor=edge, hatch=hatch,
                              linewidth=0.8, transform=fig.dpi_scale_trans)
            self.patches.append(patch)
            fig.add_artist(patch)
            self.texts.append(fig.text(0, 0, label, fontsize=size, va="center", ha="left", transform=fig.dpi_scale_trans))
        self.title = (fig.text(0, 0, title, fontsize=size, va="top", ha="center", transform=fig.dpi_scale_trans)
                      if title else None)

    def height(self) -> float:
        """Inches from the legend's top to its bottom."""
        return (self.rows * ROW + (ROW if self.title is not None else 0.0)) * self.em

    def place(self, top: float, figure_width: float) -> None:
        """Put the legend's top edge `top` inches above the figure's bottom, centred in its width."""
        em = self.em
        left = (figure_width - self.width) / 2
        if self.title is not None:
            self.title.set_position((figure_width / 2, top))
            top -= ROW * em
        starts = [left + sum(self.columns[:c]) + COLUMN_GAP * em * c for c in range(self.ncols)]
        for i, (patch, text) in enumerate(zip(self.patches, self.texts, strict=True)):
            row, col = divmod(i, self.ncols)
            middle = top - (row + 0.5) * ROW * em
            patch.set_xy((starts[col], middle - SWATCH[1] * em / 2))
            text.set_position((starts[col] + (SWATCH[0] + GAP) * em, middle))
        self.bottom = top - self.rows * ROW * em
        self.top_edge = top + (ROW * em if self.title is not None else 0.0)

    def get_window_extent(self, renderer=None) -> Bbox:
        """The legend's box in display pixels (after `place`)."""
        dpi = self.fig.dpi
        left = (self.fig.get_figwidth() - self.width) / 2
        return Bbox([[left * dpi, self.bottom * dpi], [(left + self.width) * dpi, self.top_edge * dpi]])

    def remove(self) -> None:
        for artist in (*self.patches, *self.texts, *([self.title] if self.title is not None else [])):
            artist.remove()


def swatch_entries(handles: list, labels: list[str]) -> list[tuple] | None:
    """(label, facecolor, edgecolor, hatch) of each handle when every handle is a plain patch; else None."""
    from matplotlib.patches import Patch

    if not all(type(h) is Patch for h in handles):
        return None
    return [(label, h.get_facecolor(), h.get_edgecolor(), h.get_hatch()) for h, label in zip(handles, labels, strict=True)]
