"""The report's reading order: key findings at the top, the per-image table (sortable, one page per order).

Numbers come from the summary and per-image tables (engine.present.report.tables); nothing
is recomputed from the analysis. "Sortable" without scripts: one static page per sort key,
the column headers link between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.present.figures.view import safe_name
from engine.present.html import esc, page, scroll, simulated_banner
from engine.present.paper import PAPER_NOTE, paper_scope
from engine.present.report.tables import IMAGE_COLUMNS, fmt_quartiles

OUTLIERS_SHOWN = 5


def image_page_name(key: str) -> str:
    return "images.html" if key == "flip_ratio" else f"images_by_{key}.html"


def figure_link(sweep_dir: Path, image_id: str) -> str | None:
    """The image's figure page relative to DIR/report/, when it was drawn."""
    folder = safe_name(image_id)
    return f"../figures/{folder}/index.html" if (sweep_dir / "figures" / folder / "index.html").is_file() else None


def headline(entry: dict) -> str:
    """One class's headline: flip ratio (median [IQR]) with its controls, effective tokens, IoU."""
    parts = [f"flip ratio {fmt_quartiles('{:.1%}', entry['flip_ratio_median'], entry['flip_ratio_q1'], entry['flip_ratio_q3'])}"]
    controls = [f"{name} {entry[f'{key}_median']:.1%}" for key, name in (("flip_ratio_null", "null"),
                                                                          ("flip_ratio_reseed", "reseed"))
                if entry.get(f"{key}_median") is not None]
    if controls:
        parts[0] += f" (controls: {', '.join(controls)})"
    if entry.get("flip_above_null") is not None:
        parts.append(f"above its null in {entry['flip_above_null']:.0%} of {entry['flip_above_null_n']} images")
    if entry.get("effective_tokens_median") is not None:
        parts.append(f"{entry['effective_tokens_median']:.0f} effective tokens")
    if entry.get("iou_median") is not None:
        parts.append(f"mask IoU {entry['iou_median']:.3f}")
    return "; ".join(parts)


def outlier_images(images: list[dict], key: str = "class_flip_max") -> list[dict]:
    """Images whose value lies above Q3 + 1.5 IQR of all images (largest first)."""
    values = np.array([np.nan if r[key] is None else r[key] for r in images], dtype=np.float64)
    ok = ~np.isnan(values)
    if ok.sum() < 4:
        return []
    q1, q3 = np.percentile(values[ok], (25, 75))
    fence = q3 + 1.5 * (q3 - q1)
    return sorted((r for r, v in zip(images, values, strict=True) if ok.any() and v > fence),
                  key=lambda r: -r[key])


def key_findings_html(sweep_dir: Path, summary: list[dict], images: list[dict], errors: list[dict], what_ran: str) -> str:
    items = [f"<li><b>What ran.</b> {esc(what_ran)}</li>"]
    datr = [e for e in summary if e["scope"] != "encoder"]
    lines = [f"<li>{esc(e['scope'])}: {esc(headline(e))}</li>" for e in datr if e.get("flip_ratio_median") is not None]
    empty = [e["scope"] for e in datr if e.get("flip_ratio_median") is None]
    if lines:
        items.append("<li><b>Per class</b> (median [interquartile range] over images)<ul>" + "".join(lines) + "</ul></li>")
    look = []
    effects = [(e["flip_ratio_median"] - (e.get("flip_ratio_null_median") or 0.0), e) for e in datr
               if e.get("flip_ratio_median") is not None]
    if effects:
        gap, top = max(effects, key=lambda t: t[0])
        against = "above its null control" if top.get("flip_ratio_null_median") is not None else "(no null control in these rows)"
        look.append(f"Largest effect: <b>{esc(top['scope'])}</b>, median flip ratio {top['flip_ratio_median']:.1%}"
                    f" {esc(against)}" + (f" by {gap:.1%}" if top.get("flip_ratio_null_median") is not None else "") + ".")
    outliers = outlier_images(images)
    if outliers:
        links = []
        for r in outliers[:OUTLIERS_SHOWN]:
            href = figure_link(sweep_dir, r["image_id"])
            name = f"<a href=\"{esc(href)}\">{esc(r['image_id'])}</a>" if href else esc(r["image_id"])
            links.append(f"{name} ({esc(r['class_flip_max_scope'])} {r['class_flip_max']:.1%})")
        look.append(f"Outliers (largest class flip ratio above Q3 + 1.5 IQR): {', '.join(links)}"
                    + (f" and {len(outliers) - OUTLIERS_SHOWN} more" if len(outliers) > OUTLIERS_SHOWN else "")
                    + "; see the <a href=\"images_by_class_flip_max.html\">per-image table</a>.")
    if empty:
        look.append(f"No effective token (so no flip ratio) in any image for: {esc(', '.join(empty))}.")
    look.append(f"<a href=\"#errors\">{len(errors)} image(s) failed</a> and have no rows." if errors
                else "No image failed.")
    items.append("<li><b>What to look at.</b><ul>" + "".join(f"<li>{x}</li>" for x in look) + "</ul></li>")
    return "<ul class=\"findings\">" + "".join(items) + "</ul>"


