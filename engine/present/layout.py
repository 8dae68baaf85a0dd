"""Figures laid out once, in inches, just before they are saved: no layout engine.

matplotlib's constrained layout draws a figure twice (once to measure, once to render) and
measures every Axes on each pass. Here a figure is a grid of cells, measured once by
`arrange` (called by engine.present.style.save) and then drawn once:

    | left | axes box | side | right |   per column; the rows stacked from the top

- the figure's width is fixed when it is made, so titles and legends are wrapped or
  fitted to it at once (`wrap`, `fit_legend`); its height follows from what it holds;
- above each axes its title block, below it its tick labels and x label, both measured;
  to its right, optionally, a side axes (a colour bar or a colour key) in a side column;
- the suptitle on top, the figure legends at the bottom, stacked, all measured.

Map panels keep their boxes (square images fill them); plots (`flex=True`) give their
boxes whatever width the measured tick labels leave.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from matplotlib.figure import Figure

PAD = 0.08  # inches at the figure's edges
GAP = 0.14  # inches between rows, columns and the blocks above and below them
TITLE_PAD = 4.0  # points between an axes and its title
# side columns: (gap before the side axes, its width, room for its tick labels and label), inches
SIDES = {"colorbar": (0.08, 0.12, 0.62), "key": (0.42, 0.8, 0.08)}
FLEX_GUESS = (0.7, 0.55)  # first guess of a plot's left and bottom margins, before they are measured


@dataclass
class Grid:
    """The cells of a figure: ncols x nrows axes boxes of box (width, height) inches, and their side axes."""

    ncols: int
    nrows: int
    box: tuple[float, float]
    width: float  # the figure's width, inches
    flex: bool = False
    sides: dict[int, str] = field(default_factory=dict)  # cell index -> side kind (SIDES)
    axes: list = field(default_factory=list)
    side_axes: dict[int, object] = field(default_factory=dict)
    suptitle: object = None
    rasters: dict = field(default_factory=dict)  # axes -> its map panel's layers (engine.present.figures.raster)
    titles: dict = field(default_factory=dict)  # axes -> its title (a Text), set by `set_title`
    colorbars: dict = field(default_factory=dict)  # side axes -> what its colour bar shows (kept while it is the same)
    legends: dict = field(default_factory=dict)  # what a figure legend shows -> the legend
    stale_legends: dict = field(default_factory=dict)  # a reused figure's legends until the new figure asks for them
    pool: dict | None = field(default=None, repr=False)  # where `save` hands the figure back for reuse, under `key` (and composed backdrops)
    key: tuple = ()

    def side_width(self, col: int) -> float:
        kinds = [self.sides[i] for i in self.sides if i % self.ncols == col]
        return max((sum(SIDES[k]) for k in kinds), default=0.0)

    def column_width(self, col: int) -> float:
        return self.box[0] + self.side_width(col)


class LaidOutFigure(Figure):
    """A Figure that carries its Grid; `arrange` places everything once, before saving."""

    def __init__(self, grid: Grid, height: float, dpi: float):
        super().__init__(figsize=(grid.width, height), dpi=dpi)
        self.grid = grid


def grid_figure(ncols: int, nrows: int, box: tuple[float, float], *, flex: bool = False, width: float | None = None,
                sides: dict[int, str] | None = None, dpi: float = 150) -> LaidOutFigure:
    """A figure of ncols x nrows cells on an Agg canvas. width: the figure's (default: the cells' own); dpi: the
    resolution it will be saved at (text measured when it is laid out is then measured once: matplotlib caches text
    metrics per renderer, and a reused figure of the same size keeps its renderer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    grid = Grid(ncols, nrows, box, 0.0, flex, dict(sides or {}))
    natural = 2 * PAD + sum(grid.column_width(c) for c in range(ncols)) + GAP * (ncols - 1)
    if flex:
        natural += ncols * FLEX_GUESS[0]
    grid.width = max(width or 0.0, natural)
    fig = LaidOutFigure(grid, nrows * (box[1] + 0.8) + 0.6, dpi)
    FigureCanvasAgg(fig)
    for i in range(ncols * nrows):
        grid.axes.append(fig.add_axes((0, 0, 0.1, 0.1)))
        if i in grid.sides:
            grid.side_axes[i] = fig.add_axes((0, 0, 0.01, 0.01))
    place(fig, above=[0.5] * nrows, below=[FLEX_GUESS[1] if flex else 0.0] * nrows,
          lefts=[FLEX_GUESS[0] if flex else 0.0] * ncols, rights=[0.0] * ncols, top=0.4, bottom=0.4)
    return fig


def pooled_figure(pool: dict | None, ncols: int, nrows: int, box: tuple[float, float],
                  sides: dict[int, str] | None = None, dpi: float = 150) -> LaidOutFigure:
    """A figure of this layout from the pool, emptied (its Axes, side axes and colour bars kept), or a new one.

    Making a figure's Axes costs about as much as drawing them; map figures of the same layout come in
    runs (every class has the same four figures), so a saved figure is emptied and used again.
    """
    key = (ncols, nrows, tuple(box), tuple(sorted((sides or {}).items())), dpi)
    fig = pool.pop(key, None) if pool is not None else None
    if fig is None:
        fig = grid_figure(ncols, nrows, box, sides=sides, dpi=dpi)
        fig.grid.pool, fig.grid.key = pool, key
        return fig
    grid = fig.grid
    panels = {panel.image for panel in grid.rasters.values()}
    for panel in grid.rasters.values():
        panel.clear()
    for ax in grid.axes:
        for artist in (*ax.images, *ax.collections, *ax.texts, *ax.lines, *ax.patches):
            if artist not in panels:
                artist.remove()
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(1.0, 0.0)
    for title in grid.titles.values():
        title.set_text("")
    grid.stale_legends, grid.legends = grid.legends, {}  # kept where the next figure shows the same (fit_legend)
    if grid.suptitle is not None:
        grid.suptitle.set_text("")
    grid.suptitle, grid.titles = None, {}
    return fig


def release(fig: Figure) -> None:
    """Hand a saved figure back to its pool (figures made outside a pool are left to the garbage collector)."""
    grid = getattr(fig, "grid", None)
    if grid is not None and grid.pool is not None:
        grid.pool[grid.key] = fig


@functools.lru_cache(maxsize=8192)
def text_width(text: str, size: float) -> float:
    """Width of one line of text in inches at `size` points in the default font (a pure function: cached)."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    width, _, _ = RendererAgg(8, 8, 72).get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width / 72.0


def wrap(text: str, width: float, size: float) -> str:
    """text with each line broken between words so that no line is wider than `width` inches."""
    out = []
    space = text_width("a a", size) - 2 * text_width("a", size)
    for paragraph in text.split("\n"):
        if text_width(paragraph, size) <= width:
            out.append(paragraph)
            continue
        line, used = "", 0.0
        for word in paragraph.split(" "):
            need = text_width(word, size)
            if line and used + space + need > 0.97 * width:  # 3% for kerning across the words
                out.append(line)
                line, used = word, need
            else:
                line, used = (f"{line} {word}", used + space + need) if line else (word, need)
        out.append(line)
    return "\n".join(out)


def set_title(ax, text: str, size: float, loc: str = "left") -> None:
    """The axes' title wrapped to its cell's width, at a fixed distance above the axes (never moved at draw time)."""
    fig = ax.get_figure()
    grid = fig.grid
    col = grid.axes.index(ax) % grid.ncols if ax in grid.axes else 0
    width = grid.column_width(col) if not grid.flex else grid.box[0] + FLEX_GUESS[0]
    grid.titles[ax] = ax.set_title(wrap(text, width, size), loc=loc, y=1.0, pad=TITLE_PAD, va="bottom", fontsize=size)


def set_suptitle(fig: LaidOutFigure, text: str, size: float = 10.0) -> None:
    """The figure's title, wrapped to its width; placed by `arrange`."""
    fig.grid.suptitle = fig.suptitle(wrap(text, fig.grid.width - 2 * PAD, size), fontsize=size, va="top")


def fit_legend(fig: LaidOutFigure, handles: list, title: str | None = None, max_cols: int = 6, labels=None,
               swatches: bool = False, **kwargs):
    """A figure legend below the cells with as many columns as fit the figure's width; placed by `arrange`.

    The columns are chosen from the labels' measured widths, so the legend is made once. swatches: plain
    colour patches are drawn as an engine.present.swatches.SwatchLegend (rows filled left to right)."""
    if not handles:
        return None
    import matplotlib

    from engine.present.swatches import SwatchLegend, swatch_entries

    labels = list(labels) if labels is not None else [h.get_label() for h in handles]
    key = (tuple(labels), tuple(legend_look(h) for h in handles), title, max_cols, swatches, tuple(sorted(kwargs.items())))
    grid = fig.grid
    if key in grid.stale_legends:  # a reused figure whose legend shows the same: kept as it is
        grid.legends[key] = grid.stale_legends.pop(key)
        return grid.legends[key]
    size = matplotlib.rcParams["legend.fontsize"]
    size = size if isinstance(size, (int, float)) else 8.0
    limit = grid.width - 2 * PAD
    entries = swatch_entries(handles, labels) if swatches and not kwargs else None
    width = swatch_width if entries is not None else legend_width
    ncols = next((n for n in range(min(len(handles), max_cols), 1, -1) if width(labels, n, size) <= limit), 1)
    if entries is not None:
        grid.legends[key] = SwatchLegend(fig, entries, title, ncols, [text_width(label, size) for label in labels], size)
    else:
        grid.legends[key] = fig.legend(handles=handles, labels=labels, loc="upper center", ncols=ncols, frameon=False,
                                       title=title, title_fontsize=8, **kwargs)
    return grid.legends[key]


def swatch_width(labels: list[str], ncols: int, size: float) -> float:
    """Inches a SwatchLegend of these labels takes in ncols columns (rows filled left to right)."""
    from engine.present.swatches import COLUMN_GAP, SWATCH
    from engine.present.swatches import GAP as SWATCH_GAP

    em = size / 72.0
    columns = [max(text_width(label, size) for label in labels[c::ncols]) + (SWATCH[0] + SWATCH_GAP) * em
               for c in range(min(ncols, len(labels)))]
    return sum(columns) + COLUMN_GAP * em * (len(columns) - 1)


def legend_look(handle) -> tuple:
    """What a legend entry looks like (its colours, line and hatch), to tell two legends apart."""
    look = []
    for name in ("get_facecolor", "get_edgecolor", "get_color", "get_linestyle", "get_marker", "get_hatch"):
        getter = getattr(handle, name, None)
        if getter is not None:
            look.append(repr(getter()))  # colours come as tuples or arrays: their text is hashable and exact enough
    return tuple(look)


def legend_width(labels: list[str], ncols: int, size: float) -> float:
    """Inches a frameless legend of these labels takes in ncols columns (split into columns as matplotlib splits
    them): per column its widest entry (handle 2 em, gap 0.8 em, label), 2 em between columns, 0.4 em at each side."""
    em = size / 72.0
    rows, large = divmod(len(labels), ncols)  # matplotlib's split: the first `large` columns hold one more entry
    sizes = [rows + 1] * large + [rows] * (ncols - large)
    starts = [sum(sizes[:c]) for c in range(ncols)]
    columns = [labels[start:start + size] for start, size in zip(starts, sizes, strict=True)]
    widest = [max(text_width(label, size) for label in column) + 2.8 * em for column in columns if column]
    return 1.03 * (sum(widest) + 2.0 * em * (len(widest) - 1) + 0.8 * em)


def arrange(fig: Figure, dpi: float) -> None:
    """Measure the titles, tick labels, side axes, suptitle and legends once, size the figure and place them;
    compose the map panels at `dpi`, the resolution they are saved at."""
    if not isinstance(fig, LaidOutFigure):
        return
    grid = fig.grid
    for legend in grid.stale_legends.values():  # the reused figure's legends this figure did not ask for
        legend.remove()
    grid.stale_legends = {}
    backdrops = grid.pool.setdefault("backdrops", {}) if grid.pool is not None else None
    for panel in grid.rasters.values():
        panel.render(max(1, round(grid.box[0] * dpi)), backdrops)
    renderer = fig.canvas.get_renderer()
    above, below = [0.0] * grid.nrows, [0.0] * grid.nrows
    lefts, rights = [0.0] * grid.ncols, [0.0] * grid.ncols
    for i, ax in enumerate(grid.axes):
        if not ax.get_visible():
            continue
        row, col = divmod(i, grid.ncols)
        box = ax.get_window_extent(renderer)
        if not grid.flex:  # map panels: only a title above; side axes sit within the box's height
            if ax in grid.titles:
                above[row] = max(above[row], (grid.titles[ax].get_window_extent(renderer).y1 - box.y1) / fig.dpi)
            continue
        tight = ax.get_tightbbox(renderer) or box
        above[row] = max(above[row], (tight.y1 - box.y1) / fig.dpi)
        below[row] = max(below[row], (box.y0 - tight.y0) / fig.dpi)
        lefts[col] = max(lefts[col], (box.x0 - tight.x0) / fig.dpi)
        rights[col] = max(rights[col], (tight.x1 - box.x1) / fig.dpi)
    top = 0.0
    if grid.suptitle is not None:
        top = grid.suptitle.get_window_extent(renderer).height / fig.dpi + GAP
    bottom = sum(legend_height(leg, renderer, fig.dpi) + GAP / 2 for leg in grid.legends.values())
    place(fig, above, below, lefts, rights, top, bottom)


def place(fig: LaidOutFigure, above, below, lefts, rights, top: float, bottom: float) -> None:
    """Size the figure to its content and set every axes, side axes, the suptitle and the legends in place."""
    grid = fig.grid
    box_w, box_h = grid.box
    if grid.flex:
        free = grid.width - 2 * PAD - GAP * (grid.ncols - 1) - sum(lefts) - sum(rights)
        box_w = max(0.5, free / grid.ncols)
    height = PAD + top + sum(above) + grid.nrows * box_h + sum(below) + GAP * (grid.nrows - 1) + bottom + PAD
    if not grid.flex:  # fixed boxes: centre the columns in the figure's width
        used = sum(grid.column_width(c) for c in range(grid.ncols)) + GAP * (grid.ncols - 1)
        lefts = [(grid.width - used) / 2 - PAD if c == 0 else 0.0 for c in range(grid.ncols)]
    fig.set_size_inches(grid.width, height, forward=False)
    xs, x = [], PAD
    for c in range(grid.ncols):
        xs.append(x + lefts[c])
        x += lefts[c] + (box_w if grid.flex else grid.column_width(c)) + rights[c] + GAP
    y = height - PAD - top
    for row in range(grid.nrows):
        y -= above[row] + box_h
        for col in range(grid.ncols):
            i = row * grid.ncols + col
            if i >= len(grid.axes):
                continue
            grid.axes[i].set_position((xs[col] / grid.width, y / height, box_w / grid.width, box_h / height))
            if i in grid.side_axes:
                place_side(fig, grid.side_axes[i], grid.sides[i], xs[col] + box_w, y, box_h, height)
        y -= below[row] + GAP
    if grid.suptitle is not None:
        grid.suptitle.set_y((height - PAD) / height)
    y += GAP / 2
    for legend in grid.legends.values():
        if hasattr(legend, "place"):  # a SwatchLegend, laid out in inches
            legend.place(y, grid.width)
        else:
            legend.set_bbox_to_anchor((0.5, y / height), transform=fig.transFigure)
        y -= legend_height(legend, fig.canvas.get_renderer(), fig.dpi) + GAP / 2


def legend_height(legend, renderer, dpi: float) -> float:
    """Inches a figure legend takes from top to bottom (a SwatchLegend knows; a matplotlib Legend is measured)."""
    if hasattr(legend, "height"):
        return legend.height()
    return legend.get_window_extent(renderer).height / dpi


def place_side(fig: LaidOutFigure, cax, kind: str, x: float, y: float, box_h: float, height: float) -> None:
    """A colour bar (85% of the box's height) or a square colour key, centred beside the box."""
    gap, width, _ = SIDES[kind]
    side_h = 0.85 * box_h if kind == "colorbar" else min(width, box_h)
    bottom = y + (box_h - side_h) / 2
    cax.set_position(((x + gap) / fig.grid.width, bottom / height, width / fig.grid.width, side_h / height))
