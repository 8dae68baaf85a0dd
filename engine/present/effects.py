"""The effects table in the terminal (`datr show`), the same numbers as DIR/report/effects.csv."""

from __future__ import annotations

import shutil
import textwrap

from engine.analysis.effects import format_p, reach_text, significance_reach, verdict

EFFECTS_NOTE = ("effect = per-image flip_between minus flip_within (vs instability) or minus flip_null_between (vs null), "
                "median over images [95% bootstrap CI]; p: Wilcoxon signed-rank, Holm-adjusted over {tests} tests; "
                "* = significant (p < 0.05)")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def effect_cell(entry: dict | None, with_ci: bool) -> str:
    if entry is None or entry["p_value"] is None:
        return "-"
    ci = f" [{pct(entry['ci_low'])}, {pct(entry['ci_high'])}]" if with_ci else ""
    star = " *" if entry["significant"] else ""
    return f"{pct(entry['median_effect'])}%{ci} p={format_p(entry['p_adjusted'])}{star}"


def render_effects(effects: list[dict], width: int | None = None) -> str:
    """One block per grid point: scope, n images, the two contrasts and the verdict; whole columns drop to fit."""
    if not effects:
        return "effects: no DATR rows with effective tokens\n"
    width = width or shutil.get_terminal_size((100, 24)).columns
    tests = sum(e["p_value"] is not None for e in effects)
    lines = textwrap.wrap("effects (seed ensembles): " + EFFECTS_NOTE.format(tests=tests), width=max(40, width))
    if (reach := significance_reach(effects)) is not None:
        lines += textwrap.wrap(reach_text(reach), width=max(40, width))
    points: dict[tuple, dict[str, dict[str, dict]]] = {}
    for e in effects:
        points.setdefault((e["tau"], e["alpha"], e["d"], e["k"]), {}).setdefault(e["scope"], {})[e["contrast"]] = e
    for (tau, alpha, d, k), scopes in points.items():
        lines.append(f"  tau={tau:g} alpha={alpha:g} d={d} k={k}")
        for with_ci, with_verdict in ((True, True), (True, False), (False, False)):
            block = [point_line(scope, c.get("instability"), c.get("null"), with_ci, with_verdict)
                     for scope, c in scopes.items()]
            header = point_line(None, None, None, with_ci, with_verdict)
            if max(len(line) for line in [header, *block]) <= width or not (with_ci or with_verdict):
                lines += [header, *block]
                break
    return "\n".join(lines) + "\n"


def point_line(scope: str | None, instability: dict | None, null: dict | None, with_ci: bool, with_verdict: bool) -> str:
    span = 31 if with_ci else 16
    if scope is None:
        cells = ["    scope", "images", "vs instability".ljust(span), "vs null".ljust(span)] + (["verdict"] if with_verdict else [])
        return f"{cells[0]:<16}{cells[1]:>6}  " + "  ".join(cells[2:])
    n = "-" if instability is None else str(instability["n_images"])
    cells = [effect_cell(instability, with_ci).ljust(span), effect_cell(null, with_ci).ljust(span)]
    if with_verdict:
        cells.append(verdict(instability, null))
    return f"    {scope[:12]:<12}{n:>6}  " + "  ".join(cells)
