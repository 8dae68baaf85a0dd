"""Simulated UDD5-like aerial scenes with exact ground truth (for the demo, tests, benchmarks).

SIMULATED DATA: these scenes are procedurally drawn, not photographs. They mimic the
look of UDD5 nadir drone images -- a road network of strips, building blocks with
pitched roofs and shadows, textured vegetation, vehicles on the roads, bare ground as
"other" -- so that the whole engine can run end to end without the (non-redistributable)
dataset. The GT is exact by construction.

`write_scene_set` writes the UDD5 layout: ROOT/UDD5/{split}/src/scene_NNNN.JPG and
ROOT/UDD5/{split}/gt/scene_NNNN.png (single-channel index PNG, UDD5 class ids), plus
ROOT/UDD5/README.txt saying the data are simulated. Deterministic for a seed: scene i
depends only on (seed, i), so a larger set starts with the same scenes as a smaller one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from engine.data.classes import UDD5_CLASSES

VEGETATION, BUILDING, ROAD, VEHICLE, OTHER = range(5)
assert UDD5_CLASSES[VEGETATION] == "vegetation" and UDD5_CLASSES[OTHER] == "other"

ROOF_COLOURS = np.array([(172, 84, 62), (140, 140, 146), (204, 202, 196), (92, 102, 122), (122, 74, 52), (176, 150, 110)], dtype=np.float32)
VEHICLE_COLOURS = np.array([(235, 235, 235), (25, 25, 30), (170, 30, 30), (40, 70, 160), (175, 178, 182)], dtype=np.float32)
GROUND = np.array((152, 132, 104), dtype=np.float32)
GRASS = np.array((70, 104, 44), dtype=np.float32)
ASPHALT = np.array((96, 96, 102), dtype=np.float32)

README = """SIMULATED SCENES -- not real UDD5 data.