def paper_cell(scope: str) -> str:
    ref = paper_scope(scope)
    if ref is None:
        return "—"
    masks = f"{ref.masks} masks, " if ref.masks is not None else ""
    return f"{masks}{ref.effective_tokens} tokens, flip {ref.flip_ratio:.1%}, cos {ref.cos_distance:.4f}"


PAPER_FOOTNOTE = (f"{PAPER_NOTE}. The paper reports one UDD5 image with the real SAM3 at its own settings; "
                  "compare orders of magnitude, not digits.")


def image_table_html(sweep_dir: Path, images: list[dict], key: str, limit: int | None = None) -> str:
    """The per-image table sorted by `key` (largest first, empty last); headers link to the other orders."""
    ordered = sorted(images, key=lambda r: (r[key] is None, -(r[key] or 0.0), r["image_id"]))
    if limit is not None:
        ordered = ordered[:limit]
    cols = [c for c in IMAGE_COLUMNS if any(r[c[0]] is not None for r in images)]
    head = ["<th class=\"l\">image</th>"]
    for name, label, _, sortable in cols:
        text = esc(label) + (" ▼" if name == key else "")
        head.append(f"<th><a href=\"{image_page_name(name)}\">{text}</a></th>" if sortable and name != key else f"<th>{text}</th>")
    body = []
    for r in ordered:
        href = figure_link(sweep_dir, r["image_id"])
        name = f"<a href=\"{esc(href)}\">{esc(r['image_id'])}</a>" if href else esc(r["image_id"])
        cells = [f"<td class=\"l\">{name}</td>"]
        for col, _, fmt, _ in cols:
            v = r[col]
            cells.append(f"<td>{'—' if v is None else esc(fmt.format(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return scroll(f"<table class=\"images\"><tr>{''.join(head)}</tr>{''.join(body)}</table>")


def write_image_pages(out: Path, sweep_dir: Path, images: list[dict], title: str, *, simulated: bool) -> list[Path]:
    """DIR/report/images*.html: the per-image table, one page per sortable column (with the SIMULATED banner)."""
    written = []
    for name, label, _, sortable in IMAGE_COLUMNS:
        if not sortable:
            continue
        body = [f"<p><a href=\"index.html\">← back to the report</a></p><h1>{esc(title)}: per-image table</h1>",
                simulated_banner() if simulated else "",
                f"<p>{len(images)} images at the report's grid point, sorted by {esc(label)} (largest first). Click a "
                "column header to sort by it; an image name links to its figures where they were drawn.</p>",
                image_table_html(sweep_dir, images, name)]
        path = out / image_page_name(name)
        path.write_text(page(f"{title} — images by {label}", body), encoding="utf-8")
        written.append(path)
    return written
