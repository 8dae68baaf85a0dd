"""How every figure looks and is saved: one matplotlib style, the formats, a blank Agg canvas, save.

Figures use the object-oriented matplotlib API on an Agg canvas: no pyplot, no
process-wide backend switch; the style applies inside `matplotlib.rc_context(STYLE)`.
"""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import ConfigError

FORMATS = ("png", "pdf", "svg")
STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "figure.titlesize": 10, "savefig.facecolor": "white", "figure.facecolor": "white",
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path", "axes.spines.top": False, "axes.spines.right": False,
}
DPI = 150


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The requested figure formats, lower-case and once each; ConfigError naming --formats otherwise."""
    formats = tuple(dict.fromkeys(f.lower() for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if not formats:
        raise ConfigError(f"--formats: give one or more of {', '.join(FORMATS)}, got nothing")
    if bad:
        raise ConfigError(f"--formats: {', '.join(repr(b) for b in bad)} is not a figure format; choose from {', '.join(FORMATS)}")
    return formats


def new_canvas(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """A constrained-layout Figure of width x height inches on an Agg canvas, and its axes in a flat list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, list(axes)


def save(fig, folder: Path, stem: str, formats: tuple[str, ...], dpi: int = DPI) -> list[str]:
    """Write folder/stem.<format> for each format; returns the file names. The figure is cleared."""
    files = []
    for fmt in formats:
        path = Path(folder) / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi, **({"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}))
        files.append(path.name)
    fig.clear()
    return files
