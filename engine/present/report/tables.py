"""The report's tables: the per-class summary in the paper's form (HTML, CSV, LaTeX) and the grid means."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from engine.present.report.rows import Reference, Rows, point_mask

TABLE_COLUMNS = (
    ("kept_queries", "masks", "{:.1f}"), ("effective_tokens", "effective tokens", "{:.0f}"),
    ("flip_ratio", "flip ratio", "{:.1%}"), ("flip_ratio_processed", "flip (processed)", "{:.1%}"),
    ("cos_distance", "cos distance", "{:.4f}"), ("datr_shift", "DATR shift", "{:.4f}"), ("iou", "mask IoU", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"), ("nmi", "NMI", "{:.3f}"), ("ari", "ARI", "{:.3f}"),
)


def summary_table(rows: Rows, ref: Reference, scopes) -> list[dict]:
    """One row per scope at the reference point: mean, std and count of each metric over images."""
    table = []
    for scope, cid in scopes:
        keep = rows.select(scope=scope) & point_mask(rows, ref, tau=scope != "encoder", alpha=scope != "encoder")
        entry = {"scope": scope, "class_id": cid, "images": int(len(set(rows["image_id"][keep].tolist())))}
        for metric, _, _ in TABLE_COLUMNS:
            data = rows[metric][keep]
            data = data[~np.isnan(data)]
            entry[f"{metric}_mean"] = float(data.mean()) if data.size else None
            entry[f"{metric}_std"] = float(data.std(ddof=1)) if data.size > 1 else None
            entry[f"{metric}_n"] = int(data.size)
        n_tok = rows["n_tokens"][keep]
        entry["n_tokens"] = int(np.nanmax(n_tok)) if n_tok.size and not np.isnan(n_tok).all() else None
        table.append(entry)
    return table


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


def fmt_cell(fmt: str, mean, std=None) -> str:
    if mean is None:
        return "—"
    text = fmt.format(mean)
    if std is not None:
        text += " ± " + fmt.format(std).rstrip("%") + ("%" if fmt.endswith("%}") else "")
    return text


def write_csv(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        if not table:
            return
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def write_latex(path: Path, table: list[dict], ref: Reference) -> None:
    """The per-class table as a booktabs tabular (means ± std over images)."""
    cols = [c for c in TABLE_COLUMNS if any(e[f"{c[0]}_mean"] is not None for e in table)]
    lines = [f"% sam3-datr per-class summary at {ref.label()}; mean ± std over images",
             "\\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", "\\toprule",
             " & ".join(["scope", "images"] + [c[1] for c in cols]) + " \\\\", "\\midrule"]
    for e in table:
        cells = [e["scope"], str(e["images"])]
        for metric, _, fmt in cols:
            cells.append(fmt_cell(fmt, e[f"{metric}_mean"], e[f"{metric}_std"]).replace("%", "\\%").replace("±", "$\\pm$")
                         .replace("—", "--"))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")

