"""The dataset statistics of the effects against scipy on the same numbers, and Holm's correction by hand."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import bootstrap, wilcoxon

from engine.analysis.effects import (
    ALPHA_LEVEL,
    EFFECT_FIELDS,
    bootstrap_seed,
    dataset_effects,
    holm,
    significance_reach,
    smallest_p,
    verdict,
    write_effects_csv,
)
from engine.present.effects import render_effects


def fake_rows(images: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of `images` images: an encoder row and two scopes at two alphas each."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {name: [] for name in ("image_id", "scope", "tau", "alpha", "d", "k",
                                                   "effect_instability", "effect_null")}
    for i in range(images):
        for scope, alpha in (("encoder", np.nan), ("road", 0.3), ("road", 0.5), ("vehicle", 0.3), ("vehicle", 0.5)):
            cols["image_id"].append(f"im{i}")
            cols["scope"].append(scope)
            cols["tau"].append(np.nan if scope == "encoder" else 0.5)
            cols["alpha"].append(alpha)
            cols["d"].append(32.0)
            cols["k"].append(5.0)
            shift = 0.05 if scope == "road" else 0.0
            cols["effect_instability"].append(np.nan if scope == "encoder" else shift + rng.normal(0, 0.01))
            null = np.nan if scope == "encoder" or (scope == "vehicle" and i == 0) else rng.normal(0, 0.01)
            cols["effect_null"].append(null)
    return {k: np.array(v, dtype=object if k in ("image_id", "scope") else np.float64) for k, v in cols.items()}


def test_each_test_matches_scipy_on_the_same_numbers():
    rows = fake_rows()
    effects = dataset_effects(rows, seed=7)
    assert len(effects) == 2 * 2 * 2  # scopes x alphas x contrasts; the encoder has no test
    for entry in effects:
        column = "effect_instability" if entry["contrast"] == "instability" else "effect_null"
        keep = (rows["scope"] == entry["scope"]) & (rows["alpha"] == entry["alpha"])
        values = rows[column][keep]
        values = values[np.isfinite(values)]
        assert entry["n_images"] == len(values) == (11 if entry["scope"] == "vehicle" and column == "effect_null" else 12)
        assert entry["median_effect"] == pytest.approx(np.median(values), abs=0)
        assert entry["p_value"] == pytest.approx(wilcoxon(values, alternative="two-sided").pvalue, rel=1e-12)
        key = (entry["scope"], entry["tau"], entry["alpha"], entry["d"], entry["k"], entry["contrast"])
        ci = bootstrap((values,), np.median, confidence_level=0.95, n_resamples=9999, method="percentile",
                       random_state=np.random.default_rng(bootstrap_seed(7, key))).confidence_interval
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-15)
        assert entry["ci_low"] <= entry["median_effect"] <= entry["ci_high"]
    adjusted = holm([e["p_value"] for e in effects])
    assert [e["p_adjusted"] for e in effects] == adjusted
    assert [e["significant"] for e in effects] == [p < 0.05 for p in adjusted]
    road = [e for e in effects if e["scope"] == "road" and e["contrast"] == "instability"]
    assert road and all(e["significant"] for e in road)  # a planted shift of 5 sd is found
    assert not any(e["significant"] for e in effects if e["scope"] == "vehicle")


def test_intervals_are_seeded_per_test():
    a, b = (dataset_effects(fake_rows(), seed=3) for _ in range(2))
    assert a == b
    keys = {bootstrap_seed(3, (e["scope"], e["tau"], e["alpha"], e["d"], e["k"], e["contrast"])) for e in a}
    assert len(keys) == len(a)  # each test resamples with its own seed


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04, made monotone -> 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_all_zero_effects_are_never_significant():
    rows = fake_rows()
    rows["effect_instability"] = np.where(np.isfinite(rows["effect_instability"]), 0.0, np.nan)
    rows["effect_null"] = np.where(np.isfinite(rows["effect_null"]), 0.0, np.nan)
    effects = dataset_effects(rows)
    assert all(e["p_value"] == 1.0 and e["median_effect"] == 0 and e["ci_low"] == e["ci_high"] == 0 for e in effects)
    assert not any(e["significant"] for e in effects)


def test_effects_csv_has_exactly_the_contract_columns(tmp_path):
    effects = dataset_effects(fake_rows())
    path = write_effects_csv(tmp_path / "effects.csv", effects)
    lines = path.read_text().splitlines()
    header = next(csv.reader([lines[0]]))
    assert tuple(header) == EFFECT_FIELDS == ("scope", "tau", "alpha", "d", "k", "contrast", "n_images", "median_effect",
                                              "ci_low", "ci_high", "p_value", "p_adjusted", "significant")
    assert len(lines) == 1 + len(effects)
    read = list(csv.DictReader(path.open()))  # a plain reader gets the contract's columns and every row
    assert tuple(read[0]) == EFFECT_FIELDS and len(read) == len(effects)


def test_verdicts_read_both_contrasts():
    def e(p, med):
        return {"p_value": p, "significant": p < 0.05, "median_effect": med}

    assert verdict(e(0.5, 0.01), e(0.5, 0.0)) == "no effect beyond KMeans instability"
    assert verdict(e(0.001, 0.1), e(0.001, 0.05)) == "an effect beyond both"
    assert verdict(e(0.001, 0.1), e(0.5, 0.0)).startswith("an effect beyond KMeans instability, not beyond")
    assert verdict(None, None).startswith("not measured")


def strongest_rows(images: int, scopes: int) -> dict[str, np.ndarray]:
    """The strongest data a table can hold: every image's effect positive and distinct, in `scopes` scopes at
    one grid point (2 * scopes tests, each with p = 2 / 2^images)."""
    n = images * scopes
    return {"image_id": np.array([f"im{i % images}" for i in range(n)], dtype=object),
            "scope": np.array([f"scope{i // images}" for i in range(n)], dtype=object),
            "tau": np.full(n, 0.5), "alpha": np.full(n, 0.3), "d": np.full(n, 32.0), "k": np.full(n, 5.0),
            "effect_instability": np.tile(np.arange(1.0, images + 1), scopes) / 100,
            "effect_null": np.tile(np.arange(1.0, images + 1), scopes) / 50}


@pytest.mark.parametrize("images", [3, 5, 8, 14, 20, 40])
def test_the_smallest_p_bounds_every_sign_and_tie_pattern_and_is_reached(images):
    if images <= 13:
        assert smallest_p(images) == pytest.approx(2.0 / 2**images, rel=1e-12)  # both tails of the exact null's extreme
    assert smallest_p(images) in {wilcoxon(np.arange(1.0, images + 1)).pvalue, wilcoxon(np.ones(images)).pvalue}
    rng = np.random.default_rng(images)
    for _ in range(40 if images <= 13 else 200):  # ties, signs, magnitudes: none gives a smaller p
        values = rng.integers(1, images + 1, size=images).astype(float) * rng.choice([-1.0, 1.0], p=[0.2, 0.8], size=images)
        assert wilcoxon(values).pvalue >= smallest_p(images) * (1 - 1e-12)


@pytest.mark.parametrize("scopes", [1, 6, 12])
def test_the_table_says_no_row_can_be_significant_exactly_where_the_strongest_data_are_not(scopes):
    tests = 2 * scopes
    needed = next(n for n in range(2, 60) if tests * 2.0 / 2**n < ALPHA_LEVEL)  # Holm: the smallest p times m
    for images in (needed - 1, needed):
        effects = dataset_effects(strongest_rows(images, scopes))
        assert len(effects) == tests and all(e["n_images"] == images for e in effects)
        reach = significance_reach(effects)
        if images < needed:
            assert not any(e["significant"] for e in effects)
            assert reach is not None and reach["images_needed"] == needed and reach["tests"] == tests
            assert reach["floor"] >= ALPHA_LEVEL and reach["floor"] == pytest.approx(tests * 2.0 / 2**images)
            text = render_effects(effects, width=100)
            assert f"With {images} images no row can be significant" in text and f"at least {needed} images" in text
        else:
            assert all(e["significant"] for e in effects) and reach is None
            assert "no row can be significant" not in render_effects(effects, width=100)
