"""The report's key findings: effects first (engine.analysis.effects), then the paper's single-seed numbers.

Per class at the report's grid point: the median effect against KMeans instability and
against the null, each with its 95% bootstrap interval, the number of images, the Holm-
adjusted p and a plain verdict; then the one-seed flip ratio with its controls, always with
its effective tokens beside it ("too few tokens" under FEW_TOKENS). The largest effect is
ranked by the effect, not by a raw flip ratio; an outlier image says where its seeds are
unstable (flip_within >= flip_between). Rows without the seed ensemble fall back to the
flip ratio against its controls, and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.analysis.effects import format_p, reach_text, significance_reach, verdict
from engine.core.choices import ENCODER
from engine.present.html import esc
from engine.present.provenance import FEW_TOKENS
from engine.present.report.rows import Reference
from engine.present.report.tables import PP, UNSTABLE, fmt_quartiles, fmt_value

OUTLIERS_SHOWN = 5


def effects_at(effects: list[dict], ref: Reference) -> dict[str, dict[str, dict]]:
    """scope -> contrast -> the effects.csv entry at the report's grid point (tested entries only)."""
    out: dict[str, dict[str, dict]] = {}
    for e in effects:
        same = all(getattr(ref, key) is None or np.isclose(e[key], getattr(ref, key)) for key in ("tau", "alpha", "d", "k"))
        if same and e["p_value"] is not None:
            out.setdefault(e["scope"], {})[e["contrast"]] = e
    return out


def effect_text(entry: dict | None, against: str | None = None) -> str:
    """"+1.2 pp [-0.3, +2.5] vs KMeans instability (p_adj 0.04)" (without "vs ..." when against is None)."""
    vs = f" vs {against}" if against else ""
    if entry is None:
        return f"no test{vs}"
    low, high = (fmt_value(PP, entry[k]).removesuffix(" pp") for k in ("ci_low", "ci_high"))
    return f"{fmt_value(PP, entry['median_effect'])} [{low}, {high}]{vs} (p_adj {format_p(entry['p_adjusted'])})"


def tokens_text(entry: dict) -> str:
    tokens = entry.get("effective_tokens_median")
    if tokens is None:
        return "no effective token"
    few = f" — too few tokens (under {FEW_TOKENS}): one token moves a share by 2% or more" if tokens < FEW_TOKENS else ""
    return f"{tokens:.0f} effective tokens per image{few}"


def single_seed_text(entry: dict) -> str:
    """The paper's flip ratio (one seed) with its single-draw controls."""
    text = ("one seed's flip ratio "
            + fmt_quartiles("{:.1%}", entry["flip_ratio_median"], entry["flip_ratio_q1"], entry["flip_ratio_q3"]))
    controls = [f"{name} {entry[f'{key}_median']:.1%}" for key, name in (("flip_ratio_null", "null"),
                                                                          ("flip_ratio_reseed", "reseed"))
                if entry.get(f"{key}_median") is not None]
    return text + (f" (its controls: {', '.join(controls)})" if controls else "")


def class_line(entry: dict, tests: dict[str, dict] | None) -> str:
    """One class: its effects, verdict and images first, then tokens, the one-seed flip ratio and the mask IoU."""
    parts = []
    if tests:
        n = (tests.get("instability") or tests.get("null"))["n_images"]
        parts.append(f"{effect_text(tests.get('instability'), 'KMeans instability')}, "
                     f"{effect_text(tests.get('null'), 'the null')} over {n} images: "
                     f"<b>{esc(verdict(tests.get('instability'), tests.get('null')))}</b>")
    parts.append(tokens_text(entry))
    if entry.get("flip_ratio_median") is not None:
        parts.append(single_seed_text(entry))
    if entry.get("iou_median") is not None:
        parts.append(f"mask IoU {entry['iou_median']:.3f}")
    return "; ".join(parts)


def largest_effect(summary: list[dict], tested: dict[str, dict[str, dict]]) -> str | None:
    """The class with the largest median effect against instability, with its interval and verdict."""
    ranked = sorted((t["instability"]["median_effect"], scope) for scope, t in tested.items() if "instability" in t)
    if not ranked:
        return None
    _, scope = ranked[-1]
    tests = tested[scope]
    tokens = next((e.get("effective_tokens_median") for e in summary if e["scope"] == scope), None)
    few = " (too few tokens to read)" if tokens is not None and tokens < FEW_TOKENS else ""
    significant = [s for s, t in tested.items() if t.get("instability", {}).get("significant")]
    note = "" if significant else " No class's effect beyond KMeans instability is significant."
    return (f"Largest effect (ranked by the median effect against KMeans instability): <b>{esc(scope)}</b>{few}, "
            f"{effect_text(tests['instability'], 'KMeans instability')}, {effect_text(tests.get('null'), 'the null')}: "
            f"{esc(verdict(tests['instability'], tests.get('null')))}.{note}")


