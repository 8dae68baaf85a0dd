"""Map panels composed in numpy and shown as one image each, at the pixels they are saved at.

A panel's layers (the greyed input, cluster maps, heat maps, overlays) are kept as they
come and composed once, when the figure is laid out (engine.present.layout.arrange): at
the save resolution, over the part of the grid the panel shows (so a cropped panel is
as sharp as a full one). Consecutive layers on one grid (the 72 x 72 token maps) are
composed on that grid first ("over" is associative in premultiplied colour) and sampled
once. One image per panel instead of one per layer, each already at
its final size, is what keeps a figure's drawing cheap; the pixels are those of drawing
the layers one by one (nearest-neighbour token cells, an antialiased backdrop).
"""

from __future__ import annotations

import numpy as np

EXTENT = (0.0, 1.0, 1.0, 0.0)  # every panel in unit coordinates, origin top-left (image convention)


def panel_image(ax):
    """An AxesImage over the whole panel (unit extent, origin top-left) that skips resampling when it can."""
    from matplotlib.image import AxesImage
    from matplotlib.transforms import IdentityTransform

    class PanelImage(AxesImage):
        """Pixels composed at the size they are drawn at go to the renderer as they are (raster output at the
        resolution `Raster.render` composed for); anything else (PDF, SVG, another size) is resampled as usual."""

        def make_image(self, renderer, magnification=1.0, unsampled=False):
            data = self.get_array()
            box = self.get_window_extent(renderer)
            if (not unsampled and magnification == 1.0 and data.dtype == np.uint8 and data.shape[-1] == 4
                    and round(box.width) == data.shape[1] and round(box.height) == data.shape[0]):
                # the renderer takes the rows bottom-up, as matplotlib's own resampling hands them over
                return np.ascontiguousarray(np.asarray(data)[::-1]), round(box.xmin), round(box.ymin), IdentityTransform()
            return super().make_image(renderer, magnification, unsampled)

    image = PanelImage(ax, interpolation="nearest", origin="upper")
    image.set_data(np.full((1, 1, 4), 255, dtype=np.uint8))
    ax.add_image(image)
    image.set_extent(EXTENT)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(1.0, 0.0)
    ax.set_aspect("equal")
    return image


class Raster:
    """The layers of one map panel, composed into the panel's one AxesImage by `render`.

    A reused figure (engine.present.layout.pooled_figure) keeps its panels' images; `clear` empties the layers.
    """

    def __init__(self, ax):
        self.ax = ax
        self.layers: list[tuple] = []
        self.image = panel_image(ax)

    def clear(self) -> None:
        self.layers = []

    def backdrop(self, image: np.ndarray | None, grey: bool) -> None:
        """The model's input (S, S, 3) uint8, greyed and lightened when colours go on top; flat grey without one."""
        self.layers.append(("image", image, grey))

    def paint(self, colours: np.ndarray, alpha=1.0) -> None:
        """A layer of (h, w, 3) colours (uint8, or floats in [0, 1]) over the whole panel, opacity scalar or (h, w)."""
        colours = np.asarray(colours)
        if colours.dtype == np.uint8:
            colours = colours.astype(np.float32) / 255.0
        self.layers.append(("grid", colours.astype(np.float32, copy=False), alpha))

    def render(self, pixels: int, backdrops: dict | None = None) -> None:
        """Compose the layers over the axes' current view at `pixels` x `pixels` and show them (nothing without layers).

        backdrops: a cache of composed backdrops (the same greyed input sits under most panels of an image)."""
        self.image.set_visible(bool(self.layers))
        if not self.layers:
            return
        x0, x1 = sorted(self.ax.get_xlim())
        y0, y1 = sorted(self.ax.get_ylim())
        window = (min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0), min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0))
        out = np.ones((pixels, pixels, 3), dtype=np.float32)  # the axes' white
        group = None  # consecutive layers of one grid shape, composed there first: (premultiplied colour, opacity)
        for kind, data, option in self.layers:
            if kind == "image" or (group is not None and group[0].shape != data.shape):
                out = flush(out, group, window, pixels)
                group = None
            if kind == "image":
                out = backdrop_pixels(data, option, window, pixels, backdrops).copy()
                continue
            a = np.broadcast_to(np.asarray(option, dtype=np.float32), data.shape[:2])[..., None]
            colour, opacity = group if group is not None else (np.zeros_like(data), np.zeros_like(a))
            group = (colour * (1.0 - a) + data * a, opacity * (1.0 - a) + a)  # "over", premultiplied: associative
        out = flush(out, group, window, pixels)
        rgba = np.full((pixels, pixels, 4), 255, dtype=np.uint8)
        rgba[..., :3] = np.clip(out * 255.0 + 0.5, 0, 255)
        self.image.set_data(rgba)
        self.image.set_extent((window[0], window[1], window[3], window[2]))


