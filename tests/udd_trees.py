"""Small UDD5 / UDD6 / plain-image trees written on the fly (in tmp_path) for the tests.

Every writer returns the labels it wrote so tests can check pixels exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.classes import UDD5_COLOURS, UDD6_COLOURS, UDD6_TO_UDD5

SIZE = (128, 96)  # (W, H) of the small test images


def label_map(h: int, w: int, seed: int, num_classes: int) -> np.ndarray:
    """(H, W) uint8 map of rectangles of every class, plus a few ignore (255) pixels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.uint8)
    for k in range(num_classes):
        for _ in range(3):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            labels[y : y + rng.integers(4, h // 2), x : x + rng.integers(4, w // 2)] = k
    labels[rng.integers(0, h, 5), rng.integers(0, w, 5)] = 255
    return labels


def image_for(labels: np.ndarray, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 image whose colour follows the labels (plus noise)."""
    rng = np.random.default_rng(seed + 1000)
    base = rng.integers(0, 256, (256, 3)).astype(np.float32)
    img = base[labels] + rng.normal(0, 8, labels.shape + (3,))
    return img.clip(0, 255).astype(np.uint8)


def write_gt(path: Path, labels: np.ndarray, encoding: str, colours: tuple) -> None:
    """encoding: 'index' (mode L), 'palette' (mode P, index = class, class colours),
    'colour' (RGB; 255 = ignore is written as white, so trees with 'colour' have no ignore)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoding == "index":
        Image.fromarray(labels).save(path)
    elif encoding == "palette":
        img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
        flat = [v for c in colours for v in c]
        img.putpalette(flat + [255] * (768 - len(flat)))
        img.save(path)
    elif encoding == "colour":
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(colours)] = colours
        Image.fromarray(table[labels]).save(path)
    else:
        raise ValueError(encoding)


def write_udd_tree(
    root: Path, n: int = 3, *, size: tuple[int, int] = SIZE, split: str = "val", encoding: str = "index",
    dataset: str = "udd5", seed: int = 0, suffix: str = ".JPG",
) -> dict[str, np.ndarray]:
    """root/{split}/src/img_{i}.JPG + root/{split}/gt/img_{i}.png. Returns stem -> RAW labels
    (dataset's own class ids; 255 = ignore for index/palette encodings)."""
    w, h = size
    colours = UDD5_COLOURS if dataset == "udd5" else UDD6_COLOURS
    num_classes = len(colours)
    out = {}
    for i in range(n):
        stem = f"img_{i}"
        labels = label_map(h, w, seed + i, num_classes)
        if encoding == "colour":
            labels[labels == 255] = 0
        src = root / split / "src" / f"{stem}{suffix}"
        src.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_for(labels, seed + i)).save(src, quality=95)
        write_gt(root / split / "gt" / f"{stem}.png", labels, encoding, colours)
        out[stem] = labels
    return out


def udd6_to_udd5(labels: np.ndarray) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    lut[: len(UDD6_TO_UDD5)] = UDD6_TO_UDD5
    return lut[labels]


def write_image_folder(root: Path, n: int = 2, *, size: tuple[int, int] = SIZE, seed: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    stems = []
    for i in range(n):
        stem = f"photo_{i}"
        Image.fromarray(image_for(label_map(h, w, seed + i, 5), seed + i)).save(root / f"{stem}.jpg")
        stems.append(stem)
    return stems


def add_broken_items(root: Path, *, split: str = "val", size: tuple[int, int] = SIZE) -> dict[str, str]:
    """Add broken items to a UDD5 tree. Returns stem -> what is wrong with it."""
    w, h = size
    src, gt = root / split / "src", root / split / "gt"
    good_labels = label_map(h, w, 99, 5)
    good_image = image_for(good_labels, 99)
    broken = {}

    # a JPEG cut in half: the header reads, the decode fails
    Image.fromarray(good_image).save(src / "truncated.JPG", quality=95)
    data = (src / "truncated.JPG").read_bytes()
    (src / "truncated.JPG").write_bytes(data[: len(data) // 2])
    write_gt(gt / "truncated.png", good_labels, "index", UDD5_COLOURS)
    broken["truncated"] = "truncated image"

    (src / "notimage.JPG").write_text("this is not a JPEG\n")
    write_gt(gt / "notimage.png", good_labels, "index", UDD5_COLOURS)
    broken["notimage"] = "not an image"

    Image.fromarray(good_image).save(src / "wrongsize.JPG")
    write_gt(gt / "wrongsize.png", good_labels[: h // 2, : w // 2].copy(), "index", UDD5_COLOURS)
    broken["wrongsize"] = "GT of the wrong size"

    Image.fromarray(good_image).save(src / "badvalues.JPG")
    bad = good_labels.copy()
    bad[0:3, 0:3] = 7
    write_gt(gt / "badvalues.png", bad, "index", UDD5_COLOURS)
    broken["badvalues"] = "GT values out of range"

    Image.fromarray(good_image).save(src / "badcolour.JPG")
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[...] = (1, 2, 3)
    Image.fromarray(rgb).save(gt / "badcolour.png")
    broken["badcolour"] = "GT colour not a class colour"

    Image.fromarray(good_image).save(src / "wrongmode.JPG")
    Image.fromarray(good_labels.astype(np.uint16)).save(gt / "wrongmode.png")
    broken["wrongmode"] = "GT of a wrong mode (16-bit)"

    Image.fromarray(good_image).save(src / "nogt.JPG")
    broken["nogt"] = "missing GT"
    return broken