def largest_flip_fallback(datr: list[dict]) -> str | None:
    """Without the seed ensemble: the flip ratio furthest above its null, said to be a single seed's."""
    gaps = [(e["flip_ratio_median"] - (e.get("flip_ratio_null_median") or 0.0), e) for e in datr
            if e.get("flip_ratio_median") is not None]
    if not gaps:
        return None
    gap, top = max(gaps, key=lambda t: t[0])
    against = f"above its null control by {gap:.1%}" if top.get("flip_ratio_null_median") is not None else "(no null control)"
    return (f"Largest gap (these rows have no seed ensemble, so no effect test; one seed's numbers): "
            f"<b>{esc(top['scope'])}</b>, flip ratio {top['flip_ratio_median']:.1%} {esc(against)}.")


def outlier_images(images: list[dict], key: str = "class_flip_max") -> list[dict]:
    """Images whose value lies above Q3 + 1.5 IQR of all images (largest first)."""
    values = np.array([np.nan if r[key] is None else r[key] for r in images], dtype=np.float64)
    ok = ~np.isnan(values)
    if ok.sum() < 4:
        return []
    q1, q3 = np.percentile(values[ok], (25, 75))
    fence = q3 + 1.5 * (q3 - q1)
    return sorted((r for r, v in zip(images, values, strict=True) if v > fence), key=lambda r: -r[key])


def outliers_text(sweep_dir: Path, images: list[dict], link) -> str | None:
    outliers = outlier_images(images)
    if not outliers:
        return None
    names = []
    for r in outliers[:OUTLIERS_SHOWN]:
        href = link(sweep_dir, r["image_id"])
        name = f"<a href=\"{esc(href)}\">{esc(r['image_id'])}</a>" if href else esc(r["image_id"])
        tokens = "" if r.get("class_flip_max_tokens") is None else f" on {r['class_flip_max_tokens']} tokens"
        unstable = ("; <b>unstable</b>: its encoder seeds disagree at least as much (flip_within ≥ flip_between)"
                    if r.get("class_flip_max_seeds") == UNSTABLE else "")
        names.append(f"{name} ({esc(r['class_flip_max_scope'])} {r['class_flip_max']:.1%}{tokens}{unstable})")
    return (f"Outliers (largest class flip ratio, one seed's, above Q3 + 1.5 IQR): {', '.join(names)}"
            + (f" and {len(outliers) - OUTLIERS_SHOWN} more" if len(outliers) > OUTLIERS_SHOWN else "")
            + "; see the <a href=\"images_by_class_flip_max.html\">per-image table</a>.")


def key_findings_html(sweep_dir: Path, summary: list[dict], images: list[dict], errors: list[dict], what_ran: str,
                      effects: list[dict], ref: Reference, link) -> str:
    """The key findings list: what ran, each class (effects first), what to look at."""
    items = [f"<li><b>What ran.</b> {esc(what_ran)}</li>"]
    datr = [e for e in summary if e["scope"] != ENCODER]
    tested = effects_at(effects, ref)
    lines = [f"<li>{esc(e['scope'])}: {class_line(e, tested.get(e['scope']))}</li>" for e in datr
             if e.get("flip_ratio_median") is not None or e["scope"] in tested]
    if lines:
        how = ("effects: median over images of the per-image effect, [95% bootstrap interval], Holm-adjusted p; "
               "then medians [interquartile range]" if tested else "median [interquartile range] over images")
        items.append(f"<li><b>Per class</b> ({how}; see <a href=\"effects.csv\">effects.csv</a>)<ul>"
                     + "".join(lines) + "</ul></li>")
    look = [x for x in (largest_effect(summary, tested) if tested else largest_flip_fallback(datr),
                        outliers_text(sweep_dir, images, link)) if x]
    if (reach := significance_reach(effects)) is not None:
        look.insert(0, f"<b>{esc(reach_text(reach))}</b>")
    empty = [e["scope"] for e in datr if e.get("flip_ratio_median") is None]
    if empty:
        look.append(f"No effective token (so no flip ratio) in any image for: {esc(', '.join(empty))}.")
    look.append(f"<a href=\"#errors\">{len(errors)} image(s) failed</a> and have no rows." if errors
                else "No image failed.")
    items.append("<li><b>What to look at.</b><ul>" + "".join(f"<li>{x}</li>" for x in look) + "</ul></li>")
    return "<ul class=\"findings\">" + "".join(items) + "</ul>"