def flush(out: np.ndarray, group, window, pixels: int) -> np.ndarray:
    """out with a composed group of grid layers laid over it (sampled once at the panel's pixels)."""
    if group is None:
        return out
    colour, opacity = group
    at = sample_index(colour.shape[:2], window, pixels)
    a = sample(opacity, at)
    if a.min() >= 1.0:
        return sample(colour, at)
    np.subtract(1.0, a, out=a)
    out *= a
    out += sample(colour, at)
    return out


def sample_index(shape: tuple[int, int], window: tuple[float, float, float, float], pixels: int) -> np.ndarray:
    """Flat indices into a grid of `shape` read at the centres of pixels x pixels over window (x0, x1, y0, y1)."""
    h, w = shape
    x0, x1, y0, y1 = window
    centres = (np.arange(pixels) + 0.5) / pixels
    ix = np.minimum(((x0 + centres * (x1 - x0)) * w).astype(np.int64), w - 1)
    iy = np.minimum(((y0 + centres * (y1 - y0)) * h).astype(np.int64), h - 1)
    return (iy[:, None] * w + ix[None, :]).ravel()


def sample(grid: np.ndarray, at, pixels: int | None = None) -> np.ndarray:
    """grid (h, w, ...) read at flat indices `at` (sample_index), or at window `at` and `pixels`: nearest neighbour,
    as (pixels, pixels, ...)."""
    if pixels is not None:
        at = sample_index(grid.shape[:2], at, pixels)
    side = int(round(np.sqrt(at.size)))
    flat = grid.reshape(grid.shape[0] * grid.shape[1], *grid.shape[2:])
    return np.take(flat, at, axis=0).reshape(side, side, *grid.shape[2:])


def backdrop_pixels(image: np.ndarray | None, grey: bool, window, pixels: int, cache: dict | None = None) -> np.ndarray:
    """The input over window at pixels x pixels (antialiased resize), as [0, 1] RGB; greyed: 0.35 + 0.5 luminance."""
    if image is None:
        return np.full((pixels, pixels, 3), 0.85, dtype=np.float32)
    key = (id(image), grey, window, pixels)
    if cache is not None and key in cache and cache[key][0] is image:
        return cache[key][1]
    from PIL import Image

    h, w = image.shape[:2]
    x0, x1, y0, y1 = window
    box = (x0 * w, y0 * h, x1 * w, y1 * h)
    resized = np.asarray(Image.fromarray(image).resize((pixels, pixels), Image.Resampling.HAMMING, box=box),
                         dtype=np.float32) / 255.0
    if grey:
        lum = resized @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        resized = np.repeat((0.35 + 0.5 * lum)[..., None], 3, axis=-1)
    if cache is not None:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = (image, resized)  # the image is kept with its key, so its id cannot be reused meanwhile
    return resized


def raster(ax) -> Raster:
    """The panel's Raster (made on first use; the figure's layout renders it when it is saved)."""
    grid = ax.get_figure().grid
    if ax not in grid.rasters:
        grid.rasters[ax] = Raster(ax)
    return grid.rasters[ax]
