"""The dataset report: files, numbers in the table, links, banner, and awkward sweeps.

Most tests write Parquet rows by hand (ROW_SCHEMA) so the values are known; one runs a
tiny simulated sweep with figures end to end.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.analysis.rows import ROW_SCHEMA
from engine.core.errors import ConfigError, DataError
from engine.present.report.build import build_report
from engine.present.report.plots import correlation
from engine.run.store import ERROR_SCHEMA
from tests.test_figures import broken_links

PROMPTS = ("vegetation", "vehicle")
CLASS_IDS = (0, 3)


def write_sweep(root: Path, *, images: int = 4, alphas=(0.3, 0.5), gt: bool = True, simulated: bool = True,
                errors: int = 1) -> Path:
    """A sweep folder with known rows: 'vehicle' never keeps a mask (an empty class); `errors` skipped items."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(images):
        image_id = f"img_{i}"
        enc_acc = 0.7 + 0.02 * i
        rows.append(dict(image_id=image_id, scope="encoder", scope_kind="encoder", class_id=None, tau=None, alpha=None,
                         d=32, k=5, n_tokens=5184, n_iter=5, accuracy=enc_acc if gt else None,
                         nmi=0.8 if gt else None, ari=0.6 if gt else None))
        for alpha in alphas:
            for scope, kind, cid in (("global", "global", None), ("vegetation", "class", 0), ("vehicle", "class", 3)):
                empty = scope == "vehicle"
                rows.append(dict(
                    image_id=image_id, scope=scope, scope_kind=kind, class_id=cid, tau=0.5, alpha=alpha, d=32, k=5,
                    kept_queries=0 if empty else 3 + i, effective_tokens=0 if empty else 1000 + 100 * i, n_tokens=5184,
                    n_iter=5, flip_ratio=None if empty else 0.1 * (i + 1) * alpha,
                    flip_ratio_processed=None if empty else 0.05 * (i + 1), cos_distance=None if empty else 0.7,
                    datr_shift=None if empty else 0.01 * alpha, iou=(0.0 if empty else 0.5 + 0.1 * i) if gt and kind == "class" else None,
                    accuracy=enc_acc + (0.0 if empty else 0.01 * i) if gt else None, nmi=0.8 if gt else None,
                    ari=0.6 + rng.uniform(0, 0.01) if gt else None))
    columns = {name: [r.get(name) for r in rows] for name in ROW_SCHEMA.names}
    (root / "rows").mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=ROW_SCHEMA), root / "rows" / "part-000000.parquet")
    bad = [(f"bad_{j}", f"/data/bad_{j}.JPG", "truncated JPEG <b>file</b>") for j in range(errors)]
    pq.write_table(pa.Table.from_pydict({"image_id": [b[0] for b in bad], "path": [b[1] for b in bad],
                                         "error": [b[2] for b in bad]}, schema=ERROR_SCHEMA), root / "errors.parquet")
    run = {"status": "complete", "config": {"model": "simulated" if simulated else "sam3", "checkpoint": None if simulated else "/w/sam3.pt",
                                            "prompts": list(PROMPTS), "class_ids": list(CLASS_IDS),
                                            "analysis": {"taus": [0.5], "alphas": list(alphas), "dims": [32], "ks": [5]}},
           "source": {"model": "simulated" if simulated else "sam3", "simulated": simulated}, "simulated": simulated,
           "backend": {"used": "torch", "reason": "test"}, "device": "cpu", "versions": {"torch": "x"},
           "git_commit": "abc123", "seconds_per_stage": {"model": 1.0}, "errors": errors}
    (root / "run.json").write_text(json.dumps(run))
    return root


def valid_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100, f"{path.name}: {img.format} {img.size}"


def test_report_with_errors_and_an_empty_class_renders_every_figure(tmp_path):
    sweep = write_sweep(tmp_path / "s")
    index = build_report(sweep, echo=lambda _: None)
    assert index == sweep / "report" / "index.html"
    names = {p.name for p in (sweep / "report").glob("*.png")}
    assert names == {"dist_flip_ratio.png", "dist_flip_ratio_processed.png", "dist_effective_tokens.png",
                     "dist_cos_distance.png", "dist_datr_shift.png", "quality_vs_iou.png", "grid_alpha.png"}
    for name in names:
        valid_png(sweep / "report" / name)
    text = index.read_text(encoding="utf-8")
    assert broken_links(index) == []
    assert 'id="simulated"' in text and "SIMULATED" in text
    assert "truncated JPEG &lt;b&gt;file&lt;/b&gt;" in text  # errors listed, escaped
    assert "abc123" in text and "α=0.3" in text  # which run and which parameters


