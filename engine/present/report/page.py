"""The report page, DIR/report/index.html: the run, the summary, the figures, definitions, galleries, errors."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from engine.present.html import Raw, ReportFigure, esc, figure_html, kv_table, page, scroll, simulated_banner
from engine.present.palette import class_colour
from engine.present.provenance import FEW_TOKENS, PAPER_HIDDEN, PAPER_SEED
from engine.present.report.findings import effect_text, effects_at, key_findings_html
from engine.present.report.plots import DISTRIBUTION_ORDER
from engine.present.report.rows import Reference, Rows
from engine.present.report.story import PAPER_FOOTNOTE, figure_link, image_table_html, paper_cell
from engine.present.report.tables import PAGE_LEFT_OUT, TABLE_COLUMNS, fmt_cell, fmt_quartiles
from engine.run.record import is_simulated

DEFINITIONS = """<dl>
<dt>Scope</dt><dd><i>encoder</i>: KMeans on the encoder tokens F (PCA to d, k clusters); <i>global</i>: on
DATR(F) = F + α·Σ softmax(F·Q/√C)·Q over the kept queries of all prompts (one softmax); a prompt name: the same
with that prompt's kept queries only. Kept = score ≥ τ.</dd>
<dt>Effective tokens E</dt><dd>Tokens whose mask weight (max over the scope's kept masks, pooled to the 72×72 grid)
is ≥ 0.5.</dd>
<dt>Flip ratio</dt><dd>Share of E whose DATR cluster, aligned to the encoder clusters by Hungarian matching over all
tokens, differs from the encoder cluster. <i>Processed</i>: both maps pass a 3×3 plurality filter first and are
re-aligned. No value when E is empty.</dd>
<dt>Controls (null, reseed)</dt><dd><i>null</i>: the same clustering of F + α·A_perm, the scope's attended vectors
permuted across the image's tokens (same displacement sizes, no token–query correspondence); <i>reseed</i>: the encoder
tokens clustered again with seed + 1. Both aligned to the encoder clusters and measured on E like the flip ratio: a
flip ratio means something only where it exceeds them.</dd>
<dt>Effects (seed ensembles)</dt><dd>Every scope is also clustered with S seeds. Per image, on E:
<i>flip_between</i> = the mean flip between the encoder's and the scope's partitions of different seeds,
<i>flip_within</i> = the mean flip between the encoder's own partitions of different seeds (its instability),
<i>flip_null_between</i> = the same with the null's partitions. The effect against instability is flip_between −
flip_within, against the null flip_between − flip_null_between, in percentage points. Across images: the median
effect, its 95% bootstrap interval, a two-sided Wilcoxon signed-rank test, Holm's correction over every test of
effects.csv. An image is <i>unstable</i> for a scope where flip_within ≥ flip_between. The flip ratio and its
controls are one seed's numbers (the paper's).</dd>
<dt>Cosine distance / DATR shift</dt><dd>Cosine distance (the paper's number) = mean over E of 1 − cos(F_j, A_j) with
A_j the attended query vector; DATR shift = mean over E of 1 − cos(F_j, DATR(F)_j).</dd>
<dt>Accuracy, NMI, ARI</dt><dd>Clustering against the GT downsampled to the token grid by majority vote;
accuracy after one-to-one matching of clusters to classes. <i>Mask IoU</i>: union of the prompt's kept masks
(probability ≥ 0.5) against its GT class on the 288×288 grid.</dd>
</dl>"""



def run_facts(sweep_dir: Path, run: dict, rows: Rows | None, ref: Reference | None, errors: list[dict]) -> list[tuple[str, object]]:
    cfg = run.get("config") or {}
    data = cfg.get("data") or {}  # RunConfig holds a DataConfig
    analysis = cfg.get("analysis") or {}
    source = run.get("source") or {}
    backend = run.get("backend") or {}
    versions = run.get("versions") or {}
    stages = run.get("seconds_per_stage") or {}
    images = len(set(rows["image_id"].tolist())) if rows is not None else 0
    model = source.get("model") or cfg.get("model")
    if cfg.get("checkpoint"):
        model = f"{model} (checkpoint {cfg['checkpoint']})"
    return [
        ("run folder", str(sweep_dir.resolve())),
        ("status", run.get("status") or "unknown (no run.json)"),
        ("started / finished", " / ".join(x for x in (run.get("started"), run.get("finished")) if x)),
        ("model / source", model),
        ("source note", source.get("note")),
        ("dataset", " ".join(str(x) for x in (data.get("root"), f"split {data['split']}" if data.get("split") else None,
                                              f"mode {data['mode']}" if data.get("mode") else None) if x)),
        ("prompts", ", ".join(cfg.get("prompts") or [])),
        ("images with results", images),
        ("items skipped with errors", len(errors)),
        ("device", " ".join(str(x) for x in (run.get("device"), f"({run['device_name']})" if run.get("device_name") else None) if x)),
        ("backend", f"{backend.get('used')} — {backend.get('reason')}" if backend else None),
        ("parameter grid", ", ".join(f"{k}={analysis[k]}" for k in ("taus", "alphas", "dims", "ks") if k in analysis)),
        ("clustering", ", ".join(f"{k}={analysis[k]}" for k in ("n_init", "max_iter", "tol", "seed", "effective_threshold")
                                  if k in analysis)),
        ("figures drawn at", ref.label() if ref is not None else None),
        ("git commit", run.get("git_commit")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
        ("seconds per stage", ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if isinstance(v, (int, float)))),
        ("results", Raw(" ".join(f"<a href=\"{esc(href)}\">{esc(label)}</a>" for href, label in
                                 (("../run.json", "run.json"), ("../errors.parquet", "errors.parquet"), ("../rows/", "rows/"))
                                 if (sweep_dir / href[3:]).exists()))),
    ]


def summary_html(summary: list[dict], ref: Reference, simulated: bool) -> str:
    cols = [c for c in TABLE_COLUMNS if c[0] not in PAGE_LEFT_OUT and any(e[f"{c[0]}_mean"] is not None for e in summary)]
    above = any(e.get("flip_above_null") is not None for e in summary)
    paper_head = ("paper (one image, one seed)<br><small>not comparable: this run is SIMULATED</small>" if simulated
                  else "paper (one image, one seed)")
    head = ("<tr><th class=\"l\">scope</th><th>images</th>" + "".join(f"<th>{esc(label)}</th>" for _, label, _ in cols)
            + ("<th>flip &gt; null</th>" if above else "") + f"<th class=\"paper{' off' if simulated else ''}\">{paper_head}</th></tr>")
    body = []
    for e in summary:
        swatch = ""
        if e["class_id"] is not None:
            r, g, b = class_colour(e["class_id"])
            swatch = f"<span class=\"swatch\" style=\"background:rgb({r},{g},{b})\"></span>"
        tokens = e.get("effective_tokens_median")
        few = "<br><small class=\"few\">too few tokens</small>" if tokens is not None and tokens < FEW_TOKENS else ""
        cells = [f"<td class=\"l\">{swatch}{esc(e['scope'])}{few}</td>", f"<td>{e['images']}</td>"]
        for metric, _, fmt in cols:
            text = fmt_quartiles(fmt, e[f"{metric}_median"], e[f"{metric}_q1"], e[f"{metric}_q3"])
            if metric == "effective_tokens" and e["n_tokens"] and e[f"{metric}_median"] is not None:
                text = text.replace(" [", f" / {e['n_tokens']} [", 1) if " [" in text else f"{text} / {e['n_tokens']}"
            median, _, iqr = text.partition(" [")
            cells.append(f"<td>{esc(median)}" + (f"<br><small>[{esc(iqr)}</small>" if iqr else "") + "</td>")
        if above:
            share, n = e.get("flip_above_null"), e.get("flip_above_null_n")
            cells.append(f"<td>{'—' if share is None else f'{share:.0%} of {n}'}</td>")
        cells.append(f"<td class=\"paper{' off' if simulated else ''}\">{esc(paper_cell(e['scope']))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<p>Median [interquartile range] over images at {esc(ref.label())}. <i>null</i> and <i>reseed</i> are the "
            "flip ratio's controls: the same clustering after a displacement of the same size with the token–query "
            "correspondence destroyed, and the encoder tokens clustered again with another seed; <i>flip &gt; null</i> is "
            "the share of images whose flip ratio exceeds its null. A dash means no image had a value (a class with no "
            "kept mask has no effective token and so no flip ratio; rows of older sweeps have no controls). The effects are "
            "in the section above (and with the processed null in summary.csv); a class with a median under "
            f"{FEW_TOKENS} effective tokens is marked too few tokens: one token moves its shares by 2% or more. A table "
            "wider than the page scrolls sideways.</p>"
            f"<div class=\"scroll\"><table>{head}{''.join(body)}</table></div><p class=\"note\">"
            + esc(PAPER_HIDDEN.replace("left out", "greyed") if simulated else f"{PAPER_FOOTNOTE} {PAPER_SEED}") + "</p>"
            "<p>Also as <a href=\"summary.csv\">CSV</a> (with means and standard deviations) and "
            "<a href=\"summary.tex\">LaTeX</a>; means at every grid point in <a href=\"summary_grid.csv\">summary_grid.csv"
            "</a>.</p>")


def effects_html(effects: list[dict], ref: Reference) -> str:
    """The effects at the report's grid point, a row per scope (every grid point is in effects.csv)."""
    from engine.analysis.effects import verdict

    tested = effects_at(effects, ref)
    if not tested:
        return ("<p>These rows carry no seed ensemble (a sweep with <code>--seeds 0</code>, or an older one), so no "
                "effect is tested; the flip ratios below are single seeds' numbers.</p>")
    body = []
    for scope, tests in tested.items():
        n = (tests.get("instability") or tests.get("null"))["n_images"]
        body.append(f"<tr><td class=\"l\">{esc(scope)}</td><td>{n}</td>"
                    f"<td>{esc(effect_text(tests.get('instability')))}</td>"
                    f"<td>{esc(effect_text(tests.get('null')))}</td>"
                    f"<td class=\"l\">{esc(verdict(tests.get('instability'), tests.get('null')))}</td></tr>")
    return (f"<p>At {esc(ref.label())}, per scope over images: the median per-image effect in percentage points "
            "(flip_between minus flip_within against KMeans instability, minus flip_null_between against the null), "
            "its 95% bootstrap interval and the Wilcoxon p after Holm's correction over every test of "
            "<a href=\"effects.csv\">effects.csv</a> (every grid point). Images are the unit; seeds make each "
            "image's value precise.</p>"
            + scroll("<table><tr><th class=\"l\">scope</th><th>images</th><th>vs KMeans instability</th>"
                     f"<th>vs null</th><th class=\"l\">verdict</th></tr>{''.join(body)}</table>"))


def grid_html(grid_summary: list[dict]) -> str:
    cols = [c for c in TABLE_COLUMNS if c[0] not in PAGE_LEFT_OUT and any(e[c[0]] is not None for e in grid_summary)]
    head = ("<tr><th class=\"l\">scope</th><th>τ</th><th>α</th><th>d</th><th>k</th><th>images</th>"
            + "".join(f"<th>{esc(label)}</th>" for _, label, _ in cols) + "</tr>")
    body = []
    for e in grid_summary:
        cells = [f"<td class=\"l\">{esc(e['scope'])}</td>"] + [f"<td>{'—' if e[k] is None else f'{e[k]:g}'}</td>"
                                                               for k in ("tau", "alpha", "d", "k")]
        cells.append(f"<td>{e['images']}</td>")
        cells += [f"<td>{esc(fmt_cell(fmt, e[m]))}</td>" for m, _, fmt in cols]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return scroll(f"<table>{head}{''.join(body)}</table>")


def errors_html(errors: list[dict], limit: int = 200) -> str:
    if not errors:
        return "<p>No item was skipped.</p>"
    rows = "".join(f"<tr><td class=\"l\">{esc(e.get('image_id'))}</td><td class=\"l\">{esc(e.get('path'))}</td>"
                   f"<td class=\"l\">{esc(e.get('error'))}</td></tr>" for e in errors[:limit])
    more = f"<p>{len(errors) - limit} more in errors.parquet.</p>" if len(errors) > limit else ""
    return (f"<p class=\"warn\">{len(errors)} item(s) were skipped; their images have no rows.</p>"
            + scroll(f"<table><tr><th class=\"l\">image</th><th class=\"l\">path</th><th class=\"l\">error</th></tr>{rows}"
                     "</table>") + more)


def dataset_clustering_html(sweep_dir: Path) -> str:
    """The cluster-vs-class contingency and purity of DIR/dataset_clustering.json (written by the sweep)."""
    path = sweep_dir / "dataset_clustering.json"
    if not path.is_file():
        return ("<p>Not computed for this sweep (run <code>datr sweep ... --dataset-sample N</code> to cluster a "
                "reservoir sample of tokens from all images).</p>")
    try:
        results = json.loads(path.read_text()).get("results", [])
    except (json.JSONDecodeError, OSError) as err:
        return f"<p class=\"warn\">{esc(path.name)} is unreadable: {esc(err)}</p>"
    parts = []
    for res in results:
        head = (f"<h3>d = {res['d']}, k = {res['k']}: {res['tokens']} tokens sampled from {res['images']} images "
                f"({esc(res.get('backend'))})</h3>")
        facts = [("purity", res.get("purity")), ("matched accuracy", res.get("accuracy")), ("NMI", res.get("nmi")),
                 ("ARI", res.get("ari")), ("explained variance (d)", res.get("explained_variance_ratio"))]
        line = ", ".join(f"{name} {'—' if v is None else f'{v:.3f}'}" for name, v in facts)
        table = ""
        if res.get("contingency"):
            names = res.get("class_names") or [str(i) for i in range(len(res["contingency"][0]))]
            hrow = "<tr><th class=\"l\">cluster</th><th>tokens</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "<th>purity</th></tr>"
            rows = []
            for c, counts in enumerate(res["contingency"]):
                purity = (res.get("cluster_purity") or [None] * (c + 1))[c]
                rows.append(f"<tr><td class=\"l\">{c}</td><td>{res['sizes'][c]}</td>" + "".join(f"<td>{v}</td>" for v in counts)
                            + f"<td>{'—' if purity is None else f'{purity:.3f}'}</td></tr>")
            table = scroll(f"<table>{hrow}{''.join(rows)}</table>")
        parts.append(head + f"<p>{esc(line)}</p>" + table)
    return "".join(parts) or "<p>No results in dataset_clustering.json.</p>"


def image_pages_html(pages: list[dict]) -> str:
    if not pages:
        return ("<p>No per-image figures in this sweep folder (run <code>datr sweep ... --figures N</code> or "
                "<code>datr analyze</code> to draw them).</p>")
    parts = []
    for p in pages:
        folder = f"../figures/{p['folder']}/"
        thumbs = []
        for f in p.get("figures", []):
            png = next((x for x in f["files"] if x.endswith(".png")), None)
            if png is None:
                continue
            thumbs.append(f"<figure><a href=\"{esc(folder + png)}\"><img src=\"{esc(folder + png)}\" alt=\"{esc(f['title'])}\" "
                          f"loading=\"lazy\"></a><figcaption>{esc(f['paper'])}: {esc(f['title'])}</figcaption></figure>")
        parts.append(f"<h3>{esc(p.get('image_id'))} — <a href=\"{esc(folder + 'index.html')}\">all figures with captions</a>"
                     f"</h3><div class=\"gallery\">{''.join(thumbs)}</div>")
    return "".join(parts)


def what_ran(run: dict, rows: Rows | None, ref: Reference | None, errors: list[dict]) -> str:
    cfg = run.get("config") or {}
    model = "SIMULATED source" if is_simulated(run) else f"SAM3 ({cfg.get('checkpoint') or 'checkpoint unknown'})"
    images = len(set(rows["image_id"].tolist())) if rows is not None else 0
    grid = ", ".join(f"{k}={v}" for k, v in ((cfg.get("analysis") or {}).items()) if k in ("taus", "alphas", "dims", "ks"))
    return (f"{images} images analysed ({len(errors)} failed) with the {model} on {(cfg.get('data') or {}).get('root') or 'an unknown dataset'}"
            f"; grid {grid or 'unknown'}; the tables and figures below are at {ref.label() if ref else 'no grid point'}"
            f"; run.json status {run.get('status') or 'unknown'}.")


def render_index(sweep_dir: Path, run: dict, rows: Rows | None, ref: Reference | None, figures: list[ReportFigure],
                 notes: list[str], summary: list[dict], grid_summary: list[dict], errors: list[dict], pages: list[dict],
                 images: list[dict] | None = None, effects: list[dict] | None = None) -> str:
    title = f"sam3-datr report — {sweep_dir.resolve().name}"
    body = [f"<h1>{esc(title)}</h1>"]
    if is_simulated(run):
        body.append(simulated_banner())
    if run.get("status") not in (None, "complete"):
        body.append(f"<p class=\"warn\">run.json status: {esc(run.get('status'))} — results may be partial.</p>")
    if not run:
        body.append("<p class=\"warn\">No run.json in this folder: the model, parameters and versions are unknown.</p>")
    body.append("<nav class=\"toc\">" + " · ".join(f"<a href=\"#{a}\">{t}</a>" for a, t in (
        ("findings", "key findings"), ("effects", "effects"), ("summary", "per-class summary"), ("images", "per-image table"),
        ("distributions", "distributions"), ("quality", "quality vs IoU"), ("grid", "parameter grid"),
        ("dataset", "dataset-level clustering"), ("run", "run"), ("definitions", "definitions"),
        ("figures", "per-image figures"), ("errors", "errors"))) + "</nav>")
    if rows is not None:
        body.append("<h2 id=\"findings\">Key findings</h2>"
                    + key_findings_html(sweep_dir, summary, images or [], errors, what_ran(run, rows, ref, errors),
                                        effects or [], ref, figure_link))
    if rows is None:
        body.append("<p class=\"warn\">No result rows (rows/*.parquet): nothing to summarise.</p>")
    else:
        by_name = {f.name: f for f in figures}
        body.append("<h2 id=\"effects\">Effects</h2>" + effects_html(effects or [], ref))
        body.append("<h2 id=\"summary\">Per-class summary</h2>" + summary_html(summary, ref, is_simulated(run)))
        body.append(f"<h2 id=\"images\">Per-image table</h2><p>The {min(10, len(images or []))} images with the largest "
                    f"global flip ratio of {len(images or [])}; the <a href=\"images.html\">full table</a> sorts by flip "
                    "ratio, IoU, accuracy and effective tokens.</p>" + image_table_html(sweep_dir, images or [], "flip_ratio", 10))
        body.append("<h2 id=\"distributions\">Per-class distributions</h2>")
        body += [figure_html(by_name[f"dist_{m}"]) for m in DISTRIBUTION_ORDER if f"dist_{m}" in by_name]
        body.append("<h2 id=\"quality\">Clustering quality vs segmentation</h2>")
        body += [figure_html(by_name["quality_vs_iou"])] if "quality_vs_iou" in by_name else []
        body.append("<h2 id=\"grid\">Parameter grid</h2>")
        body += [figure_html(f) for f in figures if f.name.startswith("grid_")]
        if len(grid_summary) > len(summary):
            body.append(grid_html(grid_summary))
        body += [f"<p class=\"warn\">{esc(n)}</p>" for n in notes]
    body.append("<h2 id=\"dataset\">Dataset-level structural clustering</h2>" + dataset_clustering_html(sweep_dir))
    body.append("<h2 id=\"run\">Run</h2>" + scroll(kv_table(run_facts(sweep_dir, run, rows, ref, errors))))
    body.append("<h2 id=\"definitions\">Definitions</h2>" + DEFINITIONS)
    body.append("<h2 id=\"figures\">Per-image figures</h2>" + image_pages_html(pages))
    body.append("<h2 id=\"errors\">Errors</h2>" + errors_html(errors))
    body.append(f"<p style=\"color:#777;font-size:.8em\">Written {esc(dt.datetime.now(dt.UTC).isoformat(timespec='seconds'))} "
                "by <code>datr report</code>. Definitions of every metric: see the project README.</p>")
    return page(title, body)
