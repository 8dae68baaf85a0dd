"""CLI manners: --version, one-line usage errors, help at 80 columns, show fitted to its width, Ctrl-C, report lookup."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from cli import app
from engine.present.summary import render_summary, summarize
from engine.run.store import read_rows
from tests.test_report import add_synthetic_controls, write_sweep

runner = CliRunner()


def test_version_prints_the_project_version():
    import tomllib
    from pathlib import Path

    expected = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["version"]
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"datr {expected}"


@pytest.mark.parametrize(("args", "needles"), [
    (["foo"], ["No such command 'foo'", "datr --help"]),
    (["sweep", "--versio"], ["--versio", "datr sweep --help"]),
    (["show", "x", "--width", "3"], ["--width"]),
    (["sweep", "x", "--out", "y", "--mode", "tiles"], ["--mode", "tiles"]),
    (["report", "x", "--formats", "png,jpg"], ["'jpg'", "--formats"]),
])
def test_usage_errors_are_one_line_with_exit_2(args, needles, one_line_error):
    one_line_error(runner.invoke(app, args), *needles)


def test_help_reads_at_80_columns_and_shows_option_text_verbatim():
    result = runner.invoke(app, ["sweep", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "[analysis]" in result.stdout  # no markup eaten
    # the help column starts early enough that descriptions are not squeezed into ~20 characters
    config = next(i for i, line in enumerate(lines) if line.strip().startswith("--config"))
    assert len(lines[config].split("  ")[-1].strip()) > 30 or len(lines[config + 1].strip()) > 30


def test_show_fits_the_width_in_percent_with_nmi(tmp_path):
    sweep = write_sweep(tmp_path / "s")
    for width in (80, 200):
        result = runner.invoke(app, ["show", str(sweep), "--width", str(width)])
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.stdout.splitlines()) <= width
        assert "NMI" in result.stdout and "%" in result.stdout
    # vegetation at alpha 0.3: flip = 0.03 * (i + 1) over 4 images -> median 7.5%, quartiles 5.25% and 9.75%
    table = render_summary(summarize(read_rows(sweep)), "t", width=200)
    veg = next(line for line in table.splitlines() if line.strip().startswith("vegetation") and " 0.3 " in line)
    assert "7.5% [5.2–9.8%]" in veg


@pytest.mark.parametrize("width", [60, 80])
def test_show_drops_whole_columns_and_never_cuts_a_number(tmp_path, width):
    sweep = add_synthetic_controls(write_sweep(tmp_path / "s"))
    result = runner.invoke(app, ["show", str(sweep), "--width", str(width)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width and "…" not in result.stdout
    header = next(line for line in lines if line.strip().startswith("scope"))
    assert "flip" in header and "null" in header  # the flip ratio and its control are the last to go
    veg = next(line for line in lines if line.strip().startswith("vegetation") and " 0.3 " in line)
    assert " 7.5%" in veg and " 3.8%" in veg  # whole medians: flip 7.5%, null 3.75% (-> 3.8%)
    assert f"left out to fit {width} columns:" in result.stdout
    assert "median" in result.stdout and "over images, as in the report" in result.stdout


def test_show_prints_the_reports_statistic_and_says_so(tmp_path):
    """`datr show` and the report agree: the median over images at the report's grid point (not the mean)."""
    sweep = add_synthetic_controls(write_sweep(tmp_path / "s"))
    runner.invoke(app, ["report", str(sweep)])
    with (sweep / "report" / "summary.csv").open() as fh:
        report = {r["scope"]: r for r in csv.DictReader(fh)}
    summary = {(r["scope"], r["alpha"]): r for r in summarize(read_rows(sweep)).to_pylist()}
    for metric in ("flip_ratio", "flip_ratio_null", "effective_tokens"):
        assert summary["vegetation", 0.3][f"{metric}_median"] == pytest.approx(float(report["vegetation"][f"{metric}_median"]))
        assert summary["vegetation", 0.3][f"{metric}_q3"] == pytest.approx(float(report["vegetation"][f"{metric}_q3"]))
    result = runner.invoke(app, ["show", str(sweep), "--width", "200"])
    assert "median [interquartile range] over images, as in the report" in result.stdout


def test_show_says_simulated_on_its_first_line_and_only_for_simulated_runs(tmp_path):
    simulated = runner.invoke(app, ["show", str(write_sweep(tmp_path / "sim")), "--width", "100"]).stdout
    real = runner.invoke(app, ["show", str(write_sweep(tmp_path / "real", simulated=False)), "--width", "100"]).stdout
    assert simulated.startswith("SIMULATED:") and "SIMULATED" not in real