def test_summary_table_holds_the_means_over_images_and_dashes_for_the_empty_class(tmp_path):
    sweep = write_sweep(tmp_path / "s")
    build_report(sweep, echo=lambda _: None)
    with (sweep / "report" / "summary.csv").open() as fh:
        table = {row["scope"]: row for row in csv.DictReader(fh)}
    assert list(table) == ["encoder", "global", "vegetation", "vehicle"]
    veg = table["vegetation"]
    # reference point alpha = 0.3: flip = 0.03 * (i + 1) for i in 0..3
    assert float(veg["flip_ratio_mean"]) == pytest.approx(np.mean([0.03 * (i + 1) for i in range(4)]))
    assert float(veg["effective_tokens_mean"]) == pytest.approx(1150.0)
    assert int(veg["images"]) == 4
    assert table["vehicle"]["flip_ratio_mean"] == "" and table["vehicle"]["flip_ratio_n"] == "0"
    assert float(table["encoder"]["accuracy_mean"]) == pytest.approx(np.mean([0.7 + 0.02 * i for i in range(4)]))
    tex = (sweep / "report" / "summary.tex").read_text()
    assert "\\toprule" in tex and "vehicle" in tex


def test_no_gt_and_a_single_point_skip_those_figures_with_a_note(tmp_path):
    sweep = write_sweep(tmp_path / "s", alphas=(0.3,), gt=False, simulated=False, errors=0)
    index = build_report(sweep, echo=lambda _: None)
    names = {p.name for p in (sweep / "report").glob("*.png")}
    assert "quality_vs_iou.png" not in names and not any(n.startswith("grid_") for n in names)
    text = index.read_text(encoding="utf-8")
    assert "needs ground truth" in text and "single parameter point" in text
    assert 'id="simulated"' not in text and "/w/sam3.pt" in text
    assert broken_links(index) == []


def test_formats_on_request_are_written_and_linked(tmp_path):
    sweep = write_sweep(tmp_path / "s", images=2)
    index = build_report(sweep, echo=lambda _: None, formats=("pdf", "svg"))
    report = sweep / "report"
    assert (report / "dist_flip_ratio.pdf").read_bytes().startswith(b"%PDF")
    assert (report / "dist_flip_ratio.png").exists()  # the page always shows PNGs
    text = index.read_text(encoding="utf-8")
    assert 'href="dist_flip_ratio.svg"' in text and broken_links(index) == []
    with pytest.raises(ConfigError, match="--formats"):
        build_report(sweep, echo=lambda _: None, formats=("gif",))