Procedurally generated UDD5-like aerial scenes written by sam3-datr (engine/data/scenes.py):
roads, building blocks, vegetation, vehicles and bare ground ("other"), with exact
ground truth as single-channel index PNGs (0 vegetation, 1 building, 2 road,
3 vehicle, 4 other). Seed: {seed}. Images: {n} of {w}x{h}. Split: {split}.
Numbers computed on these scenes say nothing about SAM3 on real aerial images.
"""


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) float32 spatially smooth noise, ~zero mean, unit std (bicubic-upsampled grid)."""
    ch = max(2, round(cells * height / max(height, width)) + 1)
    cw = max(2, round(cells * width / max(height, width)) + 1)
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC), dtype=np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _strip_centres(rng: np.random.Generator, length: int, count: int) -> list[int]:
    """Road centre lines spread over the middle 80% of a side, at least a fifth apart."""
    centres: list[int] = []
    for _ in range(50):
        if len(centres) == count:
            break
        c = int(rng.uniform(0.1, 0.9) * length)
        if all(abs(c - o) > length // 5 for o in centres):
            centres.append(c)
    return sorted(centres)


def render_scene(size: tuple[int, int] = (640, 480), *, seed: int = 0, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ((H, W, 3) uint8 image, (H, W) uint8 UDD5 labels). size is (W, H).

    Layers are drawn in order, each over the last: ground ("other"), vegetation, roads,
    buildings, vehicles; every random draw comes from one generator seeded with (seed, index).
    """
    width, height = size
    rng = np.random.default_rng([seed, index])
    labels = np.full((height, width), OTHER, dtype=np.uint8)
    image = GROUND + 18 * smooth_noise(rng, height, width, 5)[..., None]
    _draw_vegetation(rng, image, labels)
    road, strips = _draw_roads(rng, image, labels)
    _draw_buildings(rng, image, labels, road)
    _draw_vehicles(rng, image, labels, road, strips)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    picture = Image.fromarray(image.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(picture), labels


def _draw_vegetation(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> None:
    """Patches of a smooth field, crowns as a finer field on top."""
    height, width = labels.shape
    vegetation = smooth_noise(rng, height, width, 4) > rng.uniform(0.2, 0.6)
    crowns = smooth_noise(rng, height, width, max(8, width // 12))
    labels[vegetation] = VEGETATION
    image[vegetation] = GRASS + 22 * crowns[vegetation][:, None] * np.array([0.6, 1.0, 0.5], dtype=np.float32)


def _draw_roads(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list]:
    """Horizontal and vertical strips, sometimes a diagonal one; returns the road mask and the strips
    as (axis, centre, half width), axis 0 = horizontal."""
    height, width = labels.shape
    side = min(width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    road = np.zeros((height, width), dtype=bool)
    strips = []
    for axis, length in ((0, height), (1, width)):
        for centre in _strip_centres(rng, length, int(rng.integers(1, 3))):
            half = max(3, int(rng.uniform(0.02, 0.035) * side))
            coord = yy if axis == 0 else xx
            road |= np.abs(coord - centre) <= half
            strips.append((axis, centre, half))
    if rng.random() < 0.4:
        angle = rng.uniform(0.3, 1.2)
        x0, y0 = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        road |= np.abs((xx - x0) * np.sin(angle) - (yy - y0) * np.cos(angle)) <= max(3, 0.025 * side)
    labels[road] = ROAD
    image[road] = ASPHALT + rng.normal(0, 5, (int(road.sum()), 3)).astype(np.float32)
    for axis, centre, _ in strips:  # dashed centre line (still road)
        coord, along = (yy, xx) if axis == 0 else (xx, yy)
        dash = (np.abs(coord - centre) <= 0) & ((along // 10) % 2 == 0) & road
        image[dash] = (210, 210, 200)
    return road, strips


def _draw_buildings(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, road: np.ndarray) -> None:
    """Rectangles kept off the roads and off each other, pitched roofs and shadows."""
    height, width = labels.shape
    side = min(width, height)
    margin = max(2, side // 60)
    occupied = road.copy()
    target = int(rng.integers(6, 14))
    placed = 0
    shadow = max(2, side // 70)
    for _ in range(80):
        if placed == target:
            break
        bh, bw = (int(rng.uniform(0.07, 0.2) * side) for _ in range(2))
        top, left = int(rng.integers(0, max(1, height - bh))), int(rng.integers(0, max(1, width - bw)))
        y0, y1, x0, x1 = max(0, top - margin), min(height, top + bh + margin), max(0, left - margin), min(width, left + bw + margin)
        if occupied[y0:y1, x0:x1].any():
            continue
        occupied[y0:y1, x0:x1] = True
        placed += 1
        # shadow to the lower right, on whatever is there (labels unchanged)
        sy, sx = slice(top + shadow, min(height, top + bh + shadow)), slice(left + shadow, min(width, left + bw + shadow))
        image[sy, sx] *= 0.55
        roof = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))]
        block = np.broadcast_to(roof, (bh, bw, 3)).copy()
        if bh >= bw:  # ridge along the longer side: one half lit, one shaded
            block[:, bw // 2 :] *= 0.82
        else:
            block[bh // 2 :, :] *= 0.82
        block[:2], block[-2:], block[:, :2], block[:, -2:] = (c * 0.7 for c in (block[:2], block[-2:], block[:, :2], block[:, -2:]))
        image[top : top + bh, left : left + bw] = block + rng.normal(0, 4, block.shape)
        labels[top : top + bh, left : left + bw] = BUILDING


def _draw_vehicles(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, road: np.ndarray, strips: list) -> None:
    """Small rectangles on the straight strips, in a lane, not touching each other."""
    height, width = labels.shape
    side = min(width, height)
    vehicles = np.zeros((height, width), dtype=bool)
    length, breadth = max(4, int(0.035 * side)), max(2, int(0.017 * side))
    for axis, centre, half in strips:
        along_len = width if axis == 0 else height
        for _ in range(int(rng.integers(2, 8))):
            lane = centre + int(rng.choice([-1, 1]) * max(1, half // 2)) - breadth // 2
            start = int(rng.integers(0, max(1, along_len - length)))
            if axis == 0:
                ys, xs = slice(lane, lane + breadth), slice(start, start + length)
            else:
                ys, xs = slice(start, start + length), slice(lane, lane + breadth)
            if not road[ys, xs].all() or vehicles[max(0, ys.start - 2) : ys.stop + 2, max(0, xs.start - 2) : xs.stop + 2].any():
                continue
            vehicles[ys, xs] = True
            image[ys, xs] = VEHICLE_COLOURS[rng.integers(len(VEHICLE_COLOURS))]
            labels[ys, xs] = VEHICLE


def write_scene_set(root: Path, n_images: int, *, size: tuple[int, int] = (640, 480), seed: int = 0, split: str = "val") -> Path:
    """Write n_images simulated scenes in the UDD5 layout under root/UDD5; returns root/UDD5."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    dataset = Path(root) / "UDD5"
    src, gt = dataset / split / "src", dataset / split / "gt"
    src.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image, labels = render_scene(size, seed=seed, index=i)
        Image.fromarray(image).save(src / f"scene_{i:04d}.JPG", quality=92)
        Image.fromarray(labels).save(gt / f"scene_{i:04d}.png")
    (dataset / "README.txt").write_text(README.format(seed=seed, n=n_images, w=size[0], h=size[1], split=split))
    return dataset
