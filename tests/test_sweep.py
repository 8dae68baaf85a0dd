"""The sweep end to end on the simulated source: rows, resume, errors, batch invariance, cache."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

import engine.run.sweep as pipeline
from engine.analysis.rows import ROW_SCHEMA
from engine.core.config import AnalysisConfig, DataConfig, RunConfig
from engine.core.errors import ConfigError
from engine.core.options import DATA_FIELDS
from engine.data.scenes import write_scene_set
from engine.run.store import read_rows

SCENES = {"count": 5, "size": (400, 300), "seed": 3}  # the `scenes` fixture (tests/conftest.py)

ANALYSIS = AnalysisConfig(n_init=2, dims=(8,), silhouette_sample=200, seeds=3)
SLOTS_PER_IMAGE = 1 + 6  # encoder + global + 5 prompts


def config(scenes, out, **kw) -> RunConfig:
    data = DataConfig(root=scenes, num_workers=0, **{k: kw.pop(k) for k in list(kw) if k in DATA_FIELDS})
    base = RunConfig(data=data, out=out, model="simulated", batch_size=2, analysis=ANALYSIS)
    return replace(base, **kw)


def sorted_rows(out):
    table = read_rows(out)
    return table.sort_by([("image_id", "ascending"), ("scope", "ascending"), ("alpha", "ascending")]).to_pylist()


def interrupt_at_batch(monkeypatch, n: int):
    """Make the n-th analysed batch raise KeyboardInterrupt, as a killed run would stop."""
    real = pipeline.analyze_batch
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "analyze_batch", dies)
    return lambda: monkeypatch.setattr(pipeline, "analyze_batch", real)


@pytest.fixture(scope="module")
def reference_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "sweep"
    result = pipeline.run_sweep(config(scenes, out), echo=lambda s: None, show_progress=False)
    return out, result


def test_rows_cover_every_image_and_scope_once(reference_run):
    out, result = reference_run
    table = read_rows(out)
    assert table.schema.equals(ROW_SCHEMA)
    assert result.images_done == 5 and result.errors == 0
    assert table.num_rows == 5 * SLOTS_PER_IMAGE
    keys = list(zip(table.column("image_id").to_pylist(), table.column("scope").to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)
    rows = table.to_pylist()
    for row in rows:
        if row["scope"] == "encoder":
            assert row["flip_ratio"] is None and row["alpha"] is None
        else:
            assert 0 <= row["effective_tokens"] <= row["n_tokens"] == 72 * 72
            if row["effective_tokens"] == 0:
                assert row["flip_ratio"] is None and row["cos_distance"] is None
            else:
                assert 0.0 <= row["flip_ratio"] <= 1.0
        assert row["accuracy"] is not None and 0 < row["accuracy"] <= 1  # GT exists
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["simulated"] is True
    assert run["backend"]["used"] == "torch" and "auto" in run["backend"]["reason"]
    stages = run["seconds_per_stage"]
    assert {"model", "analysis"} <= set(stages)
    assert pq.read_table(out / "errors.parquet").num_rows == 0


def test_global_scope_is_effective_wherever_a_class_scope_is(reference_run):
    rows = read_rows(reference_run[0]).to_pylist()
    by_image: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["scope"] != "encoder":
            by_image.setdefault(row["image_id"], {})[row["scope"]] = row["effective_tokens"]
    for counts in by_image.values():
        assert counts["global"] >= max(v for k, v in counts.items() if k != "global")


def test_batch_size_does_not_change_rows(scenes, tmp_path, reference_run):
    out = tmp_path / "b1"
    pipeline.run_sweep(config(scenes, out, batch_size=1), echo=lambda s: None, show_progress=False)
    assert sorted_rows(out) == sorted_rows(reference_run[0])
    from bench.rows_diff import diff

    assert len(list((out / "rows").glob("part-*"))) != len(list((reference_run[0] / "rows").glob("part-*")))
    assert diff(out, reference_run[0]) == []  # other shards, the same rows: rows_diff compares rows, not files


def test_interrupted_run_resumes_to_the_same_rows(scenes, tmp_path, reference_run, monkeypatch):
    out = tmp_path / "killed"
    restore = interrupt_at_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_sweep(config(scenes, out), echo=lambda s: None, show_progress=False)
    restore()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert read_rows(out).num_rows == 2 * SLOTS_PER_IMAGE  # the first batch survived whole
    with pytest.raises(ConfigError, match="--resume"):
        pipeline.run_sweep(config(scenes, out), echo=lambda s: None, show_progress=False)
    result = pipeline.run_sweep(config(scenes, out, resume=True), echo=lambda s: None, show_progress=False)
    assert result.images_skipped_resume == 2 and result.images_done == 3
    assert sorted_rows(out) == sorted_rows(reference_run[0])
    # a second resume has nothing left to do and changes nothing
    again = pipeline.run_sweep(config(scenes, out, resume=True), echo=lambda s: None, show_progress=False)
    assert again.images_done == 0 and sorted_rows(out) == sorted_rows(reference_run[0])


def test_broken_image_mid_run_is_recorded_and_skipped(tmp_path):
    root = write_scene_set(tmp_path / "s", 3, size=(400, 300), seed=4)
    src = root / "val" / "src" / "scene_0001.JPG"
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 3])  # truncated
    out = tmp_path / "out"
    messages = []
    result = pipeline.run_sweep(config(root, out), echo=messages.append, show_progress=False)
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["image_id"] for e in errors] == ["scene_0001"]
    assert "scene_0001.JPG" in errors[0]["path"] and errors[0]["error"]
    assert set(read_rows(out).column("image_id").to_pylist()) == {"scene_0000", "scene_0002"}
    assert result.images_done == 2 and result.errors == 1
    assert any("scene_0001" in m for m in messages)


def test_parameter_grid_shares_the_encoder_clustering(scenes, tmp_path):
    out = tmp_path / "grid"
    ana = replace(ANALYSIS, alphas=(0.0, 0.3, 0.6), ks=(3, 5))
    pipeline.run_sweep(config(scenes, out, limit=2, analysis=ana), echo=lambda s: None, show_progress=False)
    rows = read_rows(out).to_pylist()
    assert len(rows) == 2 * 2 * (1 + 3 * 6)  # images x k x (encoder + alphas x scopes)
    # alpha = 0 leaves every scope's tokens equal to the encoder's: the same seeded
    # clustering reproduces L_enc exactly, so nothing flips
    zero = [r for r in rows if r["alpha"] == 0.0 and r["flip_ratio"] is not None]
    assert zero and all(r["flip_ratio"] == 0.0 and r["flip_ratio_processed"] == 0.0 for r in zero)
    assert {r["k"] for r in rows} == {3, 5}


def test_feature_cache_round_trip_and_rerun(scenes, tmp_path, reference_run):
    cache = tmp_path / "cache"
    out = tmp_path / "with-cache"
    pipeline.run_sweep(config(scenes, out, save_features=cache), echo=lambda s: None, show_progress=False)
    assert sorted_rows(out) == sorted_rows(reference_run[0])  # writing the cache changes nothing
    index = json.loads((cache / "index.json").read_text())
    assert len(index["image_ids"]) == 5 and index["prompts"][0] == "vegetation"
    from safetensors.torch import load_file

    first = load_file(str(cache / f"{index['image_ids'][0]}.safetensors"))
    assert first["features"].shape == (256, 72, 72) and first["features"].dtype == torch.float16
    assert first["queries"].shape == (5, 200, 256) and first["query_masks"].shape == (5, 200, 72, 72)
    rerun = tmp_path / "from-cache"
    pipeline.run_sweep(config(None, rerun, from_cache=cache), echo=lambda s: None, show_progress=False)
    cached, direct = sorted_rows(rerun), sorted_rows(reference_run[0])
    assert len(cached) == len(direct)
    for a, b in zip(cached, direct, strict=True):
        # masks and scores are stored exactly; features in fp16, so clusterings may move a little
        for key in ("image_id", "scope", "kept_queries", "effective_tokens", "iou"):
            assert a[key] == b[key]
        assert abs(a["accuracy"] - b["accuracy"]) < 0.05
    assert json.loads((rerun / "run.json").read_text())["simulated"] is True  # the cache came from the simulated model
    rerun2 = tmp_path / "from-cache-2"
    pipeline.run_sweep(config(None, rerun2, from_cache=cache), echo=lambda s: None, show_progress=False)
    assert sorted_rows(rerun2) == cached


def test_dataset_level_sample_survives_an_interrupted_run(scenes, tmp_path, monkeypatch):
    ana = replace(ANALYSIS, dataset_sample=4000)
    whole = tmp_path / "whole"
    pipeline.run_sweep(config(scenes, whole, analysis=ana), echo=lambda s: None, show_progress=False)
    expected = json.loads((whole / "dataset_clustering.json").read_text())["results"]
    assert expected[0]["tokens"] == 4000 and expected[0]["images"] == 5 and expected[0]["purity"] > 0.5
    assert sum(expected[0]["sizes"]) == 4000

    out = tmp_path / "killed"
    restore = interrupt_at_batch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_sweep(config(scenes, out, analysis=ana), echo=lambda s: None, show_progress=False)
    restore()
    pipeline.run_sweep(config(scenes, out, analysis=ana, resume=True), echo=lambda s: None, show_progress=False)
    assert json.loads((out / "dataset_clustering.json").read_text())["results"] == expected


def test_rows_diff_names_every_result_file_that_changed(reference_run, tmp_path):
    """bench.rows_diff, the check that a refactor changes no number: silent on a copy, loud on one changed value."""
    import shutil

    from bench.rows_diff import diff, main

    out = reference_run[0]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert diff(out, copy) == [] and main([str(out), str(copy)]) == 0
    shard = sorted((copy / "rows").glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    inertia = table.column("inertia").to_pylist()
    inertia[0] = float(torch.nextafter(torch.tensor(inertia[0], dtype=torch.float64), torch.tensor(float("inf"), dtype=torch.float64)))
    pq.write_table(table.set_column(table.schema.get_field_index("inertia"), "inertia", [inertia]), shard)
    (copy / "errors.parquet").unlink()
    first = table.slice(0, 1).to_pylist()[0]
    key = tuple(first[c] for c in ("image_id", "scope", "tau", "alpha", "d", "k"))
    total = read_rows(out).num_rows
    assert diff(out, copy) == [f"rows: 1 of {total} differ, in inertia (first: {key})", f"errors.parquet: only in {out}"]
    assert main([str(out), str(copy)]) == 1
    shard.unlink()  # its rows gone: counted on the side that still has them
    lost = table.num_rows
    assert diff(out, copy)[0].startswith(f"rows: {lost} of {total} only in {out} (first: ")
