"""How every figure looks and is saved: one matplotlib style, the formats, a blank Agg canvas, save.

Figures use the object-oriented matplotlib API on an Agg canvas: no pyplot, no
process-wide backend switch; the style applies inside `matplotlib.rc_context(STYLE)`.
Every figure is laid out once, when it is saved (engine.present.layout), and drawn once.
"""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import ConfigError

FORMATS = ("png", "pdf", "svg")
STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "figure.titlesize": 10, "savefig.facecolor": "white", "figure.facecolor": "white",
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path", "axes.spines.top": False, "axes.spines.right": False,
    "text.hinting": "no_hinting",
    "patch.facecolor": "#4477AA",  # not "C0": every legend patch starts from it, and "C0" is looked up in the cycler  # FreeType renders every glyph of every text on every draw: unhinted is a third faster
}
DPI = 150
PNG_LEVEL = 3  # zlib level of the PNGs (6 costs twice as long for files a few percent smaller)


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The requested figure formats, lower-case and once each; ConfigError naming --formats otherwise."""
    formats = tuple(dict.fromkeys(f.lower() for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if not formats:
        raise ConfigError(f"--formats: give one or more of {', '.join(FORMATS)}, got nothing")
    if bad:
        raise ConfigError(f"--formats: {', '.join(repr(b) for b in bad)} is not a figure format; choose from {', '.join(FORMATS)}")
    return formats


def new_canvas(box_width: float, box_height: float, ncols: int = 1, nrows: int = 1, width: float | None = None):
    """A plot figure (engine.present.layout, laid out once when saved) of ncols x nrows axes, and its axes in a flat list.

    box_width, box_height: inches of each axes' plotting area (its tick labels and title come on top);
    width: the whole figure's width (default: what the boxes and their labels need).
    """
    from engine.present.layout import grid_figure

    fig = grid_figure(ncols, nrows, (box_width, box_height), flex=True, width=width, dpi=DPI)
    return fig, list(fig.grid.axes)


def save(fig, folder: Path, stem: str, formats: tuple[str, ...], dpi: int = DPI) -> list[str]:
    """Lay the figure out (once) and write folder/stem.<format> for each format; returns the file names.

    The figure goes back to its pool (engine.present.layout.pooled_figure), if it came from one."""
    from engine.present.layout import arrange, release

    arrange(fig, dpi)
    files = []
    for fmt in formats:
        path = Path(folder) / f"{stem}.{fmt}"
        if fmt == "png":
            path.write_bytes(png_bytes(render_rgb(fig, dpi), dpi))
        else:
            fig.savefig(path, format=fmt, dpi=dpi)
        files.append(path.name)
    release(fig)
    return files


def render_rgb(fig, dpi: float):
    """The figure drawn once on its Agg canvas at `dpi`: an (H, W, 3) uint8 view of the canvas (opaque white
    beneath), valid until the canvas draws again."""
    import numpy as np

    original = fig.dpi
    fig.dpi = dpi
    try:
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3]
    finally:
        fig.dpi = original


def png_bytes(rgb, dpi: float) -> bytes:
    """A PNG of (H, W, 3) uint8 pixels: every row "Up"-filtered (the row above subtracted) and deflated.

    What matplotlib's savefig writes through Pillow, whose adaptive per-row filter choice took more
    time than drawing the figure; the files are the same size within a few percent.
    """
    import struct
    import zlib

    import numpy as np

    h, w, _ = rgb.shape
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[0, 0] = 0  # the first row has no row above: unfiltered
    pixels = filtered[:, 1:].reshape(h, w, 3)  # written in place from the (possibly strided) pixels: no copy
    for c in range(3):  # one channel at a time: numpy loops along whole rows, not over 3-byte pixels
        pixels[0, :, c] = rgb[0, :, c]
        np.subtract(rgb[1:, :, c], rgb[:-1, :, c], out=pixels[1:, :, c])  # modulo 256, as PNG defines it

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    per_metre = round(dpi / 0.0254)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))
            + chunk(b"IDAT", zlib.compress(filtered.tobytes(), PNG_LEVEL)) + chunk(b"IEND", b""))
