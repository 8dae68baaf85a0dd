"""Dataset statistics of the decoder effects (README "Effects"; docs/DESIGN.md "Seed ensembles and effects").

From the rows of a sweep, one test per scope x grid point (tau, alpha, d, k) x contrast:

    contrast     per-image value          H0
    instability  effect_instability       the DATR partitions are no farther from the encoder's than
                                          the encoder's own seeds are from each other
    null         effect_null              the decoder's displacement moves as many tokens as a random
                                          displacement of the same size (the permutation null)

    n_images       images with a value (the scope had effective tokens)
    median_effect  the median of the per-image values
    ci_low/high    95% percentile bootstrap of that median over images (scipy.stats.bootstrap,
                   9999 resamples, seeded from the seed and the test's own key)
    p_value        two-sided Wilcoxon signed-rank test of the per-image values against 0
                   (scipy.stats.wilcoxon; zeros dropped; 1 where every value is 0)
    p_adjusted     Holm's step-down correction over every test of the table
    significant    p_adjusted < 0.05

Images are the unit: seeds only make each image's value precise (its standard error is in the
rows), so the tests ask whether the effect holds across images.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import warnings
from pathlib import Path

import numpy as np

from engine.analysis.layout import ENCODER

EFFECT_FIELDS = ("scope", "tau", "alpha", "d", "k", "contrast", "n_images", "median_effect", "ci_low", "ci_high",
                 "p_value", "p_adjusted", "significant")
CONTRASTS = {"instability": "effect_instability", "null": "effect_null"}  # contrast -> row column
ALPHA_LEVEL = 0.05
BOOTSTRAP_RESAMPLES = 9999
GRID = ("tau", "alpha", "d", "k")


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): p_(i) * (m - i + 1), made monotone, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def wilcoxon_p(values: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of values against 0; 1.0 when every value is 0."""
    from scipy.stats import wilcoxon

    if not np.any(values != 0):
        return 1.0
    with warnings.catch_warnings():  # scipy notes ties and small samples; the p-value is what we report
        warnings.simplefilter("ignore")
        return float(wilcoxon(values, alternative="two-sided").pvalue)


PERMUTATION_UP_TO = 13  # scipy tests tied values of at most this many images by all 2^n sign flips


@functools.cache
def smallest_p(n: int) -> float:
    """The smallest two-sided p that wilcoxon_p gives n nonzero values: all of one sign, distinct or all tied.

    Distinct values take the exact null distribution (2 / 2^n); tied ones all 2^n sign flips up to
    PERMUTATION_UP_TO images (again 2 / 2^n: the observed signs and their mirror image) and the
    tie-corrected normal approximation beyond, where all-equal values give its smallest p.
    """
    if n < 1:
        return 1.0
    tied = 2.0 / 2**n if n <= PERMUTATION_UP_TO else wilcoxon_p(np.ones(n))
    return min(wilcoxon_p(np.arange(1.0, n + 1)), tied)


def significance_reach(effects: list[dict], most_images: int = 200) -> dict | None:
    """None where a test of the table can reach p_adjusted < 0.05; otherwise why none can.

    Holm's correction multiplies the smallest p by the number of tests m, and no test with at most
    n images has a p below smallest_p(n): where m * smallest_p(n) >= 0.05 for the largest n of the
    table, no row can be significant whatever the data. Returns images (that n), tests (m),
    smallest_p, floor (m * smallest_p) and images_needed (the least n at which one row could be).
    """
    tested = [e for e in effects if e["p_value"] is not None]
    if not tested:
        return None
    tests, images = len(tested), max(e["n_images"] for e in tested)
    floor = tests * smallest_p(images)
    if floor < ALPHA_LEVEL:
        return None
    needed = next((n for n in range(images + 1, most_images + 1) if tests * smallest_p(n) < ALPHA_LEVEL), None)
    return {"images": images, "tests": tests, "smallest_p": smallest_p(images), "floor": min(1.0, floor),
            "images_needed": needed}


def reach_text(reach: dict) -> str:
    """The sentence that says why no row can be significant (for the report and the terminal)."""
    need = (f"analyse at least {reach['images_needed']} images, or test fewer grid points"
            if reach["images_needed"] else "test fewer grid points")
    return (f"With {reach['images']} images no row can be significant: the signed-rank test's p is at least "
            f"{reach['smallest_p']:.2g} there, and Holm's correction over {reach['tests']} tests lifts the smallest "
            f"to {reach['floor']:.2g} (>= {ALPHA_LEVEL}); {need}.")


