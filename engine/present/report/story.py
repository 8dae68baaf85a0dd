"""The per-image table (sortable, one page per order) and the paper's cell; the key findings are in findings.py.

Numbers come from the summary and per-image tables (engine.present.report.tables); nothing
is recomputed from the analysis. "Sortable" without scripts: one static page per sort key,
the column headers link between them.
"""

from __future__ import annotations

from pathlib import Path

from engine.present.figures.view import safe_name
from engine.present.html import esc, page, scroll, simulated_banner
from engine.present.paper import PAPER_NOTE, paper_scope
from engine.present.report.tables import IMAGE_COLUMNS, fmt_value


def image_page_name(key: str) -> str:
    return "images.html" if key == "flip_ratio" else f"images_by_{key}.html"


def figure_link(sweep_dir: Path, image_id: str) -> str | None:
    """The image's figure page relative to DIR/report/, when it was drawn."""
    folder = safe_name(image_id)
    return f"../figures/{folder}/index.html" if (sweep_dir / "figures" / folder / "index.html").is_file() else None


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
            cells.append(f"<td>{'—' if v is None else esc(fmt_value(fmt, v))}</td>")
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
