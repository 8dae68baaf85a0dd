"""Fault injection: every way off the happy path ends in exactly-once rows or a one-line error (exit 2).

Each case sets up the fault the way a user meets it (items deleted between runs, another
--resume option, a second writer, a full disk, a tampered cache, odd images and labels)
and asserts the exact rows (against an uninterrupted run of the same items) or the exact
error, and what run.json says.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
import engine.run.store as store
import engine.run.sweep as pipeline
from engine.core.config import AnalysisConfig, DataConfig, RunConfig
from engine.core.errors import CheckpointError, ConfigError, DataError
from engine.core.options import DATA_FIELDS
from engine.data.loader import _decode_cpu
from engine.run.lock import LOCK_FILE, FolderLock
from engine.run.store import read_rows
from tests.readback import rows_by_key, run_json

SCENES = {"count": 4, "size": (160, 120), "seed": 5}  # the `scenes` fixture (tests/conftest.py)

ANALYSIS = AnalysisConfig(n_init=1, dims=(4,), silhouette_sample=100, seeds=3)
ROWS = 1 + 6  # encoder + global + 5 prompts
FAST = ["--n-init", "1", "--seeds", "3", "--dims", "4", "--batch-size", "2", "--num-workers", "0", "--no-progress"]
runner = CliRunner()


def quiet(_msg: str) -> None:
    pass


def fresh(scenes: Path, tmp_path: Path) -> Path:
    """A private copy of the scene tree (the cases change it)."""
    return Path(shutil.copytree(scenes, tmp_path / "UDD5"))


def config(dataset, out, **kw) -> RunConfig:
    data = DataConfig(root=dataset, num_workers=0, **{k: kw.pop(k) for k in list(kw) if k in DATA_FIELDS})
    return replace(RunConfig(data=data, out=out, batch_size=2, analysis=ANALYSIS), **kw)


def sweep(cfg: RunConfig):
    return pipeline.run_sweep(cfg, echo=quiet, show_progress=False)




@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "sweep"
    sweep(config(scenes, out))
    return rows_by_key(out)


# ----------------------------------------------------------------------------- rows lost, mixed, duplicated


def test_deleting_items_then_resuming_loses_no_rows(scenes, reference, tmp_path):
    data = fresh(scenes, tmp_path)
    jpeg = data / "val" / "src" / "scene_0001.JPG"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])  # truncated: listed as an item, fails to decode, recorded as bad
    out = tmp_path / "out"
    sweep(config(data, out))
    assert run_json(out)["errors"] == 1
    (data / "val" / "src" / "scene_0001.JPG").unlink()  # as errors.parquet suggests
    (data / "val" / "gt" / "scene_0001.png").unlink()
    next((out / "rows").glob("part-000002-*.parquet")).unlink()  # the run had stopped after its first batch
    kept = {p.name for p in (out / "rows").glob("*.parquet")}
    result = sweep(config(data, out, resume=True))
    assert result.images_done == 2 and kept <= {p.name for p in (out / "rows").glob("*.parquet")}
    expected = {k: v for k, v in reference.items() if k[0] != "scene_0001"}
    assert rows_by_key(out) == expected
    assert run_json(out)["status"] == "complete" and run_json(out)["errors"] == 0


@pytest.mark.parametrize("option,value,named", [
    (["--alpha", "0.5"], None, "--alpha (run: [0.3], now: [0.5])"),
    (["--clusters", "4"], None, "--clusters"),
    (["--seed", "1"], None, "--seed"),
    (["--mode", "tile"], None, "--mode (run: squash, now: tile)"),
])
def test_resume_with_other_options_is_refused(scenes, tmp_path, option, value, named, one_line_error):
    out = tmp_path / "out"
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--limit", "2"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (out / "rows").iterdir()}
    refused = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume", *option])
    one_line_error(refused, named, "new --out")
    assert {p.name: p.read_bytes() for p in (out / "rows").iterdir()} == before
    assert run_json(out)["status"] == "complete" and run_json(out)["config"]["analysis"]["alphas"] == [0.3]
    extended = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"])  # a larger --limit
    assert extended.exit_code == 0 and "2 items analysed, 2 already done" in extended.output


def test_a_second_writer_is_refused_and_a_left_lock_file_taken(scenes, reference, tmp_path):
    out = tmp_path / "out"
    with FolderLock(out, "--out"):  # a live run (flock: another open of the file conflicts, even in this process)
        with pytest.raises(ConfigError, match=f"--out {out}: another datr run \\(pid {os.getpid()} on "):
            sweep(config(scenes, out))
        assert not (out / "rows").exists()
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # left, nobody holds it
    sweep(config(scenes, out))
    assert rows_by_key(out) == reference and not (out / LOCK_FILE).exists()


def test_duplicated_rows_fail_the_run_naming_the_image(scenes, tmp_path):
    out = tmp_path / "out"
    sweep(config(scenes, out, limit=2))
    first = next((out / "rows").glob("part-000000-*.parquet"))
    shutil.copy(first, first.with_name("part-000000-copy.parquet"))  # what two writers used to leave
    with pytest.raises(DataError, match="more than once, e.g. scene_0000"):
        sweep(config(scenes, out, resume=True))
    assert run_json(out)["status"] == "failed" and "more than once" in run_json(out)["error"]


def test_a_damaged_shard_is_named_not_read(scenes, tmp_path):
    out = tmp_path / "out"
    sweep(config(scenes, out, limit=2))
    shard = next((out / "rows").glob("part-*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 4] ^= 0x10  # one bit, inside the column pages
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard.name}: unreadable or damaged.*--resume"):
        read_rows(out)


# ----------------------------------------------------------------------------- disks and files


def test_a_full_disk_is_one_line_and_resumes_to_the_same_rows(scenes, reference, tmp_path, monkeypatch, one_line_error):
    out = tmp_path / "out"
    real = store.write_once_table
    calls = {"n": 0}

    def fills_up(path, table):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, table)

    monkeypatch.setattr(store, "write_once_table", fills_up)
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST])
    one_line_error(result, "No space left on device", "free space", "--resume")
    run = run_json(out)
    assert run["status"] == "failed" and "No space left" in run["error"]
    assert [p.name for p in (out / "rows").iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(store, "write_once_table", real)
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"]).exit_code == 0
    assert rows_by_key(out) == reference


def test_a_read_only_out_and_save_features_are_one_line(scenes, tmp_path, monkeypatch, one_line_error):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", read_only)  # run.json is the first file a run writes
    one_line_error(runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "out"), *FAST]),
                   "Read-only file system", "writable --out")
    monkeypatch.undo()
    import engine.sources.cache as cache

    monkeypatch.setattr(cache, "save_file", lambda tensors, filename, metadata=None: read_only(filename))
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "o2"), *FAST,
                                     "--save-features", str(tmp_path / "cache")])
    one_line_error(result, "Read-only file system")
    assert run_json(tmp_path / "o2")["status"] == "failed"


def test_a_toml_value_of_the_wrong_type_is_one_line(scenes, tmp_path, one_line_error):
    toml = tmp_path / "run.toml"
    toml.write_text("batch_size = 2\n[analysis]\nalphas = \"0.3\"\n")
    one_line_error(runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "o"), "--config", str(toml)]),
                   "analysis.alphas = '0.3' is a str, expected a list of numbers")


# ----------------------------------------------------------------------------- the feature cache


@pytest.fixture(scope="module")
def cache_run(scenes, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    sweep(config(scenes, root / "out", save_features=root / "cache", cache_dtype="float32"))
    return root / "out", root / "cache"


def test_a_float32_cache_reruns_bitwise(cache_run, tmp_path):
    out, cache = cache_run
    sweep(config(None, tmp_path / "again", from_cache=cache))
    assert rows_by_key(tmp_path / "again") == rows_by_key(out)
    assert json.loads((cache / "index.json").read_text())["dtype"] == "float32"


def test_swapped_and_misshapen_cache_files_are_errors_of_their_items(cache_run, tmp_path):
    out, original = cache_run
    cache = Path(shutil.copytree(original, tmp_path / "cache"))
    a, b = cache / "scene_0000.safetensors", cache / "scene_0001.safetensors"
    a.rename(tmp_path / "a")
    b.rename(a)
    (tmp_path / "a").rename(b)
    from safetensors.torch import load_file, save_file

    tensors = load_file(cache / "scene_0002.safetensors")
    tensors["features"] = tensors["features"][:, :36].contiguous()
    save_file(tensors, str(cache / "scene_0002.safetensors"), metadata={"image_id": "scene_0002", "dtype": "float32"})
    result = sweep(config(None, tmp_path / "o", from_cache=cache))
    assert result.images_done == 1 and result.errors == 3
    errors = {r["image_id"]: r["error"] for r in read_rows_errors(tmp_path / "o")}
    assert "holds image 'scene_0001', not 'scene_0000'" in errors["scene_0000"]
    assert "holds image 'scene_0000', not 'scene_0001'" in errors["scene_0001"]
    assert "tensor features is (256, 36, 72)" in errors["scene_0002"]
    assert {k for k in rows_by_key(tmp_path / "o")} == {k for k in rows_by_key(out) if k[0] == "scene_0003"}


def read_rows_errors(out: Path) -> list[dict]:
    return store.read_shard(out / "errors.parquet").to_pylist()


@pytest.mark.parametrize("edit,message", [
    (lambda m: {**m, "image_ids": m["image_ids"] + m["image_ids"][:1]}, "image ids listed more than once (scene_0000)"),
    (lambda m: {k: v for k, v in m.items() if k != "image_ids"}, "'image_ids' is missing"),
    (lambda m: b"\xff\xfe not utf-8", "not UTF-8 text"),
])
def test_a_broken_cache_index_is_one_line(cache_run, tmp_path, edit, message, one_line_error):
    cache = Path(shutil.copytree(cache_run[1], tmp_path / "cache"))
    edited = edit(json.loads((cache / "index.json").read_text()))
    (cache / "index.json").write_bytes(edited if isinstance(edited, bytes) else json.dumps(edited).encode())
    result = runner.invoke(cli.app, ["sweep", "--from-cache", str(cache), "--out", str(tmp_path / "o"), *FAST])
    one_line_error(result, "index.json", message)


def test_edited_cache_taus_make_every_file_an_error(cache_run, tmp_path):
    cache = Path(shutil.copytree(cache_run[1], tmp_path / "cache"))
    meta = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({**meta, "taus": [0.7]}))
    result = sweep(config(None, tmp_path / "o", from_cache=cache, analysis=replace(ANALYSIS, taus=(0.7,))))
    assert result.images_done == 0 and result.errors == 4
    assert all("taus [0.5] differ from index.json's [0.7]" in r["error"] for r in read_rows_errors(tmp_path / "o"))


# ----------------------------------------------------------------------------- images, labels, the dataset


def test_an_all_ignore_gt_scores_null_not_one(scenes, tmp_path):
    data = fresh(scenes, tmp_path)
    gt = data / "val" / "gt" / "scene_0002.png"
    Image.fromarray(np.full_like(np.asarray(Image.open(gt)), 255)).save(gt)
    sweep(config(data, tmp_path / "o"))
    rows = [r for r in read_rows(tmp_path / "o").to_pylist() if r["image_id"] == "scene_0002"]
    assert len(rows) == ROWS
    assert all(r["nmi"] is None and r["ari"] is None and r["accuracy"] is None for r in rows)
    assert all(r["flip_ratio"] is not None for r in rows if r["scope"] == "global")  # the clustering itself stands


def test_a_16_bit_image_decodes_as_its_8_bit_self_and_a_float_one_is_refused(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (30, 40)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I;16")
    assert np.array_equal(_decode_cpu(tmp_path / "sixteen.png").numpy(), _decode_cpu(tmp_path / "eight.png").numpy())
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match="float.tiff: a floating-point image .* no fixed 0-255 range"):
        _decode_cpu(tmp_path / "float.tiff")


def test_one_stray_roof_label_is_that_items_error_not_udd6(scenes, reference, tmp_path):
    data = fresh(scenes, tmp_path)
    gt = data / "val" / "gt" / "scene_0003.png"
    labels = np.asarray(Image.open(gt)).copy()
    labels[0, 0] = 5  # UDD6's Roof
    Image.fromarray(labels).save(gt)
    result = sweep(config(data, tmp_path / "o"))
    run = run_json(tmp_path / "o")
    assert run["data"]["dataset"] == "udd5" and "folder named UDD5" in run["data"]["dataset_reason"]
    assert result.errors == 1 and "scene_0003.png: ground-truth values 5 are not UDD5" in read_rows_errors(tmp_path / "o")[0]["error"]
    assert rows_by_key(tmp_path / "o") == {k: v for k, v in reference.items() if k[0] != "scene_0003"}


def test_symlink_loops_and_duplicate_stems_are_recorded(scenes, tmp_path):
    data = fresh(scenes, tmp_path)
    src = data / "val" / "src"
    os.symlink(src / "loop.JPG", src / "loop.JPG")
    shutil.copy(src / "scene_0000.JPG", src / "scene_0000.jpeg")
    result = sweep(config(data, tmp_path / "o"))
    errors = {r["image_id"]: r["error"] for r in read_rows_errors(tmp_path / "o")}
    assert result.images_done == 4 and set(errors) == {"loop", "scene_0000.jpeg"}
    assert "symbolic link loop" in errors["loop"] and "same name as scene_0000.JPG" in errors["scene_0000.jpeg"]


# ----------------------------------------------------------------------------- options checked up front


@pytest.mark.parametrize("args,message", [
    (["--alpha", "inf"], "--alpha: need finite values >= 0, got [inf]"),
    (["--tau", "nan"], "--tau: need values in (0, 1]"),
    (["--prompts", "a,b,c,d,e,f"], "[5] beyond udd5's 5 classes"),
])
def test_bad_options_are_refused_before_any_work(scenes, tmp_path, args, message, one_line_error):
    out = tmp_path / "o"
    one_line_error(runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, *args]), message)
    assert not any((out / "rows").glob("*.parquet"))


def test_analyze_exits_2_when_its_image_fails(scenes, tmp_path, one_line_error):
    image = tmp_path / "broken.JPG"
    image.write_bytes((scenes / "val" / "src" / "scene_0000.JPG").read_bytes()[:400])
    result = runner.invoke(cli.app, ["analyze", str(image), "--out", str(tmp_path / "o"), "--no-figures"])
    one_line_error(result, "broken.JPG")


def test_a_code_carrying_checkpoint_is_refused_not_called_corrupt(tmp_path):
    import torch

    from engine.sources.sam3.checkpoint import read_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    for legacy in (False, True):
        path = tmp_path / f"evil{legacy}.pt"
        torch.save({"w": torch.zeros(2), "x": Payload()}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match="refused: holds pickled Python objects.*system.*nothing was executed"):
            read_checkpoint(path)


def test_a_missing_checkpoint_is_named_before_the_run_identity_reads_it(scenes, tmp_path, one_line_error):
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "o"), *FAST, "--model", "sam3",
                                     "--checkpoint", str(tmp_path / "sam3.pt")])
    one_line_error(result, "sam3.pt: no such file; pass the path of SAM3's sam3.pt")
