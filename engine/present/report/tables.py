"""The report's tables: the per-class summary in the paper's form (HTML, CSV, LaTeX) and the grid means."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from engine.core.choices import ENCODER, GLOBAL, RESERVED_SCOPES
from engine.present.paper import PaperScope, paper_scope
from engine.present.report.rows import Reference, Rows, point_mask

# the page's tables leave these to the CSVs (the effects have their own section; the processed null is a detail)
PAGE_LEFT_OUT = ("effect_instability", "effect_null", "flip_ratio_null_processed")
TABLE_COLUMNS = (
    ("kept_queries", "masks", "{:.1f}"), ("effective_tokens", "effective tokens", "{:.0f}"),
    ("flip_ratio", "flip ratio", "{:.1%}"), ("flip_ratio_null", "null", "{:.1%}"), ("flip_ratio_reseed", "reseed", "{:.1%}"),
    ("flip_ratio_processed", "flip (processed)", "{:.1%}"), ("flip_ratio_null_processed", "null (processed)", "{:.1%}"),
    ("effect_instability", "effect vs instability", "pp"), ("effect_null", "effect vs null", "pp"),
    ("cos_distance", "cos distance", "{:.4f}"), ("datr_shift", "DATR shift", "{:.4f}"), ("iou", "mask IoU", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"), ("nmi", "NMI", "{:.3f}"), ("ari", "ARI", "{:.3f}"),
)


def summary_table(rows: Rows, ref: Reference, scopes) -> list[dict]:
    """One row per scope at the reference point: median, quartiles, mean, std and count of each metric over images.

    Also `flip_above_null`: the share of images whose flip ratio exceeds its null control (None without controls),
    and `paper_*`: the paper's single-image numbers for the scope (None where it reports none).
    """
    table = []
    for scope, cid in scopes:
        keep = rows.select(scope=scope) & point_mask(rows, ref, tau=scope != ENCODER, alpha=scope != ENCODER)
        entry = {"scope": scope, "class_id": cid, "images": int(len(set(rows["image_id"][keep].tolist())))}
        for metric, _, _ in TABLE_COLUMNS:
            data = rows[metric][keep]
            data = data[~np.isnan(data)]
            q1, median, q3 = quartiles(data)
            entry.update({f"{metric}_median": median, f"{metric}_q1": q1, f"{metric}_q3": q3})
            entry[f"{metric}_mean"] = float(data.mean()) if data.size else None
            entry[f"{metric}_std"] = float(data.std(ddof=1)) if data.size > 1 else None
            entry[f"{metric}_n"] = int(data.size)
        paper = paper_scope(scope)
        entry.update({f"paper_{name}": None if paper is None else getattr(paper, name) for name in PaperScope._fields})
        flip, null = rows["flip_ratio"][keep], rows["flip_ratio_null"][keep]
        both = ~(np.isnan(flip) | np.isnan(null))
        entry["flip_above_null"] = float((flip[both] > null[both]).mean()) if both.any() else None
        entry["flip_above_null_n"] = int(both.sum())
        n_tok = rows["n_tokens"][keep]
        entry["n_tokens"] = int(np.nanmax(n_tok)) if n_tok.size and not np.isnan(n_tok).all() else None
        table.append(entry)
    return table


def quartiles(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(Q1, median, Q3) of the values that are not NaN (numpy's linear interpolation); Nones when there is none.

    The one statistic of the report's tables and of the terminal summary."""
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if not data.size:
        return None, None, None
    q1, median, q3 = np.percentile(data, (25, 50, 75)).tolist()
    return q1, median, q3


def grid_table(rows: Rows, scopes) -> list[dict]:
    """Means at every (scope, tau, alpha, d, k) present."""
    keys = np.array([f"{s}|{t}|{a}|{d}|{k}" for s, t, a, d, k in
                     zip(rows["scope"], rows["tau"], rows["alpha"], rows["d"], rows["k"], strict=True)], dtype=object)
    rank = {s: i for i, (s, _) in enumerate(scopes)}
    out = []
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        scope, tau, alpha, d, k = key.split("|")
        entry = {"scope": scope, "tau": _num(tau), "alpha": _num(alpha), "d": int(float(d)), "k": int(float(k)),
                 "images": int(len(set(rows["image_id"][sel].tolist())))}
        for metric, _, _ in TABLE_COLUMNS:
            data = rows[metric][sel]
            data = data[~np.isnan(data)]
            entry[metric] = float(data.mean()) if data.size else None
        out.append(entry)
    out.sort(key=lambda e: (rank.get(e["scope"], 99), e["tau"] or -1, e["alpha"] or -1, e["d"], e["k"]))
    return out


def _num(text: str) -> float | None:
    value = float(text)
    return None if np.isnan(value) else value


PP = "pp"  # the format of a difference of two shares: percentage points, signed ("+1.2 pp")


def fmt_value(fmt: str, value) -> str:
    """value in a column's format: a str.format pattern, or PP for percentage points."""
    if fmt == PP:
        return f"{100 * value:+.1f} pp"
    return fmt.format(value)


def fmt_quartiles(fmt: str, median, q1=None, q3=None) -> str:
    """"34.2% [20.1–40.3%]": the median and, over more than one value, the interquartile range."""
    if median is None:
        return "—"
    text = fmt_value(fmt, median)
    if q1 is not None and q3 is not None and q3 > q1:
        unit = " pp" if fmt == PP else ""
        text += f" [{fmt_value(fmt, q1).rstrip('%').removesuffix(unit)}–{fmt_value(fmt, q3)}]"
    return text


def fmt_cell(fmt: str, mean, std=None) -> str:
    if mean is None:
        return "—"
    text = fmt_value(fmt, mean)
    if std is not None:
        text += " ± " + fmt_value(fmt, std).rstrip("%").lstrip("+") + ("%" if fmt.endswith("%}") else "")
    return text


