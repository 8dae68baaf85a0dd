"""Every command through typer's CliRunner: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app
from engine.run.store import read_rows

runner = CliRunner()
FAST = ["--n-init", "1", "--seeds", "3", "--dims", "4", "--num-workers", "0", "--no-progress"]


def test_sweep_writes_rows_and_prints_the_summary(scenes, tmp_path, one_line_error):
    out = tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(scenes), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "2 items analysed" in result.stdout and "datr summary" in result.stdout
    rows = read_rows(out)
    assert rows.num_rows == 2 * 7
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["analysis"]["n_init"] == 1 and run["config"]["analysis"]["dims"] == [4]
    # rerun into the same folder needs --resume; with it nothing is redone
    again = runner.invoke(app, ["sweep", str(scenes), "--out", str(out), *FAST])
    one_line_error(again, "--resume", str(out))
    resumed = runner.invoke(app, ["sweep", str(scenes), "--out", str(out), "--resume", *FAST])
    assert resumed.exit_code == 0 and "0 items analysed, 2 already done" in resumed.stdout


def test_config_file_values_and_command_line_precedence(scenes, tmp_path, one_line_error):
    toml = tmp_path / "run.toml"
    toml.write_text('batch_size = 1\n[data]\nnum_workers = 0\n[analysis]\nalphas = [0.1, 0.2]\nn_init = 1\nseeds = 3\ndims = [4]\n')
    out = tmp_path / "cfg"
    result = runner.invoke(app, ["sweep", str(scenes), "--out", str(out), "--config", str(toml), "--alpha", "0.7", "--no-progress"])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["batch_size"] == 1
    assert run["config"]["analysis"]["alphas"] == [0.7] and run["config"]["analysis"]["n_init"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_sise = 3\n")
    one_line_error(runner.invoke(app, ["sweep", str(scenes), "--out", str(tmp_path / "x"), "--config", str(bad)]), "batch_sise")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["sweep", "{missing}", "--out", "{out}"], ["{missing}"]),
        (["sweep", "{scenes}", "--out", "{out}", "--model", "sam3"], ["--checkpoint"]),
        (["sweep", "{scenes}", "--out", "{out}", "--device", "cuda"], ["cuda"]),
        (["sweep", "{scenes}", "--out", "{out}", "--device", "tpu"], ["--device"]),
        (["sweep", "{scenes}", "--out", "{out}", "--alpha", "0.3,abc"], ["--alpha"]),
        (["sweep", "{scenes}", "--out", "{out}", "--clusters", "1"], ["--clusters"]),
        (["sweep", "{scenes}", "--out", "{out}", "--batch-size", "0"], ["--batch-size"]),
        (["sweep", "{scenes}", "--out", "{out}", "--backend", "cuml"], ["cuml"]),
        (["sweep", "{scenes}", "--out", "{out}", "--mode", "tile", "--tile-overlap", "2000"], ["--tile-overlap"]),
        (["sweep", "{scenes}", "--out", "{out}", "--from-cache", "{missing}"], ["{missing}"]),
        (["analyze", "{missing}", "--out", "{out}"], ["{missing}"]),
        (["report", "{missing}"], ["{missing}"]),
        (["bench", "kernels", "--device", "cuda"], ["cuda"]),
        (["sweep", "{scenes}", "--out", "{out}", "--eigh", "magic"], ["--eigh"]),
        (["sweep", "{scenes}", "--out", "{out}", "--dataset-sample", "3"], ["--dataset-sample"]),
        (["sweep", "{scenes}", "--out", "{out}", "--kmeans-init", "random"], ["--kmeans-init"]),
    ],
)
def test_user_errors_exit_2_with_one_line(scenes, tmp_path, args, needles, one_line_error):
    fill = {"scenes": str(scenes), "out": str(tmp_path / "o"), "missing": str(tmp_path / "nowhere")}
    result = runner.invoke(app, [a.format(**fill) for a in args])
    one_line_error(result, *[n.format(**fill) for n in needles])


def test_empty_dataset_folder_is_a_clear_error(tmp_path, one_line_error):
    (tmp_path / "empty").mkdir()
    one_line_error(runner.invoke(app, ["sweep", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]), str(tmp_path / "empty"))


def test_analyze_one_image(scenes, tmp_path):
    image = scenes / "val" / "src" / "scene_0000.JPG"
    gt = scenes / "val" / "gt" / "scene_0000.png"
    out = tmp_path / "one"
    result = runner.invoke(app, ["analyze", str(image), "--gt", str(gt), "--out", str(out), "--n-init", "1", "--seeds", "3", "--dims", "4", "--no-figures"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out).to_pylist()
    assert {r["image_id"] for r in rows} == {"scene_0000"} and len(rows) == 7
    assert all(r["accuracy"] is not None for r in rows)
    # a simulated run: the paper's column (SAM3 on a real image) is left out, with the reason (issue 22)
    assert "paper (one image, one seed): left out because this run is SIMULATED" in result.output
    assert "34.2% 0.7040 729/5184 17" not in result.output and result.output.startswith("analyze:")
    assert "SIMULATED: these numbers come from the simulated SAM3 source" in result.output


def test_kmeans_init_and_controls_options_are_recorded(scenes, tmp_path):
    image = scenes / "val" / "src" / "scene_0000.JPG"
    out = tmp_path / "enc"
    gt = scenes / "val" / "gt" / "scene_0000.png"
    result = runner.invoke(app, ["analyze", str(image), "--gt", str(gt), "--out", str(out), "--n-init", "1", "--seeds", "3", "--dims", "4",
                                 "--no-figures", "--kmeans-init", "encoder", "--no-controls"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out).to_pylist()
    assert {r["kmeans_init"] for r in rows} == {"encoder"} and all(r["flip_ratio_null"] is None for r in rows)
    analysis = json.loads((out / "run.json").read_text())["config"]["analysis"]
    assert analysis["kmeans_init"] == "encoder" and analysis["controls"] is False


def test_env_lists_torch_and_backends():
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.stdout
    backends = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("backends:")).split(":", 1)[1])
    assert backends["torch@cpu"]["ok"] and backends["sklearn@cpu"]["ok"]
    assert not backends["cuml@cpu"]["ok"] and "CUDA" in backends["cuml@cpu"]["why"]


def test_bench_kernels_json_contract(tmp_path):
    path = tmp_path / "k.json"
    result = runner.invoke(app, ["bench", "kernels", "--images", "1", "--batch-size", "1", "--reference-images", "1", "--json", str(path)])
    assert result.exit_code == 0, result.output
    payload = json.loads(path.read_text())
    assert {"machine", "device", "batch_size", "results", "speedup_vs_sklearn", "inertia_ratio_median"} <= set(payload)
    names = {r["name"] for r in payload["results"]}
    assert {"torch_batched_n_init10", "sklearn_per_problem_n_init10"} <= names
    assert all(r["ms_per_image"] > 0 and r["images_per_s"] > 0 for r in payload["results"])
    # parity figures the bench reports must hold (same data, same process)
    assert payload["parity"]["shared_init_ari_min"] == 1.0
    assert abs(payload["inertia_ratio_median"] - 1) < 0.01


def test_dataset_sample_from_the_command_line(scenes, tmp_path):
    out = tmp_path / "ds"
    result = runner.invoke(app, ["sweep", str(scenes), "--out", str(out), "--dataset-sample", "500", *FAST])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "dataset_clustering.json").read_text())["results"][0]
    assert res["tokens"] == 500 and res["images"] == 2 and sum(res["sizes"]) == 500
    assert "dataset-level clustering" in result.stdout


@pytest.mark.parametrize("option, value, phrase", [("--alpha", "-1", "--alpha"), ("--tau", "0.5,x", "--tau"),
                                                    ("--count-batches", "0", "--count-batches")])
def test_bench_sweep_grid_options_are_checked_in_one_line(option, value, phrase):
    result = runner.invoke(app, ["bench", "sweep", option, value])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and phrase in result.stderr