def bootstrap_median_ci(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the median over the values (resampling images)."""
    from scipy.stats import bootstrap

    if len(values) < 2 or np.all(values == values[0]):
        return float(np.median(values)), float(np.median(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((values,), np.median, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                        method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_seed(seed: int, key: tuple) -> int:
    """A bootstrap seed of its own per test, so adding a test changes no other's interval."""
    return int.from_bytes(hashlib.blake2b(repr((int(seed), key)).encode(), digest_size=8).digest(), "little")


def dataset_effects(rows, seed: int = 0) -> list[dict]:
    """The effects table of a sweep's rows (engine.present.report.rows.Rows or a dict of numpy columns).

    One dict per scope x grid point x contrast with EFFECT_FIELDS, in scope order of first
    appearance, then grid order, instability before null; rows without a value (no effective
    token, or no controls for `null`) are left out of that test, and a test with no image has
    p_value null and stays out of Holm's correction.
    """
    cols = rows.columns if hasattr(rows, "columns") else rows
    scope = np.asarray(cols["scope"], dtype=object)
    keys = {}
    for i in np.nonzero(scope != ENCODER)[0]:
        key = (scope[i], *(float(cols[g][i]) for g in GRID))
        keys.setdefault(key, []).append(i)
    out = []
    for key, idx in keys.items():
        for contrast, column in CONTRASTS.items():
            if column not in cols:
                continue
            values = np.asarray(cols[column], dtype=np.float64)[idx]
            values = values[np.isfinite(values)]
            out.append(one_test(key, contrast, values, seed))
    tested = [e for e in out if e["p_value"] is not None]
    for entry, adjusted in zip(tested, holm([e["p_value"] for e in tested]), strict=True):
        entry["p_adjusted"] = adjusted
        entry["significant"] = adjusted < ALPHA_LEVEL
    return out


def one_test(key: tuple, contrast: str, values: np.ndarray, seed: int) -> dict:
    scope, tau, alpha, d, k = key
    entry = {"scope": scope, "tau": tau, "alpha": alpha, "d": int(d), "k": int(k), "contrast": contrast,
             "n_images": len(values), "median_effect": None, "ci_low": None, "ci_high": None, "p_value": None,
             "p_adjusted": None, "significant": False}
    if len(values):
        low, high = bootstrap_median_ci(values, bootstrap_seed(seed, (*key, contrast)))
        entry.update(median_effect=float(np.median(values)), ci_low=low, ci_high=high, p_value=wilcoxon_p(values))
    return entry


def write_effects_csv(path: Path, effects: list[dict]) -> Path:
    """effects.csv: the header is exactly EFFECT_FIELDS, on the first line, so that scripts read it as it
    is (no marker line: whether the run was simulated is said in run.json and on every report page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EFFECT_FIELDS)
        writer.writeheader()
        for entry in effects:
            writer.writerow({name: ("" if entry[name] is None else entry[name]) for name in EFFECT_FIELDS})
    return path


def verdict(instability: dict | None, null: dict | None) -> str:
    """A plain verdict of one scope at one grid point from its two tests."""
    if instability is None or instability["p_value"] is None:
        return "not measured (no effective tokens)"
    sig_i = instability["significant"]
    sig_n = null is not None and null["significant"]
    up_i = (instability["median_effect"] or 0) > 0
    up_n = null is not None and (null["median_effect"] or 0) > 0
    if not sig_i:
        if sig_n and not up_n:
            return "no effect beyond KMeans instability; fewer flips than a random displacement of the same size"
        return "no effect beyond KMeans instability"
    if not up_i:
        return "fewer flips than the encoder's own seeds give (the decoder steadies the clustering)"
    if null is None or null["p_value"] is None:
        return "an effect beyond KMeans instability (no null control in these rows)"
    if sig_n and up_n:
        return "an effect beyond both"
    if sig_n:
        return "an effect beyond KMeans instability, but fewer flips than a random displacement of the same size"
    return "an effect beyond KMeans instability, not beyond a random displacement of the same size"


def format_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
