"""The effect statistics end to end, through the CLI: nothing at alpha = 0, a planted effect found against
both contrasts, and the same verdicts from another KMeans seed (run.toml's [simulated] table plants it)."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from cli import app
from engine.analysis.effects import EFFECT_FIELDS, dataset_effects
from engine.data.scenes import write_scene_set
from engine.present.report.rows import Rows
from engine.run.store import read_rows

runner = CliRunner()
QUICK = "batch_size = 4\n[data]\nnum_workers = 0\n[analysis]\nn_init = 3\nseeds = 5\ndims = [16]\n"


def read_effects(path) -> list[dict]:
    rows = list(csv.DictReader(path.read_text().splitlines()))  # read as any script reads it
    assert rows and tuple(rows[0]) == EFFECT_FIELDS
    return rows


def sweep(scenes, out, toml_text: str, *options: str) -> None:
    toml = out.parent / f"{out.name}.toml"
    toml.write_text(toml_text)
    result = runner.invoke(app, ["sweep", str(scenes), "--out", str(out), "--config", str(toml), "--no-progress", *options])
    assert result.exit_code == 0, result.output
    assert "effects (seed ensembles)" in result.stdout  # the summary prints the effects table too


def sweep_and_report(scenes, out, toml_text: str, *options: str) -> list[dict]:
    sweep(scenes, out, toml_text, *options)
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    return read_effects(out / "report" / "effects.csv")


def test_alpha_zero_gives_exactly_zero_effects_and_nothing_significant(tmp_path):
    scenes = write_scene_set(tmp_path / "scenes", 4, size=(400, 300), seed=3)
    effects = sweep_and_report(scenes, tmp_path / "zero", QUICK, "--alpha", "0")
    assert len(effects) == 2 * 6  # 6 scopes x 2 contrasts at one grid point
    for row in effects:
        assert float(row["median_effect"]) == 0 and float(row["ci_low"]) == 0 and float(row["ci_high"]) == 0
        assert float(row["p_value"]) == 1 and row["significant"] == "False"
    # 4 images and 12 tests: Holm lifts the smallest possible p (2 / 2^4) to 1.5, so the report says no row can
    # be significant, and how many images could (the least n with 12 * 2 / 2^n < 0.05)
    needed = next(n for n in range(5, 30) if len(effects) * 2.0 / 2**n < 0.05)
    html = (tmp_path / "zero" / "report" / "index.html").read_text()
    assert "With 4 images no row can be significant" in html and f"at least {needed} images" in html
    rows = read_rows(tmp_path / "zero").to_pylist()
    measured = [r for r in rows if r["effective_tokens"]]
    assert measured and all(r["effect_instability"] == 0 and r["effect_null"] == 0 for r in measured)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One simulated dataset of 12 images with the effect planted in vegetation, swept at --seed 0 and 7."""
    root = tmp_path_factory.mktemp("planted")
    scenes = write_scene_set(root / "scenes", 12, size=(400, 300), seed=1000)
    toml = QUICK + "[simulated]\nseed = 0\nplanted_effect = 1.0\nplanted_class = 0\n"
    out = {}
    for seed in (0, 7):  # effects.csv's numbers (the report's own function, without drawing the report)
        sweep(scenes, root / f"seed{seed}", toml, "--seed", str(seed))
        effects = dataset_effects(Rows.from_table(read_rows(root / f"seed{seed}")))
        out[seed] = [{k: str(v) if isinstance(v, bool) else v for k, v in e.items()} for e in effects]
    return out


def test_a_planted_effect_is_significant_against_both_contrasts(planted):
    for seed, effects in planted.items():
        vegetation = {row["contrast"]: row for row in effects if row["scope"] == "vegetation"}
        for contrast in ("instability", "null"):
            row = vegetation[contrast]
            assert row["significant"] == "True", (seed, contrast, row)
            assert float(row["ci_low"]) > 0 and float(row["median_effect"]) > 0.05, (seed, row)
        assert int(vegetation["null"]["n_images"]) == 12


def test_another_kmeans_seed_gives_the_same_verdicts(planted):
    def verdicts(effects):
        return {(row["scope"], row["contrast"]): row["significant"] for row in effects}

    assert verdicts(planted[0]) == verdicts(planted[7])
    assert [row["median_effect"] for row in planted[0]] != [row["median_effect"] for row in planted[7]]  # other draws
