"""HTML pieces shared by the report and the per-image pages: self-contained, relative links, no scripts."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReportFigure:
    name: str
    files: list[str]  # relative to the page's folder
    title: str
    caption: str


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:0 1.2em 3em;color:#222}
h1{font-size:1.5em;margin-top:1em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.banner{background:#b00020;color:#fff;padding:.8em 1em;font-weight:bold;border-radius:4px;margin:1em 0}
.warn{background:#fff4e5;border-left:4px solid #e69f00;padding:.5em .8em;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444;margin-top:.3em}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}.gallery figure{width:270px;margin:0}.gallery img{width:270px}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #666;vertical-align:middle;margin-right:.3em}
code{background:#f4f4f4;padding:0 .2em}
nav.toc{font-size:.9em;margin:.6em 0;line-height:1.7}.note{font-size:.85em;color:#555}
ul.findings>li{margin:.35em 0}table.images td:first-child{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%;margin:.5em 0}.scroll>table{margin:0}
th.paper.off,td.paper.off{color:#999;background:#fafafa}.few{color:#b00020}
table.kv td.l{overflow-wrap:anywhere}
"""



def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")



def simulated_banner() -> str:
    return ("<div class=\"banner\" id=\"simulated\">SIMULATED — these results come from the simulated SAM3 source "
            "(features and decoder outputs derived from the ground truth), not from the SAM3 model. They test the "
            "pipeline; they say nothing about SAM3.</div>")


def figure_html(fig: ReportFigure, prefix: str = "") -> str:
    main = next((f for f in fig.files if f.endswith(".png")), fig.files[0])
    others = [f for f in fig.files if f != main]
    links = " ".join(f"<a href=\"{esc(prefix + f)}\">{esc(f.rsplit('.', 1)[1].upper())}</a>" for f in others)
    return (f"<figure id=\"{esc(fig.name)}\"><a href=\"{esc(prefix + main)}\"><img src=\"{esc(prefix + main)}\" "
            f"alt=\"{esc(fig.title)}\"></a><figcaption><b>{esc(fig.title)}.</b> {esc(fig.caption)}"
            + (f" Also as {links}." if links else "") + "</figcaption></figure>")


def kv_table(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th class=\"l\">{esc(k)}</th><td class=\"l\">{v if isinstance(v, Raw) else esc(v)}</td></tr>"
                   for k, v in pairs if v not in (None, "", [], {}))
    return f"<table class=\"kv\">{rows}</table>"


def scroll(table: str) -> str:
    """A wide table in a box that scrolls sideways on a narrow screen (nothing cut at 800 px)."""
    return f"<div class=\"scroll\">{table}</div>"


class Raw(str):
    """Already-escaped HTML for kv_table."""



def write_image_page(folder: Path) -> Path:
    """folder/index.html: one image's figures with captions, from its figures.json, a contents list and the way back."""
    folder = Path(folder)
    data = json.loads((folder / "figures.json").read_text())
    title = f"sam3-datr figures — {data['image_id']}"
    report = folder.parent.parent / "report" / "index.html"
    body = ["<p><a href=\"../../report/index.html\">← back to the report</a></p>" if report.is_file() else
            "<p>No report for this sweep yet (<code>datr report DIR</code> writes one; this page then links to it).</p>",
            f"<h1>{esc(title)}</h1>"]
    if data.get("simulated"):
        body.append(simulated_banner())
    body.append(f"<p>Clustering at PCA d={data['d']}, k={data['k']}. Cluster colours follow the ground-truth class each "
                "encoder cluster overlaps most (display only)" + ("" if data.get("has_gt") else "; this image has no GT, so "
                "clusters use neutral colours") + ". Figure numbers are the paper's.</p>")
    toc = "".join(f"<li><a href=\"#{esc(f['name'])}\">{esc(f.get('paper') or '')}</a> {esc(f['title'])}</li>"
                  for f in data["figures"])
    body.append(f"<nav><b>Contents</b><ol class=\"toc\">{toc}</ol></nav>")
    for f in data["figures"]:
        body.append(figure_html(ReportFigure(f["name"], f["files"], f"{f['paper']} — {f['title']}", f["caption"])))
    path = folder / "index.html"
    path.write_text(page(title, body), encoding="utf-8")
    return path