def write_csv(path: Path, table: list[dict], *, simulated: bool) -> None:
    """The table as CSV with a first column `source`: SIMULATED on every row of a simulated run, sam3 otherwise."""
    from engine.present.provenance import csv_source

    with path.open("w", newline="") as fh:
        if not table:
            return
        writer = csv.DictWriter(fh, fieldnames=["source", *table[0]])
        writer.writeheader()
        writer.writerows({"source": csv_source(simulated), **row} for row in table)


def write_latex(path: Path, table: list[dict], ref: Reference, *, simulated: bool) -> None:
    """The per-class table as a booktabs tabular (median [interquartile range] over images)."""
    from engine.present.provenance import SIMULATED_LINE

    cols = [c for c in TABLE_COLUMNS if any(e[f"{c[0]}_mean"] is not None for e in table)]
    lines = ([f"% {SIMULATED_LINE}"] if simulated else []) + [
        f"% sam3-datr per-class summary at {ref.label()}; median [interquartile range] over images",
        "\\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", "\\toprule",
        " & ".join(["scope", "images"] + [c[1] for c in cols]) + " \\\\", "\\midrule"]
    for e in table:
        cells = [e["scope"], str(e["images"])]
        for metric, _, fmt in cols:
            cells.append(fmt_quartiles(fmt, e[f"{metric}_median"], e[f"{metric}_q1"], e[f"{metric}_q3"])
                         .replace("%", "\\%").replace("–", "--").replace("—", "--"))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")



# (key, header, format, sort by it in the report)
IMAGE_COLUMNS = (
    ("effective_tokens", "effective tokens (global)", "{:.0f}", True),
    ("flip_ratio", "flip ratio (global)", "{:.1%}", True),
    ("flip_ratio_null", "null (global)", "{:.1%}", False),
    ("class_flip_mean", "flip ratio (mean over classes)", "{:.1%}", True),
    ("class_flip_max", "largest class flip", "{:.1%}", True),
    ("class_flip_max_scope", "in class", "{}", False),
    ("class_flip_max_tokens", "its effective tokens", "{:.0f}", False),
    ("class_flip_max_seeds", "its seeds", "{}", False),
    ("iou_mean", "mask IoU (mean over prompts)", "{:.3f}", True),
    ("accuracy_encoder", "accuracy (encoder)", "{:.3f}", True),
    ("accuracy_global", "accuracy (global DATR)", "{:.3f}", False),
)
UNSTABLE = "unstable"  # flip_within >= flip_between: the encoder's own seeds disagree as much as the decoder moves


def image_table(rows: Rows, ref: Reference, scopes) -> list[dict]:
    """One row per image at the reference point: the global scope's numbers, the classes' flips and IoU, accuracies.

    The largest class flip comes with that class's effective tokens and whether its seeds are stable
    (`class_flip_max_seeds`: "unstable" where flip_within >= flip_between and the encoder's seeds disagree
    at all, flip_within > 0; "stable" otherwise; None without the seed ensemble).
    """
    kinds = {scope: ("class" if cid is not None and scope not in RESERVED_SCOPES else scope) for scope, cid in scopes}
    at_point = point_mask(rows, ref)
    encoder = point_mask(rows, ref, tau=False, alpha=False) & rows.select(scope=ENCODER)
    value = row_value(rows)
    per_image: dict[str, dict] = {}
    for i in np.flatnonzero(at_point | encoder):
        entry = per_image.setdefault(rows["image_id"][i], {"classes": {}, "ious": []})
        kind = kinds.get(rows["scope"][i], "class")
        if kind == ENCODER and encoder[i]:
            entry["accuracy_encoder"] = value("accuracy", i)
        elif kind == GLOBAL and at_point[i]:
            for name in ("effective_tokens", "flip_ratio", "flip_ratio_null"):
                entry[name] = value(name, i)
            entry["accuracy_global"] = value("accuracy", i)
        elif kind == "class" and at_point[i]:
            if value("flip_ratio", i) is not None:
                entry["classes"][rows["scope"][i]] = {name: value(name, i) for name in
                                                      ("flip_ratio", "effective_tokens", "flip_within", "flip_between")}
            if (iou := value("iou", i)) is not None:
                entry["ious"].append(iou)
    return [image_row(image_id, per_image[image_id]) for image_id in sorted(per_image)]


def row_value(rows: Rows):
    """value(name, i): row i's value of column `name` as a float, None where null or absent."""
    has = set(rows.columns)

    def value(name: str, i: int):
        if name not in has:
            return None
        v = rows[name][i]
        return None if np.isnan(v) else float(v)

    return value


def image_row(image_id: str, entry: dict) -> dict:
    classes, ious = entry.pop("classes"), entry.pop("ious")
    flips = {scope: c["flip_ratio"] for scope, c in classes.items()}
    worst = max(flips, key=flips.get) if flips else None
    row = {"image_id": image_id, **{key: entry.get(key) for key, *_ in IMAGE_COLUMNS}}
    if row["effective_tokens"] is not None:
        row["effective_tokens"] = int(row["effective_tokens"])
    top = classes.get(worst) or {}
    within, between = top.get("flip_within"), top.get("flip_between")
    row.update(class_flip_mean=float(np.mean(list(flips.values()))) if flips else None,
               class_flip_max=flips[worst] if worst else None, class_flip_max_scope=worst,
               class_flip_max_tokens=None if top.get("effective_tokens") is None else int(top["effective_tokens"]),
               class_flip_max_seeds=None if within is None or between is None else
               (UNSTABLE if 0 < within and within >= between else "stable"),
               iou_mean=float(np.mean(ious)) if ious else None)
    return row
