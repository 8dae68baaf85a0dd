"""UDD5/UDD6/image-folder indexing and loading, on small trees written in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.config import DataConfig
from engine.core.errors import BackendError, ConfigError, DataError
from engine.data.classes import UDD5_CLASSES
from engine.data.index import index_dataset, index_image, tile_origins
from engine.data.labels import majority_grids
from engine.data.loader import load_item, make_loader, resolve_decode
from engine.data.preprocess import squash_image
from kernels.grid import majority_downsample
from tests.udd_trees import (
    UDD5_COLOURS,
    add_broken_items,
    image_for,
    label_map,
    udd6_to_udd5,
    write_gt,
    write_image_folder,
    write_udd_tree,
)

torch.set_num_threads(1)


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(root=root, num_workers=kw.pop("num_workers", 0), decode=kw.pop("decode", "cpu"), **kw)


def all_gt(index) -> dict[str, np.ndarray]:
    return {it.image_id: load_item(index, i).gt_full.numpy() for i, it in enumerate(index.items)}


def decoded(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------- GT encodings


@pytest.mark.parametrize("encoding", ["index", "palette", "colour"])
def test_udd5_gt_encodings_read_exactly(tmp_path, encoding):
    labels = write_udd_tree(tmp_path / "UDD5", 2, encoding=encoding)
    index = index_dataset(cfg_for(tmp_path))
    assert index.dataset == "udd5" and index.has_gt and index.classes == UDD5_CLASSES
    got = all_gt(index)
    assert set(got) == set(labels)
    for stem, want in labels.items():
        np.testing.assert_array_equal(got[stem], want)


def test_index_and_colour_png_give_the_same_labels(tmp_path):
    labels = label_map(40, 50, seed=3, num_classes=5)
    labels[labels == 255] = 4  # colour PNGs carry no ignore value
    for enc in ("index", "colour"):
        root = tmp_path / enc / "UDD5"
        (root / "val" / "src").mkdir(parents=True)
        Image.fromarray(image_for(labels, 0)).save(root / "val" / "src" / "a.JPG")
        write_gt(root / "val" / "gt" / "a.png", labels, enc, UDD5_COLOURS)
    by_index = load_item(index_dataset(cfg_for(tmp_path / "index")), 0)
    by_colour = load_item(index_dataset(cfg_for(tmp_path / "colour")), 0)
    assert torch.equal(by_index.gt_full, by_colour.gt_full)
    assert torch.equal(by_index.gt_mask, by_colour.gt_mask) and torch.equal(by_index.gt_tokens, by_colour.gt_tokens)


@pytest.mark.parametrize("encoding", ["index", "colour", "palette"])
def test_udd6_is_detected_and_mapped_onto_udd5(tmp_path, encoding):
    raw = write_udd_tree(tmp_path / "aerial", 2, encoding=encoding, dataset="udd6")
    assert any((r == 5).any() for r in raw.values()), "the tree must contain Roof"
    index = index_dataset(cfg_for(tmp_path / "aerial"))
    assert index.dataset == "udd6" and "Roof" in index.dataset_reason
    got = all_gt(index)
    for stem, r in raw.items():
        want = udd6_to_udd5(r)
        np.testing.assert_array_equal(got[stem], want)
        # Facade (1) and Roof (5) are both building (1); Other (0) is other (4); Vegetation (3) is 0
        assert (got[stem][(r == 1) | (r == 5)] == 1).all()
        assert (got[stem][r == 0] == 4).all() and (got[stem][r == 3] == 0).all()


def test_udd6_folder_name_decides_without_roof(tmp_path):
    raw = write_udd_tree(tmp_path / "UDD6", 1, dataset="udd6")
    stem, r = next(iter(raw.items()))
    r[r == 5] = 1
    write_gt(tmp_path / "UDD6" / "val" / "gt" / f"{stem}.png", r, "index", ())
    index = index_dataset(cfg_for(tmp_path))
    assert index.dataset == "udd6" and "folder named UDD6" in index.dataset_reason
    np.testing.assert_array_equal(load_item(index, 0).gt_full.numpy(), udd6_to_udd5(r))


@pytest.mark.parametrize("encoding", ["index", "colour"])
def test_udd6_tree_read_as_udd5_is_a_clear_error(tmp_path, encoding):
    write_udd_tree(tmp_path / "mine", 2, encoding=encoding, dataset="udd6")
    with pytest.raises(DataError) as err:
        index_dataset(cfg_for(tmp_path / "mine", kind="udd5"))
    assert "--dataset udd6" in err.value.message and str(tmp_path / "mine") in err.value.message


def test_udd6_values_in_a_udd5_run_are_reported_per_item(tmp_path):
    labels = write_udd_tree(tmp_path / "t", 7)
    stem = "img_1"  # the dataset probe samples every other GT file of 7 (0, 2, 4): it misses this one
    bad = labels[stem].copy()
    bad[:4, :4] = 5
    write_gt(tmp_path / "t" / "val" / "gt" / f"{stem}.png", bad, "index", ())
    cfg = cfg_for(tmp_path / "t", kind="udd5")
    index = index_dataset(cfg)
    batches = list(make_loader(index, cfg, 8, "cpu"))
    errors = [e for b in batches for e in b.errors]
    assert [e[0] for e in errors] == [stem]
    assert "--dataset udd6" in errors[0][2] and f"{stem}.png" in errors[0][2]


def test_auto_without_markers_assumes_udd5_and_says_so(tmp_path):
    write_udd_tree(tmp_path / "aerial", 1)
    index = index_dataset(cfg_for(tmp_path / "aerial"))
    assert index.dataset == "udd5" and "assuming UDD5" in index.dataset_reason
    assert index.describe()["dataset_reason"] == index.dataset_reason


# ----------------------------------------------------------------------------- layouts and tree errors


def test_plain_image_folder_loads_without_gt(tmp_path):
    stems = write_image_folder(tmp_path / "photos", 3)
    cfg = cfg_for(tmp_path / "photos")
    index = index_dataset(cfg)
    assert index.dataset == "images" and not index.has_gt
    assert [it.image_id for it in index.items] == stems and all(it.gt_path is None for it in index.items)
    (batch,) = list(make_loader(index, cfg, 8, "cpu"))
    assert batch.gt_mask is None and batch.gt_tokens is None and batch.errors == []
    assert batch.images.shape == (3, 3, 1008, 1008) and batch.images.dtype == torch.uint8
    want = squash_image(decoded(tmp_path / "photos" / f"{stems[1]}.jpg"))
    assert torch.equal(batch.images[1], want)


def test_layouts_flat_udd_parent_and_all_splits(tmp_path):
    write_udd_tree(tmp_path / "UDD5", 2, split="train")
    write_udd_tree(tmp_path / "UDD5", 2, split="val", seed=10)
    val = index_dataset(cfg_for(tmp_path))  # ROOT/UDD5/val found from ROOT
    assert [it.image_id for it in val.items] == ["img_0", "img_1"]
    assert all("/val/src/" in str(it.image_path) for it in val.items)
    flat = index_dataset(cfg_for(tmp_path / "UDD5" / "train", split=None))  # ROOT/src + ROOT/gt
    assert [it.image_id for it in flat.items] == ["img_0", "img_1"] and flat.has_gt
    given_src = index_dataset(cfg_for(tmp_path / "UDD5" / "val" / "src"))  # its sibling gt/ is found
    assert given_src.has_gt and given_src.dataset == "udd5" and len(given_src.items) == 2
    both = index_dataset(cfg_for(tmp_path / "UDD5", split=None))
    assert [it.image_id for it in both.items] == ["train_img_0", "train_img_1", "val_img_0", "val_img_1"]
    assert len(set(it.image_id for it in both.items)) == 4
    limited = index_dataset(cfg_for(tmp_path, limit=1))
    assert [it.image_id for it in limited.items] == ["img_0"] and limited.num_images == 1


def test_tree_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="no such dataset folder") as err:
        index_dataset(cfg_for(tmp_path / "missing"))
    assert str(tmp_path / "missing") in err.value.message

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a UDD dataset and no images") as err:
        index_dataset(cfg_for(tmp_path / "empty"))
    assert str(tmp_path / "empty") in err.value.message

    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "notes.txt").write_text("hello")
    (tmp_path / "wrong" / "images").mkdir()
    with pytest.raises(DataError, match="expected .*val/src") as err:
        index_dataset(cfg_for(tmp_path / "wrong"))
    assert str(tmp_path / "wrong") in err.value.message

    write_udd_tree(tmp_path / "only_train", 1, split="train")
    with pytest.raises(DataError, match=r"no split 'val' .*found: train.*--split") as err:
        index_dataset(cfg_for(tmp_path / "only_train"))
    assert str(tmp_path / "only_train") in err.value.message

    (tmp_path / "nosrc" / "val" / "src").mkdir(parents=True)
    (tmp_path / "nosrc" / "val" / "gt").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as err:
        index_dataset(cfg_for(tmp_path / "nosrc"))
    assert str(tmp_path / "nosrc" / "val" / "src") in err.value.message

    write_image_folder(tmp_path / "nogt" / "val" / "src", 1)
    assert index_dataset(cfg_for(tmp_path / "nogt")).dataset == "images"
    with pytest.raises(DataError, match="--dataset images") as err:
        index_dataset(cfg_for(tmp_path / "nogt", kind="udd5"))
    assert str(tmp_path / "nogt" / "val" / "gt") in err.value.message

    (tmp_path / "a_file.JPG").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        index_dataset(cfg_for(tmp_path / "a_file.JPG"))


def test_config_ranges_name_the_option(tmp_path):
    for kwargs, option in [({"mode": "crop"}, "--mode"), ({"tile_overlap": 1008}, "--tile-overlap"),
                           ({"tile_overlap": -1}, "--tile-overlap"), ({"kind": "udd7"}, "--dataset"),
                           ({"decode": "gpu"}, "--decode"), ({"limit": 0}, "--limit"), ({"num_workers": -1}, "--num-workers"),
                           ({"split": ""}, "--split")]:
        with pytest.raises(ConfigError, match=option):
            DataConfig(root=tmp_path, **kwargs)


# ----------------------------------------------------------------------------- broken items


def test_every_broken_item_is_reported_with_its_path_and_skipped(tmp_path):
    labels = write_udd_tree(tmp_path / "UDD5", 3)
    broken = add_broken_items(tmp_path / "UDD5")
    cfg = cfg_for(tmp_path)
    index = index_dataset(cfg)
    batches = list(make_loader(index, cfg, 3, "cpu"))
    errors = index.bad + [e for b in batches for e in b.errors]
    assert sorted(e[0] for e in errors) == sorted(broken), errors
    src, gt = tmp_path / "UDD5" / "val" / "src", tmp_path / "UDD5" / "val" / "gt"
    for image_id, path, message in errors:
        assert "\n" not in message
        assert path.startswith((str(src / image_id), str(gt / image_id))), path
        assert message.startswith(str(src / image_id)) or message.startswith(str(gt / image_id)), message
    by_id = {e[0]: e[2] for e in errors}
    assert "truncated" in by_id["truncated"] and "not a readable image" in by_id["notimage"]
    assert "64x48 but its image is 128x96" in by_id["wrongsize"] and "values 7" in by_id["badvalues"]
    assert "(1,2,3)" in by_id["badcolour"] and "mode I;16" in by_id["wrongmode"]
    assert "no ground truth" in by_id["nogt"] and "nogt.png" in by_id["nogt"]
    assert by_id_path(errors)["badvalues"].endswith("gt/badvalues.png")  # the file to fix is named
    assert by_id_path(errors)["truncated"].endswith("src/truncated.JPG")
    loaded = [i for b in batches for i in b.image_ids]
    assert loaded == sorted(labels)  # every good item, none twice
    for b in batches:
        assert b.images.shape[0] == len(b.image_ids) == len(b.indices) == b.gt_mask.shape[0] == b.gt_tokens.shape[0]
    with pytest.raises(DataError, match="truncated"):
        load_item(index, next(i for i, it in enumerate(index.items) if it.image_id == "truncated"))


def by_id_path(errors) -> dict[str, str]:
    return {e[0]: e[1] for e in errors}


def test_a_batch_where_everything_failed_is_empty_not_missing(tmp_path):
    write_udd_tree(tmp_path, 1)
    add_broken_items(tmp_path)
    cfg = cfg_for(tmp_path)
    index = index_dataset(cfg)
    failing = [i for i, it in enumerate(index.items) if it.image_id in ("truncated", "badvalues")]
    (batch,) = list(make_loader(index, cfg, 4, "cpu", indices=failing))
    assert batch.images.shape == (0, 3, 1008, 1008) and batch.gt_mask.shape == (0, 288, 288)
    assert batch.gt_tokens.shape == (0, 72, 72) and batch.image_ids == [] and len(batch.errors) == 2


def test_gpu_decode_path_with_a_stand_in_decoder(tmp_path, monkeypatch):
    """The cuda-decode plumbing (bytes from workers, decode in the main process, merge with
    PIL-decoded PNGs, plan order) checked on the CPU with PIL standing in for nvjpeg."""
    import sys
    import types

    write_udd_tree(tmp_path, 3)
    add_broken_items(tmp_path)
    Image.open(tmp_path / "val" / "src" / "img_1.JPG").save(tmp_path / "val" / "src" / "img_1b.png")
    (tmp_path / "val" / "gt" / "img_1b.png").write_bytes((tmp_path / "val" / "gt" / "img_1.png").read_bytes())
    calls = []

    def decode_jpeg(data, mode=None, device=None):
        if isinstance(data, list):
            calls.append(len(data))
            return [decode_jpeg(d) for d in data]
        return torch.from_numpy(np.array(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))).permute(2, 0, 1)

    fake = types.ModuleType("torchvision.io")
    fake.decode_jpeg, fake.ImageReadMode = decode_jpeg, types.SimpleNamespace(RGB="RGB")
    monkeypatch.setitem(sys.modules, "torchvision.io", fake)
    cfg = cfg_for(tmp_path)
    index = index_dataset(cfg)
    reference = list(make_loader(index, cfg, 4, "cpu"))
    loader = make_loader(index, cfg, 4, "cpu")
    loader.decode_used = "cuda"  # what resolve_decode picks on a CUDA device
    staged = list(loader)
    assert calls and sum(calls) == 3  # the three good JPEGs; the truncated one went to PIL
    for a, b in zip(reference, staged, strict=True):
        assert a.image_ids == b.image_ids and a.indices == b.indices and a.errors == b.errors
        assert torch.equal(a.images, b.images) and torch.equal(a.gt_tokens, b.gt_tokens)
    assert "img_1b" in [i for b in staged for i in b.image_ids]


def test_duplicate_stems_are_reported(tmp_path):
    write_udd_tree(tmp_path, 1)
    src = tmp_path / "val" / "src"
    (src / "img_0.jpeg").write_bytes((src / "img_0.JPG").read_bytes())
    index = index_dataset(cfg_for(tmp_path))
    assert [it.image_id for it in index.items] == ["img_0"]
    assert len(index.bad) == 1 and "same name" in index.bad[0][2] and index.bad[0][1].endswith("img_0.jpeg")


# ----------------------------------------------------------------------------- grids, tiles, batches


@pytest.mark.parametrize("shape", [(96, 128), (301, 419), (50, 61), (288, 288), (1008, 1008)])
def test_majority_grids_equal_the_kernel(shape):
    rng = np.random.default_rng(shape[0])
    labels = rng.integers(0, 5, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.2] = 255
    labels[: shape[0] // 3, : shape[1] // 3] = 255  # whole cells without a valid pixel
    mask, tokens = majority_grids(labels, 5)
    t = torch.from_numpy(labels)[None]
    assert np.array_equal(mask, majority_downsample(t, 288, 5)[0].numpy())
    assert np.array_equal(tokens, majority_downsample(t, 72, 5)[0].numpy())


def test_loader_gt_is_the_majority_of_the_full_resolution_gt(tmp_path):
    labels = write_udd_tree(tmp_path, 2, size=(200, 150))
    cfg = cfg_for(tmp_path)
    index = index_dataset(cfg)
    (batch,) = list(make_loader(index, cfg, 2, "cpu"))
    full = torch.from_numpy(np.stack([labels[i] for i in batch.image_ids]))
    assert torch.equal(batch.gt_mask, majority_downsample(full, 288, 5))
    assert torch.equal(batch.gt_tokens, majority_downsample(full, 72, 5))
    assert batch.gt_mask.dtype == torch.uint8 and batch.gt_tokens.shape == (2, 72, 72)


def test_tile_origins():
    assert tile_origins(3000, 0) == [0, 1008, 1992]
    assert tile_origins(2016, 0) == [0, 1008]
    assert tile_origins(2016, 8) == [0, 1000, 1008]
    assert tile_origins(1008, 100) == [0] and tile_origins(500, 0) == [0]
    for length in (1009, 2500, 4000):
        for overlap in (0, 64, 500):
            starts = tile_origins(length, overlap)
            assert starts[0] == 0 and starts[-1] == length - 1008
            assert all(0 < b - a <= 1008 - overlap for a, b in zip(starts[:-1], starts[1:], strict=True))


def test_tiles_cover_the_image_and_crop_image_and_gt_alike(tmp_path):
    labels = write_udd_tree(tmp_path, 1, size=(1500, 1100))["img_0"]
    cfg = cfg_for(tmp_path, mode="tile", tile_overlap=100)
    index = index_dataset(cfg)
    ids = [it.image_id for it in index.items]
    assert ids == ["img_0_r0_c0", "img_0_r0_c492", "img_0_r92_c0", "img_0_r92_c492"]
    covered = np.zeros(labels.shape, dtype=int)
    for it in index.items:
        top, left, h, w = it.tile
        assert (h, w) == (1008, 1008)
        covered[top : top + h, left : left + w] += 1
    assert covered.min() >= 1
    original = decoded(tmp_path / "val" / "src" / "img_0.JPG")
    for i, it in enumerate(index.items):
        top, left, h, w = it.tile
        item = load_item(index, i)
        crop = labels[top : top + h, left : left + w]
        np.testing.assert_array_equal(item.gt_full.numpy(), crop)
        assert torch.equal(item.gt_mask, majority_downsample(torch.from_numpy(crop)[None], 288, 5)[0])
        assert torch.equal(item.image, original[:, top : top + h, left : left + w])
    (batch,) = list(make_loader(index, cfg, 4, "cpu"))  # one decode shared by the 4 tiles
    assert batch.image_ids == ids and torch.equal(batch.images[3], original[:, 92:1100, 492:1500])
    for i in range(4):
        item = load_item(index, i)
        assert torch.equal(batch.images[i], item.image) and torch.equal(batch.gt_tokens[i], item.gt_tokens)


def test_small_image_in_tile_mode_is_padded_with_ignore(tmp_path):
    labels = write_udd_tree(tmp_path, 1)["img_0"]  # 128 x 96
    index = index_dataset(cfg_for(tmp_path, mode="tile"))
    (it,) = index.items
    assert it.image_id == "img_0_r0_c0" and it.tile == (0, 0, 96, 128)
    item = load_item(index, 0)
    assert item.image.shape == (3, 1008, 1008) and item.image[:, 96:].sum() == 0 and item.image[:, :, 128:].sum() == 0
    np.testing.assert_array_equal(item.gt_full.numpy()[:96, :128], labels)
    assert (item.gt_full[96:] == 255).all() and (item.gt_full[:, 128:] == 255).all()
    assert (item.gt_tokens[20:] == 255).all()  # rows past the image are ignored


def test_batches_are_deterministic_and_resume_takes_a_subset(tmp_path):
    write_udd_tree(tmp_path, 5)
    add_broken_items(tmp_path)  # errors must not shift other items between batches
    cfg = cfg_for(tmp_path)
    index = index_dataset(cfg)
    loader = make_loader(index, cfg, 3, "cpu")
    assert loader.batches == [list(range(s, min(s + 3, len(index.items)))) for s in range(0, len(index.items), 3)]
    first = list(loader)
    again = list(make_loader(index, cfg, 3, "cpu"))
    for a, b in zip(first, again, strict=True):
        assert a.image_ids == b.image_ids and a.indices == b.indices and a.errors == b.errors
        assert torch.equal(a.images, b.images) and torch.equal(a.gt_tokens, b.gt_tokens)
    position = {it.image_id: i for i, it in enumerate(index.items)}
    for b, planned in zip(first, loader.batches, strict=True):
        assert b.indices == sorted(b.indices)
        assert sorted(b.indices + [position[e[0]] for e in b.errors]) == planned  # loaded + failed = the plan
        assert [index.items[i].image_id for i in b.indices] == b.image_ids
    subset = [i for i, it in enumerate(index.items) if it.image_id in ("img_1", "img_4")]
    (resumed,) = list(make_loader(index, cfg, 8, "cpu", indices=subset))
    assert resumed.image_ids == ["img_1", "img_4"] and resumed.indices == subset
    with pytest.raises(ConfigError):
        make_loader(index, cfg, 0, "cpu")


def test_worker_processes_give_the_same_batches(tmp_path):
    write_udd_tree(tmp_path, 4)
    add_broken_items(tmp_path)
    index = index_dataset(cfg_for(tmp_path))
    plain = list(make_loader(index, cfg_for(tmp_path), 4, "cpu"))
    workers = list(make_loader(index, cfg_for(tmp_path, num_workers=2), 4, "cpu"))
    assert len(plain) == len(workers)
    for a, b in zip(plain, workers, strict=True):
        assert a.image_ids == b.image_ids and a.errors == b.errors and torch.equal(a.images, b.images)
        assert torch.equal(a.gt_mask, b.gt_mask)


def test_index_image_for_analyze(tmp_path):
    labels = write_udd_tree(tmp_path, 1)
    image, gt = tmp_path / "val" / "src" / "img_0.JPG", tmp_path / "val" / "gt" / "img_0.png"
    index = index_image(image, gt)
    assert index.has_gt and [it.image_id for it in index.items] == ["img_0"]
    np.testing.assert_array_equal(load_item(index, 0).gt_full.numpy(), labels["img_0"])
    assert not index_image(image).has_gt
    with pytest.raises(DataError, match="no such ground-truth file"):
        index_image(image, tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(DataError, match="cannot read ground truth") as err:
        index_image(image, tmp_path / "text.png", dataset="udd5")
    assert str(tmp_path / "text.png") in err.value.message


# ----------------------------------------------------------------------------- decoding choice


def test_decode_choice_is_explicit_and_recorded(tmp_path):
    assert resolve_decode("cpu", "cpu") == ("cpu", "requested")
    used, reason = resolve_decode("auto", "cpu")
    assert used == "cpu" and "not CUDA" in reason
    with pytest.raises(BackendError, match="--decode cuda"):
        resolve_decode("cuda", "cpu")
    write_udd_tree(tmp_path, 1)
    cfg = cfg_for(tmp_path, decode="auto")
    loader = make_loader(index_dataset(cfg), cfg, 1, "cpu")
    assert loader.decode_used == "cpu" and loader.describe()["decode_used"] == "cpu"
    assert loader.describe()["pin_memory"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decode_matches_cpu_decode(tmp_path):
    write_udd_tree(tmp_path, 3, size=(640, 480))
    add_broken_items(tmp_path, size=(640, 480))
    index = index_dataset(cfg_for(tmp_path))
    cpu = list(make_loader(index, cfg_for(tmp_path), 4, "cuda"))
    loader = make_loader(index, cfg_for(tmp_path, decode="cuda"), 4, "cuda")
    assert loader.decode_used == "cuda"
    gpu = list(loader)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.image_ids == b.image_ids and [e[0] for e in a.errors] == [e[0] for e in b.errors]
        assert a.images.is_pinned() and b.images.is_cuda
        diff = (a.images.cuda().float() - b.images.float()).abs()
        assert diff.mean() < 2.0, f"mean |cpu - gpu| = {diff.mean():.2f}"
        assert torch.equal(a.gt_tokens, b.gt_tokens.cpu())