def test_a_sweep_with_errors_only_still_renders(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    pq.write_table(pa.Table.from_pydict({"image_id": ["a"], "path": ["/a.JPG"], "error": ["unreadable"]}, schema=ERROR_SCHEMA),
                   sweep / "errors.parquet")
    index = build_report(sweep, echo=lambda _: None)
    text = index.read_text(encoding="utf-8")
    assert "No result rows" in text and "unreadable" in text and "No run.json" in text
    assert broken_links(index) == []


def test_missing_or_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(DataError, match="no such sweep folder"):
        build_report(tmp_path / "nope", echo=lambda _: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="datr sweep"):
        build_report(tmp_path / "empty", echo=lambda _: None)


def test_correlation_matches_numpy_and_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    y[5] = np.nan
    x[:3] = x[3]  # ties
    r, rho = correlation(x, y)
    ok = ~np.isnan(y)
    assert r == pytest.approx(np.corrcoef(x[ok], y[ok])[0, 1])
    assert rho == pytest.approx(spearmanr(x[ok], y[ok]).statistic)
    assert np.isnan(correlation(np.ones(5), np.arange(5.0))[0])


def test_real_sweep_figures_and_report_end_to_end(tmp_path):
    """A tiny simulated sweep: draw_image_figures on the real BatchMaps, then the report links them."""
    from engine.core.config import AnalysisConfig, DataConfig, RunConfig
    from engine.data.scenes import write_scene_set
    from engine.present.figures.draw import draw_image_figures
    from engine.present.figures.view import FigureOptions
    from engine.run.sweep import run_sweep

    root = write_scene_set(tmp_path / "scenes", 2, size=(400, 300))
    cfg = RunConfig(data=DataConfig(root=root, num_workers=0), out=tmp_path / "sweep", prompts=("road", "vehicle"),
                    class_ids=(2, 3), batch_size=2, figures=1, analysis=AnalysisConfig(alphas=(0.3, 0.5), n_init=1, dims=(8,), seeds=3)).validate()
    result = run_sweep(cfg, echo=lambda _: None, show_progress=False, keep_figures=1)
    (maps, row), = result.figures.maps
    only = ("structural_clustering", "class-road_flips", "decoder_masks", "mask-road-0")
    records = draw_image_figures(maps, row, result.figures, cfg, cfg.out / "figures",
                                 FigureOptions(dpi=40, panel_inches=2.0, masks_per_prompt=1, only=only))
    assert [r.name for r in records] == list(only)
    assert "cosine similarity" in records[-1].caption  # the pipeline hands over the encoder similarity
    index = build_report(cfg.out, echo=lambda _: None)
    text = index.read_text(encoding="utf-8")
    assert "../figures/scene_0000/structural_clustering.png" in text
    assert broken_links(index) == [] and broken_links(cfg.out / "figures" / "scene_0000" / "index.html") == []
    assert 'id="simulated"' in text and (cfg.out / "report" / "grid_alpha.png").exists()
    # the figure page: a contents entry per figure with its paper number, and the way back to the report
    page = (cfg.out / "figures" / "scene_0000" / "index.html").read_text(encoding="utf-8")
    assert '<a href="../../report/index.html">' in page
    assert all(f'<li><a href="#{name}">' in page for name in only)
    assert '<a href="#class-road_flips">Fig. 16</a>' in page and '<a href="#mask-road-0">Fig. 22</a>' in page
    # the per-image table links the image with figures to its page, from every sort order
    for name in ("images.html", "images_by_iou_mean.html", "images_by_accuracy_encoder.html"):
        assert '"../figures/scene_0000/index.html"' in (cfg.out / "report" / name).read_text(encoding="utf-8")
        assert broken_links(cfg.out / "report" / name) == []


def test_dataset_level_clustering_is_shown_with_its_contingency(tmp_path):
    from engine.analysis.dataset import write_dataset_clustering

    sweep = write_sweep(tmp_path / "sweep")
    index = build_report(sweep, echo=lambda s: None)
    assert "--dataset-sample" in index.read_text()  # not computed: says how to get it
    result = {"k": 2, "d": 4, "tokens": 10, "images": 3, "backend": "torch", "sizes": [6, 4],
              "contingency": [[5, 1], [0, 4]], "cluster_purity": [5 / 6, 1.0], "class_names": ["road", "vehicle"],
              "purity": 0.9, "accuracy": 0.9, "nmi": 0.5, "ari": 0.6, "explained_variance_ratio": 0.8}
    write_dataset_clustering(sweep, result)
    text = build_report(sweep, echo=lambda s: None).read_text()
    section = text.split("Dataset-level structural clustering")[1].split("<h2>")[0]
    assert "10 tokens sampled from 3 images" in section and "purity 0.900" in section
    assert "<td>5</td><td>1</td>" in section and "<th>vehicle</th>" in section


def add_synthetic_controls(sweep: Path) -> Path:
    """The three control columns with made-up values: null = flip / 2 (image 3: 2 x flip); processed, reseed the same."""
    path = sweep / "rows" / "part-000000.parquet"
    table = pq.read_table(path)
    flip = np.array([np.nan if v is None else v for v in table.column("flip_ratio").to_pylist()])
    image = np.array([int(i.split("_")[1]) for i in table.column("image_id").to_pylist()])
    null = np.where(image == 3, flip * 2, flip / 2)
    as_col = pa.array([None if np.isnan(v) else float(v) for v in null], pa.float64())
    for name in ("flip_ratio_null", "flip_ratio_null_processed", "flip_ratio_reseed"):
        if name in table.column_names:  # the rows' schema has them (null here): replace
            table = table.set_column(table.column_names.index(name), name, as_col)
        else:
            table = table.append_column(name, as_col)
    pq.write_table(table, path)
    return sweep


def test_controls_and_the_paper_column_show_when_the_rows_carry_them(tmp_path):
    """Synthetic control values: null = flip / 2 for images 0-2 and 2 x flip for image 3 -> flip > null in 3 of 4."""
    sweep = add_synthetic_controls(write_sweep(tmp_path / "s"))
    build_report(sweep, echo=lambda _: None)
    with (sweep / "report" / "summary.csv").open() as fh:
        summary = {r["scope"]: r for r in csv.DictReader(fh)}
    assert float(summary["vegetation"]["flip_above_null"]) == pytest.approx(0.75)
    assert summary["vehicle"]["flip_above_null"] == ""  # no effective token, no flip ratio, no comparison
    assert float(summary["vegetation"]["paper_flip_ratio"]) == 0.342 and summary["vegetation"]["paper_masks"] == "17"
    assert summary["global"]["paper_masks"] == "" and summary["encoder"]["paper_effective_tokens"] == ""
    html = (sweep / "report" / "index.html").read_text(encoding="utf-8")
    assert "<th>flip &gt; null</th>" in html and "75% of 4" in html
    assert "17 masks, 729 tokens, flip 34.2%, cos 0.7040" in html and "greyed because this run is SIMULATED" in html
    assert (sweep / "report" / "dist_flip_controls.png").is_file()


def test_older_rows_without_controls_still_report(tmp_path):
    sweep = write_sweep(tmp_path / "s")
    build_report(sweep, echo=lambda _: None)
    html = (sweep / "report" / "index.html").read_text(encoding="utf-8")
    assert "<th>flip &gt; null</th>" not in html and not (sweep / "report" / "dist_flip_controls.png").exists()
    assert "Key findings" in html and broken_links(sweep / "report" / "images.html") == []


def test_every_output_of_a_simulated_run_says_so_and_a_real_run_does_not(tmp_path):
    for simulated in (True, False):
        sweep = write_sweep(tmp_path / f"s{simulated}", simulated=simulated)
        build_report(sweep, echo=lambda _: None)
        report = sweep / "report"
        for name in ("summary.csv", "summary_grid.csv", "images.csv"):
            with (report / name).open() as fh:
                sources = {row["source"] for row in csv.DictReader(fh)}
            assert sources == ({"SIMULATED"} if simulated else {"sam3"}), name
        tex = (report / "summary.tex").read_text()
        assert tex.startswith("% SIMULATED") == simulated
        pages = sorted(report.glob("*.html"))
        assert len(pages) > 2 and all(('id="simulated"' in p.read_text(encoding="utf-8")) == simulated for p in pages)


def test_the_papers_column_is_greyed_with_the_reason_on_a_simulated_run_and_one_seeds_on_a_real_one(tmp_path):
    sim = build_report(write_sweep(tmp_path / "sim"), echo=lambda _: None).read_text(encoding="utf-8")
    real = build_report(write_sweep(tmp_path / "real", simulated=False), echo=lambda _: None).read_text(encoding="utf-8")
    assert '<td class="paper off">' in sim and "not comparable: this run is SIMULATED" in sim
    assert '<td class="paper">' in real and "paper (one image, one seed)" in real and "one KMeans seed" in real
    assert "SIMULATED" not in real


def test_wide_tables_scroll_in_their_own_box(tmp_path):
    """At 800 px the summary, grid and per-image tables scroll sideways instead of running off the page."""
    text = build_report(write_sweep(tmp_path / "s"), echo=lambda _: None).read_text(encoding="utf-8")
    assert ".scroll{overflow-x:auto" in text
    tables = text.count("<table")
    assert tables >= 4 and text.count('<div class="scroll"><table') == tables


def capture_saved_figures(monkeypatch) -> dict:
    """stem -> figure, for every report figure saved while the patch holds (checked for layout faults first)."""
    import engine.present.report.curves as curves
    import engine.present.report.plots as plots
    from tests.test_figures import layout_faults

    saved, faults = {}, []

    def keep(real):
        def checked(fig, folder, stem, formats, dpi=150):
            faults.extend(layout_faults(fig, stem, dpi))
            saved[stem] = fig
            return real(fig, folder, stem, formats, dpi)
        return checked

    monkeypatch.setattr(plots, "save", keep(plots.save))
    monkeypatch.setattr(curves, "save", keep(curves.save))
    saved["faults"] = faults
    return saved


def test_report_figures_fit_and_nothing_collides(tmp_path, monkeypatch):
    saved = capture_saved_figures(monkeypatch)
    build_report(add_synthetic_controls(write_sweep(tmp_path / "s")), echo=lambda _: None)
    assert {"dist_flip_ratio", "dist_flip_controls", "quality_vs_iou", "grid_alpha"} <= set(saved)
    assert saved["faults"] == []


def test_share_axes_are_symmetric_log_with_ticks_from_a_tenth_to_a_hundred_percent():
    from engine.present.report.plots import value_axis
    from engine.present.style import new_canvas

    fig, (ax,) = new_canvas(3, 2)
    value_axis(ax, "%", 45.0)
    assert ax.get_yscale() == "symlog"
    assert list(ax.get_yticks()) == [0, 0.1, 0.3, 1, 3, 10, 30]  # 45% reads against 30, and 100 once values pass ~67%
    value_axis(ax, "%", 90.0)
    assert list(ax.get_yticks())[-1] == 100
    value_axis(ax, "tokens", 2000.0)
    assert list(ax.get_yticks()) == [0, 1, 3, 10, 30, 100, 300, 1000, 3000]


def test_distributions_give_effective_tokens_and_mark_classes_with_too_few(tmp_path, monkeypatch):
    saved = capture_saved_figures(monkeypatch)
    build_report(write_sweep(tmp_path / "s"), echo=lambda _: None)
    ax = saved["dist_flip_ratio"].grid.axes[0]
    labels = {t.get_text().split("\n")[0]: t for t in ax.get_xticklabels()}
    # vegetation: effective tokens 1000 + 100 i over 4 images -> median 1150; vehicle keeps no mask -> 0 tokens
    assert labels["vegetation"].get_text() == "vegetation\nn=4, 1150 tok"
    assert "too few tokens" in labels["vehicle"].get_text() and labels["vehicle"].get_color() == "#b00020"
    assert labels["vegetation"].get_color() != "#b00020"


def test_grid_curves_draw_each_flip_ratio_beside_its_controls_in_percent_within_0_and_100(tmp_path, monkeypatch):
    saved = capture_saved_figures(monkeypatch)
    build_report(add_synthetic_controls(write_sweep(tmp_path / "s")), echo=lambda _: None)
    fig = saved["grid_alpha"]
    panels = {ax.get_title(): ax for ax in fig.grid.axes if ax.get_visible()}
    veg = panels["vegetation: flip ratio and controls"]
    assert len(veg.containers) == 3  # flip ratio, null control, reseed control
    flip = veg.containers[0]
    # vegetation flip = 0.1 (i + 1) alpha over images i = 0..3: medians 7.5% at alpha 0.3 and 12.5% at 0.5
    assert list(flip.lines[0].get_ydata()) == pytest.approx([7.5, 12.5])
    for ax in panels.values():
        for container in ax.containers:
            for bar in container.lines[2]:
                ends = np.concatenate([seg[:, 1] for seg in bar.get_segments()])
                assert ends.min() >= 0.0 and (ax.get_ylabel() != "% of effective tokens" or ends.max() <= 100.0)


def test_bootstrap_interval_of_the_median_matches_scipy_and_is_seeded():
    from scipy.stats import bootstrap

    from engine.present.report.curves import bootstrap_median

    values = np.random.default_rng(5).normal(10.0, 2.0, size=60)
    median, low, high = bootstrap_median(values, np.random.default_rng(0))
    reference = bootstrap((values,), np.median, method="percentile", n_resamples=4000, random_state=1).confidence_interval
    assert median == np.median(values)
    assert low == pytest.approx(reference.low, abs=0.3) and high == pytest.approx(reference.high, abs=0.3)
    assert bootstrap_median(values, np.random.default_rng(0)) == (median, low, high)
    assert bootstrap_median(np.array([np.nan, 4.0]), np.random.default_rng(0)) == (4.0, 4.0, 4.0)


def add_synthetic_ensemble(sweep: Path) -> Path:
    """Seed-ensemble columns with made-up values over the images of write_sweep(images=10):

    vegetation moves the clustering (effect +4 pp vs instability, +3 pp vs null on every image, a little noise),
    global does not (effects 0) although its one-seed flip ratio is three times vegetation's; vegetation has 30
    effective tokens per image (too few); image 9's vegetation flip ratio is an outlier whose seeds are unstable.
    """
    path = sweep / "rows" / "part-000000.parquet"
    t = pq.read_table(path).to_pydict()
    for r in range(len(t["image_id"])):
        i, scope = int(t["image_id"][r].split("_")[1]), t["scope"][r]
        if scope not in ("global", "vegetation"):
            continue
        veg = scope == "vegetation"
        noise = 0.001 * i
        t["effect_instability"][r] = 0.04 + noise if veg else 0.0
        t["effect_null"][r] = 0.03 + noise if veg else 0.0
        t["effect_instability_se"][r] = t["effect_null_se"][r] = 0.005
        t["flip_between"][r] = 0.06 if veg else 0.02
        t["flip_within"][r] = 0.5 if veg and i == 9 else 0.02
        t["flip_null_between"][r] = 0.03
        if veg:
            t["effective_tokens"][r] = 30
            t["flip_ratio"][r] = 0.9 if i == 9 else t["flip_ratio"][r]
        else:
            t["flip_ratio"][r] *= 3
    pq.write_table(pa.Table.from_pydict(t, schema=ROW_SCHEMA), path)
    return sweep


def findings_text(index: Path) -> str:
    import html
    import re

    text = index.read_text(encoding="utf-8")
    section = text[text.index('id="findings"'):text.index('id="effects"')]
    return html.unescape(re.sub(r"<[^>]+>", "", section.replace("<li>", "\n")))


def test_key_findings_put_each_class_effects_first_and_rank_the_largest_by_effect(tmp_path):
    sweep = add_synthetic_ensemble(write_sweep(tmp_path / "s", images=10))
    text = findings_text(build_report(sweep, echo=lambda _: None))
    veg = next(line for line in text.splitlines() if line.startswith("vegetation:"))
    # median of 0.04 + 0.001 i over i = 0..9 is 4.45 pp; 10 images, all positive: Wilcoxon p 0.002, Holm over 8 tests
    assert veg.startswith("vegetation: +4.5 pp [") and "vs KMeans instability (p_adj 0.016)" in veg
    assert "+3.5 pp [" in veg and "vs the null (p_adj 0.016) over 10 images: an effect beyond both" in veg
    assert "30 effective tokens per image — too few tokens" in veg and "one seed's flip ratio" in veg
    glob = next(line for line in text.splitlines() if line.startswith("global:"))
    assert "+0.0 pp [+0.0, +0.0] vs KMeans instability (p_adj 1)" in glob and "no effect beyond KMeans instability" in glob
    largest = next(line for line in text.splitlines() if line.startswith("Largest effect"))
    assert "vegetation (too few tokens to read), +4.5 pp" in largest  # not global, whose raw flip ratio is larger
    outliers = next(line for line in text.splitlines() if line.startswith("Outliers"))
    assert "img_9 (vegetation 90.0% on 30 tokens; unstable" in outliers


def test_effects_section_and_too_few_tokens_in_the_summary_table(tmp_path):
    sweep = add_synthetic_ensemble(write_sweep(tmp_path / "s", images=10))
    text = build_report(sweep, echo=lambda _: None).read_text(encoding="utf-8")
    effects = text[text.index('id="effects"'):text.index('id="summary"')]
    assert "<td class=\"l\">an effect beyond both</td>" in effects and 'href="effects.csv"' in effects
    summary = text[text.index('id="summary"'):text.index('id="images"')]
    assert "vegetation<br><small class=\"few\">too few tokens</small>" in summary
    assert "global<br><small" not in summary
    with (sweep / "report" / "summary.csv").open() as fh:
        veg = next(r for r in csv.DictReader(fh) if r["scope"] == "vegetation")
    assert float(veg["effect_instability_median"]) == pytest.approx(0.0445)  # the CSV has the effects, the page its section
    with (sweep / "report" / "images.csv").open() as fh:
        image9 = next(r for r in csv.DictReader(fh) if r["image_id"] == "img_9")
    assert image9["class_flip_max_scope"] == "vegetation" and image9["class_flip_max_seeds"] == "unstable"
    assert image9["class_flip_max_tokens"] == "30"


def test_grid_curves_carry_the_effects(tmp_path, monkeypatch):
    saved = capture_saved_figures(monkeypatch)
    build_report(add_synthetic_ensemble(write_sweep(tmp_path / "s", images=10)), echo=lambda _: None)
    panels = {ax.get_title(): ax for ax in saved["grid_alpha"].grid.axes if ax.get_visible()}
    effect = panels["effect vs KMeans instability"]
    lines = {c.get_label(): c.lines[0].get_ydata() for c in effect.containers}
    assert list(lines["vegetation"]) == pytest.approx([4.45, 4.45]) and list(lines["global"]) == [0.0, 0.0]
    assert effect.get_ylabel() == "percentage points" and "effect vs null" in panels
    assert saved["faults"] == []