def test_analyze_summary_hides_the_papers_column_on_a_simulated_run_and_labels_it_one_seed_on_a_real_one(tmp_path):
    from engine.present.summary import summary_text

    rows = read_rows(write_sweep(tmp_path / "s"))
    simulated = summary_text(rows, "t", simulated=True, paper=True, width=200)
    real = summary_text(rows, "t", simulated=False, paper=True, width=200)
    assert "34.2%" not in simulated and "left out because this run is SIMULATED" in simulated
    assert "34.2% 0.7040 729/5184 17" in real and "paper (one image, one seed)" in real and "one KMeans seed" in real
    assert "it does not define these measures" in real


def test_show_puts_the_null_control_beside_the_flip_ratio(tmp_path):
    sweep = add_synthetic_controls(write_sweep(tmp_path / "s"))
    summary = summarize(read_rows(sweep))
    table = render_summary(summary, "t", width=200)
    header = next(line for line in table.splitlines() if line.strip().startswith("scope"))
    assert header.index("flip") < header.index("null") < header.index("reseed")
    # vegetation at alpha 0.3: null = flip / 2 for images 0-2 and 2 x flip for image 3 -> 0.015, 0.03, 0.045, 0.24:
    # the median (the report's statistic) is 0.0375, the mean would be 0.0825
    (null,) = [r["flip_ratio_null_median"] for r in summary.to_pylist() if r["scope"] == "vegetation" and r["alpha"] == 0.3]
    assert null == pytest.approx(0.0375)
    veg = next(line for line in table.splitlines() if line.strip().startswith("vegetation") and " 0.3 " in line)
    assert f"{null:.1%}" in veg and "controls" in table


def test_show_csv_writes_one_row_per_image(tmp_path):
    sweep = write_sweep(tmp_path / "s", images=3)
    out = tmp_path / "images.csv"
    result = runner.invoke(app, ["show", str(sweep), "--csv", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image_id"] for r in rows] == ["img_0", "img_1", "img_2"]
    # global flip ratio at the first alpha (0.3) of image i: 0.1 * (i + 1) * 0.3
    assert [float(r["flip_ratio"]) for r in rows] == pytest.approx([0.03, 0.06, 0.09])
    assert [float(r["accuracy_encoder"]) for r in rows] == pytest.approx([0.70, 0.72, 0.74])


def test_report_and_show_find_the_sweep_one_level_down_or_say_where_they_looked(tmp_path, one_line_error):
    write_sweep(tmp_path / "demo-out" / "sweep")
    result = runner.invoke(app, ["show", str(tmp_path / "demo-out")])
    assert result.exit_code == 0 and "using the sweep in" in result.stdout
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    one_line_error(runner.invoke(app, ["report", str(tmp_path / "empty")]), "looked for run.json")


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, monkeypatch):
    import engine.run.sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.run.sweep, "run_sweep", interrupted)
    args = ["sweep", str(tmp_path), "--out", str(tmp_path / "o"), "--alpha", "0.3,0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert f"datr sweep {tmp_path} --out {tmp_path / 'o'} --alpha 0.3,0.5 --resume" in result.stderr
    assert "Traceback" not in result.output


def test_bench_encoder_says_its_memory_need_first_and_reports_each_stage():
    from bench.encoder import EncoderBenchConfig, run_encoder_bench
    from engine.sources.sam3.tiny import TINY_SIDE, build_tiny_sam3

    lines = []
    cfg = EncoderBenchConfig(random_weights=True, device="cpu", images=2, batch_size=1, image_side=TINY_SIDE,
                             model_factory=build_tiny_sam3)
    run_encoder_bench(cfg, echo=lines.append)
    assert "about 6 GB of memory" in lines[0] and "5 minutes" in lines[0]
    stages = [line.split(":")[0] for line in lines if line.startswith("stage")]
    assert stages[0] == "stage 1/3" and "stage 2/3" in stages and stages.count("stage 3/3") == 2  # one line per batch
    assert any(line.startswith("stage 1/3: built in") for line in lines)
    assert any("grounding done in" in line for line in lines)


def test_demo_says_that_it_replaces_an_earlier_demo_output(tmp_path, monkeypatch):
    import engine.data.scenes
    from engine.core.errors import DatrError

    def stop(*args, **kwargs):
        raise DatrError("stopped after the old output was handled")

    monkeypatch.setattr(engine.data.scenes, "write_scene_set", stop)
    old = tmp_path / "demo-out"
    (old / "sweep").mkdir(parents=True)
    (old / "sweep" / "old.txt").write_text("earlier run")
    result = runner.invoke(app, ["demo", "--out", str(old)])
    assert f"demo: replacing the earlier demo output in {old}" in result.stdout and "--out DIR to keep it" in result.stdout
    assert not (old / "sweep" / "old.txt").exists()
