"""Per-image figures: files and manifest, exact cluster colours, flip maps, optional inputs.

Hand-built BatchMaps (two prompts, k=4, tiny queries) keep these fast; one test runs
the figures on a real (tiny, simulated) sweep to hold the contract with the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.analysis.batch import BatchMaps
from engine.analysis.layout import build_slots
from engine.core.config import AnalysisConfig, DataConfig, RunConfig
from engine.core.errors import ConfigError
from engine.present.figures.draw import draw_image_figures
from engine.present.figures.panels import new_figure, percentile_rgb, show_labels
from engine.present.figures.view import FigureOptions, image_id_of
from engine.present.palette import CLASS_COLOURS, cluster_palette
from engine.present.style import save

G = 72  # token grid
PROMPTS = ("road", "vehicle")
CLASS_IDS = (2, 3)
FAST = FigureOptions(dpi=40, panel_inches=2.0, masks_per_prompt=1)
# encoder clusters 0..3 sit in the TL, TR, BL, BR quadrants; GT puts road, vegetation, building, vehicle there
QUADRANT_CLASS = (2, 0, 1, 3)


def quadrants(values=(0, 1, 2, 3)) -> np.ndarray:
    out = np.empty((G, G), dtype=np.int64)
    h = G // 2
    out[:h, :h], out[:h, h:], out[h:, :h], out[h:, h:] = values
    return out


def hand_case(tmp_path: Path, *, changed_block: bool = True, with_similarity: bool = False):
    """(maps, result, cfg) for one image: quadrant clusters, a road prompt that flips a block, an empty vehicle prompt."""
    analysis = AnalysisConfig(alphas=(0.3,), ks=(4,), seeds=3)
    slots = build_slots(analysis, PROMPTS, CLASS_IDS)  # encoder, global, road, vehicle
    m = len(slots)
    enc = quadrants()
    labels = np.repeat(enc[None], m, 0)
    effective = np.zeros((m, G, G), dtype=bool)
    effective[1] = True  # global: everything
    effective[2, 30:60, 0:36] = True  # road prompt acts on a band of the left half
    if changed_block:
        labels[2, 40:50, 10:20] = 3  # inside the road region, BL (cluster 2) tokens move to cluster 3
    mask_weights = np.zeros((1, 1 + len(PROMPTS), G, G), dtype=np.float32)
    mask_weights[0, 0] = 0.6
    mask_weights[0, 1] = effective[2] * 0.9
    gt = np.empty((G, G), dtype=np.uint8)
    for cid, cls in enumerate(QUADRANT_CLASS):
        gt[enc == cid] = cls
    rng = np.random.default_rng(0)
    q = 3
    scores = torch.tensor([[0.9, 0.2, 0.7], [0.1, 0.1, 0.1]])  # road keeps two masks, vehicle none
    probs = torch.zeros(len(PROMPTS), q, 288, 288, dtype=torch.float16)
    probs[0, 0, 120:240, 0:140] = 0.95
    probs[0, 2, 0:40, 0:40] = 0.8
    similarity = torch.from_numpy(rng.uniform(-1, 1, size=(1, len(PROMPTS), q, G, G)).astype(np.float16))
    maps = BatchMaps(
        slots=slots, image_ids=["img/one"], d=8, k=4,
        labels=torch.from_numpy(labels)[None], labels_processed=torch.from_numpy(labels.copy())[None],
        effective=torch.from_numpy(effective)[None], mask_weights=torch.from_numpy(mask_weights)[None],
        encoder_pca=torch.from_numpy(rng.normal(size=(1, G, G, 3)).astype(np.float32)),
        gt_tokens=torch.from_numpy(gt)[None],
        kept=(scores >= 0.5)[None], scores=scores[None],
        query_masks=torch.nn.functional.avg_pool2d(probs.float(), 4).half()[None],
        encoder_similarity=similarity if with_similarity else None,
    )
    image = torch.full((3, 1008, 1008), 128, dtype=torch.uint8)
    result = SimpleNamespace(maps=[(maps, 0)], images={"img/one": image}, mask_probs={"img/one": probs})
    cfg = RunConfig(data=DataConfig(root=tmp_path), out=tmp_path / "sweep", prompts=PROMPTS, class_ids=CLASS_IDS, analysis=analysis)
    return maps, result, cfg


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def colour_pixels(rgb: np.ndarray, colour) -> np.ndarray:
    return np.all(rgb == np.array(colour, dtype=np.uint8), axis=-1)


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def broken_links(index: Path) -> list[str]:
    parser = Links()
    parser.feed(index.read_text(encoding="utf-8"))
    assert parser.links, f"{index} has no links"
    return [link for link in parser.links if not (index.parent / link.split("#")[0]).exists()]


EXPECTED = {
    "encoder_pca", "structural_clustering", "global_clustering", "global_comparison",
    "class-road_clustering", "class-road_clustering_raw", "class-road_comparison", "class-road_flips",
    "class-vehicle_clustering", "class-vehicle_clustering_raw", "class-vehicle_comparison", "class-vehicle_flips",
    "decoder_masks", "mask-road-0",
}


def test_every_figure_is_written_as_a_valid_image_and_listed(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    records = draw_image_figures(maps, 0, result, cfg, tmp_path / "figures", FAST)
    folder = tmp_path / "figures" / "img_one"
    assert {r.name for r in records} == EXPECTED
    for r in records:
        (name,) = r.files
        with Image.open(folder / name) as img:
            img.verify()
        with Image.open(folder / name) as img:
            assert img.format == "PNG" and min(img.size) > 50, f"{name}: {img.format} {img.size}"
    manifest = json.loads((folder / "figures.json").read_text())
    assert manifest["image_id"] == "img/one" and manifest["has_gt"] is True
    assert [f["name"] for f in manifest["figures"]] == [r.name for r in records]
    assert broken_links(folder / "index.html") == []


def test_structural_clustering_file_shows_the_given_labels_in_gt_aligned_colours(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    draw_image_figures(maps, 0, result, cfg, tmp_path / "figures", FigureOptions(dpi=60, only=("structural_clustering",)))
    rgb = read_rgb(tmp_path / "figures" / "img_one" / "structural_clustering.png")
    # cluster c covers the quadrant where GT has class QUADRANT_CLASS[c], so it takes that class colour
    areas, centres = [], []
    for cls in QUADRANT_CLASS:
        ys, xs = np.nonzero(colour_pixels(rgb, CLASS_COLOURS[cls]))
        areas.append(xs.size)
        centres.append((xs.mean(), ys.mean()))
    assert min(areas) > 0.9 * max(areas), f"quadrant areas differ: {areas}"
    (tl_x, tl_y), (tr_x, tr_y), (bl_x, bl_y), (br_x, br_y) = centres
    assert tl_x < tr_x and bl_x < br_x and tl_y < bl_y and tr_y < br_y, centres


def test_label_panel_pixels_equal_the_palette_colour_of_each_token(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(6, 6))
    palette = cluster_palette(labels, 4)  # no GT: neutral colours
    fig, (ax,) = new_figure(1, FigureOptions(dpi=100, panel_inches=2.0))
    show_labels(ax, labels, palette)
    (name,) = save(fig, tmp_path, "labels", ("png",), dpi=100)  # laid out, composed and written as the figures are
    rgb = read_rgb(tmp_path / name)
    x0, y0, x1, y1 = ax.get_window_extent().extents  # display pixels, origin bottom-left
    height = rgb.shape[0]
    for i in range(6):
        for j in range(6):
            px = int(x0 + (j + 0.5) * (x1 - x0) / 6)
            py = int(height - (y1 - (i + 0.5) * (y1 - y0) / 6))
            assert tuple(rgb[py, px]) == tuple(palette.colours[labels[i, j]]), f"token ({i}, {j}) at pixel ({py}, {px})"


def test_cluster_palette_names_the_matched_class_and_keeps_spare_colours_distinct():
    enc = quadrants()
    gt = np.empty_like(enc)
    for cid, cls in enumerate(QUADRANT_CLASS):
        gt[enc == cid] = cls
    gt[enc == 3] = 255  # no valid GT under cluster 3: it stays unmatched
    palette = cluster_palette(enc, 5, gt)
    assert palette.names[:3] == ["cluster 0 ≈ road", "cluster 1 ≈ vegetation", "cluster 2 ≈ building"]
    assert palette.matched_class == [2, 0, 1, None, None]
    assert len({tuple(c) for c in palette.colours}) == 5
    assert not {tuple(c) for c in palette.colours[3:]} & set(CLASS_COLOURS)


def test_without_gt_clusters_take_neutral_colours_and_plain_names(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    maps.gt_tokens = None
    records = draw_image_figures(maps, 0, result, cfg, tmp_path / "f",
                                 replace(FAST, dpi=60, only=("structural_clustering", "global_comparison")))
    assert len(records) == 2
    rgb = read_rgb(tmp_path / "f" / "img_one" / "structural_clustering.png")
    neutral = cluster_palette(quadrants(), 4).colours
    assert all(colour_pixels(rgb, c).sum() > 0 for c in neutral)
    assert all(colour_pixels(rgb, CLASS_COLOURS[c]).sum() == 0 for c in QUADRANT_CLASS)
    assert json.loads((tmp_path / "f" / "img_one" / "figures.json").read_text())["has_gt"] is False


def test_flip_map_draws_changed_tokens_only(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    only_flips = FigureOptions(dpi=60, only=("class-road_flips",))
    draw_image_figures(maps, 0, result, cfg, tmp_path / "a", only_flips)
    rgb = read_rgb(tmp_path / "a" / "img_one" / "class-road_flips.png")
    moved_to = CLASS_COLOURS[QUADRANT_CLASS[3]]  # the block moved to cluster 3 (vehicle colour)
    changed_pixels = colour_pixels(rgb, moved_to).sum()
    assert changed_pixels > 0
    others = [CLASS_COLOURS[c] for c in QUADRANT_CLASS[:3]]
    assert sum(colour_pixels(rgb, c).sum() for c in others) == 0, "unchanged clusters drawn on the flip map"

    maps, result, cfg = hand_case(tmp_path, changed_block=False)
    draw_image_figures(maps, 0, result, cfg, tmp_path / "b", only_flips)
    rgb = read_rgb(tmp_path / "b" / "img_one" / "class-road_flips.png")
    assert sum(colour_pixels(rgb, CLASS_COLOURS[c]).sum() for c in QUADRANT_CLASS) == 0


def test_encoder_similarity_is_drawn_when_handed_over(tmp_path):
    only_mask = replace(FAST, only=("mask-road-0",))
    maps, result, cfg = hand_case(tmp_path, with_similarity=True)
    (mask,) = draw_image_figures(maps, 0, result, cfg, tmp_path / "figures", only_mask)
    assert "cosine similarity" in mask.caption
    maps, result, cfg = hand_case(tmp_path)
    (mask,) = draw_image_figures(maps, 0, result, cfg, tmp_path / "plain", only_mask)
    assert "encoder_similarity" in mask.caption  # says what is missing
    three = read_rgb(tmp_path / "figures" / "img_one" / "mask-road-0.png").shape[1]
    two = read_rgb(tmp_path / "plain" / "img_one" / "mask-road-0.png").shape[1]
    assert three > 1.4 * two, (three, two)  # similarity | activation | comparison vs activation | outline


def test_pooled_masks_stand_in_when_full_resolution_was_not_kept(tmp_path):
    maps, result, cfg = hand_case(tmp_path, with_similarity=True)
    result.mask_probs = {}
    records = draw_image_figures(maps, 0, result, cfg, tmp_path / "f", replace(FAST, only=("decoder_masks", "mask-road-0")))
    assert [r.name for r in records] == ["decoder_masks", "mask-road-0"]
    assert all("72×72 token grid" in r.caption for r in records)


def test_image_id_comes_from_the_maps(tmp_path):
    maps, _, _ = hand_case(tmp_path)
    assert image_id_of(maps, 0) == "img/one"
    maps.image_ids = ["named"]
    assert image_id_of(maps, 0) == "named"


def test_other_formats_on_request_and_bad_ones_refused(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    opts = FigureOptions(formats=("png", "pdf", "svg"), dpi=30, panel_inches=1.5, only=("structural_clustering",))
    records = draw_image_figures(maps, 0, result, cfg, tmp_path / "f", opts)
    first = records[0]
    assert [Path(f).suffix for f in first.files] == [".png", ".pdf", ".svg"]
    folder = tmp_path / "f" / "img_one"
    assert (folder / first.files[1]).read_bytes().startswith(b"%PDF")
    assert b"<svg" in (folder / first.files[2]).read_bytes()[:2000]
    with pytest.raises(ConfigError, match="--formats"):
        draw_image_figures(maps, 0, result, cfg, tmp_path / "g", FigureOptions(formats=("jpg",)))


def test_pca_display_scaling_is_per_channel_percentiles():
    pca = np.stack([np.linspace(-5, 5, 100), np.linspace(0, 1000, 100), np.zeros(100)], -1).reshape(10, 10, 3)
    rgb = percentile_rgb(pca)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert np.isclose(np.median(rgb[..., 0]), 0.5, atol=0.02) and np.isclose(np.median(rgb[..., 1]), 0.5, atol=0.02)
    assert np.all(rgb[..., 2] == 0)  # a constant channel does not blow up


def test_manifest_carries_the_papers_figure_numbers(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    draw_image_figures(maps, 0, result, cfg, tmp_path / "figures", FAST)
    manifest = json.loads((tmp_path / "figures" / "img_one" / "figures.json").read_text())
    numbers = {f["name"]: f["paper_figure"] for f in manifest["figures"]}
    assert numbers["encoder_pca"] == 1 and numbers["global_comparison"] == 4
    assert [numbers[f"class-road_{s}"] for s in ("clustering", "clustering_raw", "comparison", "flips")] == [13, 14, 15, 16]
    assert [numbers[f"class-vehicle_{s}"] for s in ("clustering", "clustering_raw", "comparison", "flips")] == [17, 18, 19, 20]
    assert numbers["decoder_masks"] == 21 and numbers["mask-road-0"] == 22
    assert all(f["paper"] == f"Fig. {f['paper_figure']}" for f in manifest["figures"])


def test_paper_numbers_cover_1_to_24_and_other_classes_have_none():
    from engine.present.figures.view import paper_figure

    names = ["encoder_pca", "structural_clustering", "global_clustering", "global_comparison"]
    names += [f"class-{c}_{s}" for c in ("vegetation", "building", "road", "vehicle")
              for s in ("clustering", "clustering_raw", "comparison", "flips")]
    names += ["decoder_masks", "mask-road-0", "mask-road-1", "mask-road-2"]
    assert [paper_figure(n) for n in names] == list(range(1, 25))
    assert paper_figure("class-other_flips") is None and paper_figure("mask-road-3") is None


def layout_faults(fig, stem: str, dpi: float) -> list[str]:
    """What a reader would see cut or colliding in a laid-out figure: anything past the canvas, two axes (with their
    titles, tick labels and axis labels) overlapping, the suptitle or a legend on an axes, a title touching its panel."""
    from engine.present.layout import arrange

    arrange(fig, dpi)
    renderer = fig.canvas.get_renderer()
    px = fig.dpi
    axes = [ax for ax in fig.axes if ax.get_visible()]
    tight = {ax: ax.get_tightbbox(renderer) for ax in axes}
    blocks = [(f"legend {i}", leg.get_window_extent(renderer)) for i, leg in enumerate(fig.grid.legends.values())]
    if fig.grid.suptitle is not None:
        blocks.append(("suptitle", fig.grid.suptitle.get_window_extent(renderer)))
    faults = []
    w, h = fig.get_size_inches() * px
    for name, box in [(f"axes {i}", tight[ax]) for i, ax in enumerate(axes)] + blocks:
        if box.x0 < -1 or box.y0 < -1 or box.x1 > w + 1 or box.y1 > h + 1:
            faults.append(f"{stem}: {name} reaches past the canvas ({box.extents.round(1)} of {w:.0f} x {h:.0f} px)")
    named = [(f"axes {i}", tight[ax]) for i, ax in enumerate(axes)] + blocks
    for i, (a_name, a) in enumerate(named):
        for b_name, b in named[i + 1:]:
            if a.overlaps(b) and min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                faults.append(f"{stem}: {a_name} overlaps {b_name}")
    for i, ax in enumerate(axes):
        box = ax.get_window_extent(renderer)
        for text in ax.texts:  # the numbers written in a panel stay in it
            inner = text.get_window_extent(renderer)
            if text.get_bbox_patch() is not None:  # the box around the text, placed as drawing places it
                text.update_bbox_position_size(renderer)
                inner = text.get_bbox_patch().get_window_extent(renderer)
            if inner.x0 < box.x0 - 1 or inner.x1 > box.x1 + 1 or inner.y0 < box.y0 - 1 or inner.y1 > box.y1 + 1:
                faults.append(f"{stem}: the text {text.get_text()[:30]!r} runs out of axes {i} ({inner.extents.round(1)} in {box.extents.round(1)})")
        title = fig.grid.titles.get(ax)
        if title is not None and title.get_text() and title.get_window_extent(renderer).y0 < box.y1 + 1:
            faults.append(f"{stem}: the title of axes {i} touches its panel")
    return faults


def test_every_figure_fits_its_canvas_and_no_text_touches_another(tmp_path, monkeypatch):
    """Nothing drawn (legend, title, colourbar) reaches past the canvas or into another element, at the default size."""
    import engine.present.figures.draw as draw

    faults = []

    def checked_save(fig, folder, stem, formats, dpi):
        faults.extend(layout_faults(fig, stem, dpi))
        return real_save(fig, folder, stem, formats, dpi)

    real_save = draw.save
    monkeypatch.setattr(draw, "save", checked_save)
    maps, result, cfg = hand_case(tmp_path, with_similarity=True)
    records = draw_image_figures(maps, 0, result, cfg, tmp_path / "figures", FigureOptions(formats=("png", "pdf"), dpi=40))
    assert EXPECTED <= {r.name for r in records} and faults == []


def test_the_overlap_check_sees_a_title_in_its_panel_and_titles_that_collide():
    from engine.present.figures.panels import panel_title

    fig, (a, b) = new_figure(2, FigureOptions(panel_inches=2.0))
    panel_title(a, 0, "a title")
    panel_title(b, 1, "another")
    assert layout_faults(fig, "clean", 100) == []
    fig.grid.titles[b].set_y(0.9)  # the title pushed down into its panel
    fig.grid.titles[a].set_text("a title far too long for its panel, unwrapped, running into the next one")
    faults = layout_faults(fig, "broken", 100)
    assert any("axes 1 touches its panel" in f for f in faults), faults
    assert "broken: axes 0 overlaps axes 1" in faults


def test_flip_map_counts_and_rings_a_single_changed_token(tmp_path):
    maps, result, cfg = hand_case(tmp_path, changed_block=False)
    maps.labels[0, 2, 45, 15] = 3  # one token of the road region moves to cluster 3
    records = draw_image_figures(maps, 0, result, cfg, tmp_path / "f", replace(FAST, dpi=60, only=("class-road_flips",)))
    rgb = read_rgb(tmp_path / "f" / "img_one" / "class-road_flips.png")
    moved_to = CLASS_COLOURS[QUADRANT_CLASS[3]]
    # one cell of a 2-inch, 60 dpi panel is ~1.7 px wide; the ring makes it > 20 pixels in each panel
    assert colour_pixels(rgb, moved_to).sum() > 20
    assert "ringed" in records[0].caption


def test_worker_processes_draw_the_same_figures_and_manifest_as_one_process(tmp_path):
    from engine.present.figures.parallel import draw_sweep_figures

    maps, handed, cfg = hand_case(tmp_path)
    folders = {}
    for workers in (1, 2):
        out_cfg = replace(cfg, out=tmp_path / f"w{workers}")
        pages = draw_sweep_figures(SimpleNamespace(figures=handed), out_cfg, FAST, echo=lambda _: None, workers=workers)
        assert pages == [out_cfg.out / "figures" / "img_one" / "index.html"]
        folders[workers] = pages[0].parent
    one, two = (json.loads((folders[w] / "figures.json").read_text()) for w in (1, 2))
    assert [f["name"] for f in two["figures"]] == [f["name"] for f in one["figures"]]
    assert {f["name"] for f in one["figures"]} == EXPECTED
    for f in one["figures"]:
        assert np.array_equal(read_rgb(folders[1] / f["files"][0]), read_rgb(folders[2] / f["files"][0])), f["name"]


def test_a_figure_that_fails_in_a_worker_fails_the_drawing(tmp_path, monkeypatch):
    import engine.present.figures.draw as draw
    from engine.present.figures.parallel import draw_sweep_figures

    def broken(*args, **kwargs):
        raise ValueError("figure broke")

    monkeypatch.setattr(draw, "fig_flips", broken)  # the forked workers inherit the patch
    maps, handed, cfg = hand_case(tmp_path)
    with pytest.raises(ValueError, match="figure broke"):
        draw_sweep_figures(SimpleNamespace(figures=handed), cfg, FAST, echo=lambda _: None, workers=2)
    assert not (cfg.out / "figures" / "img_one" / "figures.json").exists()  # no manifest for a half-drawn image


def captured(monkeypatch) -> dict:
    """stem -> figure, for every per-image figure saved while the patch holds."""
    import engine.present.figures.draw as draw
    import engine.present.figures.masks as masks

    saved = {}

    def keep(real):
        def checked(fig, folder, stem, formats, dpi):
            saved[stem] = fig
            return real(fig, folder, stem, formats, dpi)
        return checked

    monkeypatch.setattr(draw, "save", keep(draw.save))
    monkeypatch.setattr(masks, "save", keep(masks.save))
    return saved


def test_mask_numbers_are_kept_apart_and_one_mask_is_singular(tmp_path, monkeypatch):
    from engine.present.figures.masks import LABEL_GAP, label_positions

    centres = [(0.5, 0.5), (0.51, 0.5), (0.5, 0.52), (0.9, 0.1), (0.99, 0.99)]
    placed = label_positions(centres)
    assert placed[0] == centres[0] and placed[3] == centres[3]  # the best mask, and one with room, stay put
    for i, (x, y) in enumerate(placed):
        assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
        assert all(np.hypot(x - u, y - v) >= LABEL_GAP - 1e-9 for u, v in placed[:i])
    saved = captured(monkeypatch)
    maps, result, cfg = hand_case(tmp_path)
    maps.scores[0, 0, 2] = 0.1  # road keeps one mask
    draw_image_figures(maps, 0, result, cfg, tmp_path / "f", replace(FAST, only=("decoder_masks",)))
    titles = [t.get_text().replace("\n", " ") for t in saved["decoder_masks"].grid.titles.values()]  # wrapped at 2 in
    assert "(b) road: 1 mask (score ≥ 0.5)" in titles and "(c) vehicle: 0 masks (score ≥ 0.5)" in titles


def test_flip_maps_carry_the_controls_from_the_rows(tmp_path, monkeypatch):
    import engine.present.figures.view as view_module

    row = {"scope": "road", "kept_queries": 2, "effective_tokens": 1080, "n_tokens": 5184, "flip_ratio": 0.0926,
           "flip_ratio_processed": 0.08, "flip_ratio_null": 0.123, "flip_ratio_null_processed": 0.1,
           "flip_ratio_reseed": 0.018, "flip_between": 0.10, "flip_within": 0.12, "flip_null_between": 0.09,
           "effect_instability": -0.02, "effect_instability_se": 0.004, "effect_null": 0.01, "effect_null_se": 0.003}
    monkeypatch.setattr(view_module, "read_image_metrics", lambda *a: {("road", 0.5, 0.3): row})
    saved = captured(monkeypatch)
    maps, result, cfg = hand_case(tmp_path)
    draw_image_figures(maps, 0, result, cfg, tmp_path / "f", replace(FAST, only=("class-road_flips",)))
    fig = saved["class-road_flips"]
    boxes = [t.get_text().replace("\n", " ") for ax in fig.grid.axes for t in ax.texts]  # wrapped to 2-inch panels
    assert ("100 of 1080 effective tokens changed (9.3%) controls: null 12.3%, reseed 1.8% "
            "effect -2.0 pp vs instability, +1.0 pp vs null (unstable seeds)") in boxes  # within 12% >= between 10%
    assert "100 of 1080 effective tokens changed (8.0%) controls: null 10.0%" in boxes  # processed: its own null
    title = fig.grid.suptitle.get_text().replace("\n", " ")
    assert "controls null 12.3%, reseed 1.8%" in title
    assert "effect -2.0 ± 0.4 pp vs instability, +1.0 ± 0.3 pp vs null (unstable seeds)" in title


def test_the_encoder_vs_datr_pair_marks_the_tokens_that_changed(tmp_path):
    from engine.present.palette import FLIP_COLOUR

    tint = np.round(0.4 * np.array(CLASS_COLOURS[QUADRANT_CLASS[3]]) + 0.6 * np.array(FLIP_COLOUR)).astype(np.uint8)
    counts = []
    for changed_block in (True, False):
        maps, result, cfg = hand_case(tmp_path, changed_block=changed_block)
        out = tmp_path / f"pair{changed_block}"
        (record,) = draw_image_figures(maps, 0, result, cfg, out, replace(FAST, dpi=60, only=("class-road_clustering_raw",)))
        rgb = read_rgb(out / "img_one" / "class-road_clustering_raw.png")
        counts.append(int((np.abs(rgb.astype(int) - tint).max(-1) <= 1).sum()))
        assert ("(100 here)" if changed_block else "(0 here)") in record.caption
    assert counts[0] > 100 and counts[1] == 0


def test_global_comparison_darkens_outside_the_effective_region(tmp_path):
    maps, result, cfg = hand_case(tmp_path)
    maps.effective[0, 1, :, 36:] = False  # the global scope acts on the left half only
    out = tmp_path / "f"
    draw_image_figures(maps, 0, result, cfg, out, replace(FAST, dpi=60, only=("global_comparison",)))
    rgb = read_rgb(out / "img_one" / "global_comparison.png").astype(int)
    for cluster, cls in ((1, QUADRANT_CLASS[1]), (3, QUADRANT_CLASS[3])):  # the right-hand quadrants: outside E
        full, half = np.array(CLASS_COLOURS[cls]), np.round(0.5 * np.array(CLASS_COLOURS[cls]))
        assert (np.abs(rgb - half).max(-1) <= 1).sum() > 100, cluster
        assert (np.abs(rgb - full).max(-1) == 0).sum() < (np.abs(rgb - half).max(-1) <= 1).sum(), cluster


def test_the_comparison_panel_has_a_two_dimensional_colour_key(tmp_path, monkeypatch):
    saved = captured(monkeypatch)
    maps, result, cfg = hand_case(tmp_path, with_similarity=True)
    draw_image_figures(maps, 0, result, cfg, tmp_path / "f", replace(FAST, only=("mask-road-0",)))
    fig = saved["mask-road-0"]
    key = fig.grid.side_axes[2]
    (image,) = key.images
    rgb = np.asarray(image.get_array())[..., :3].astype(int)  # row 0 at the top
    # decoder left to right (magenta), encoder bottom to top (green): black, magenta, green and white corners
    assert np.abs(rgb[-1, 0] - (0, 0, 0)).max() <= 8 and np.abs(rgb[-1, -1] - (255, 0, 255)).max() <= 8  # half a pixel in
    assert np.abs(rgb[0, 0] - (0, 255, 0)).max() <= 8 and np.abs(rgb[0, -1] - (255, 255, 255)).max() <= 8
    assert key.get_xlabel() == "decoder" and key.get_ylabel() == "encoder"
    assert not fig.legends  # the key replaces the categorical legend


def test_count_boxes_wrap_to_stay_in_their_panel():
    from engine.present.figures.panels import count_box

    text = "2 of 1220 effective tokens changed (0.2%)\ncontrols: null 0.2%\neffect -2.1 pp vs instability, +1.8 pp vs null"
    for inches in (3.0, 2.0):
        fig, (ax,) = new_figure(1, FigureOptions(panel_inches=inches))
        count_box(ax, text)
        assert layout_faults(fig, "box", 150) == []
        assert ax.texts[0].get_text().replace("\n", " ") == text.replace("\n", " ")  # wrapped between words only


def test_a_panel_composes_its_layers_as_drawing_them_one_by_one(tmp_path):
    """Layers on one grid are composed there first (premultiplied "over"); the pixels equal blending each layer in turn."""
    from engine.present.figures.panels import paint, show_image
    from engine.present.figures.raster import backdrop_pixels, sample

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (504, 504, 3), dtype=np.uint8)
    layers = [(rng.uniform(0, 1, (72, 72, 3)).astype(np.float32), rng.uniform(0, 1, (72, 72)).astype(np.float32)),
              (rng.uniform(0, 1, (72, 72, 3)).astype(np.float32), 0.5),
              (rng.uniform(0, 1, (288, 288, 3)).astype(np.float32), rng.uniform(0, 1, (288, 288)).astype(np.float32))]
    fig, (ax,) = new_figure(1, FigureOptions(panel_inches=2.0))
    show_image(ax, image, grey=True)
    for colours, alpha in layers:
        paint(ax, colours, alpha)
    ax.set_xlim(0.25, 0.75)  # a cropped view: composed over the part shown
    ax.set_ylim(0.75, 0.25)
    save(fig, tmp_path, "layers", ("png",), dpi=100)
    window, pixels = (0.25, 0.75, 0.25, 0.75), 200
    expected = backdrop_pixels(image, True, window, pixels).copy()
    for colours, alpha in layers:
        a = alpha if np.ndim(alpha) == 0 else sample(alpha, window, pixels)[..., None]
        expected = expected * (1 - a) + sample(colours, window, pixels) * a
    shown = np.asarray(fig.grid.rasters[ax].image.get_array())[..., :3].astype(int)
    assert np.abs(shown - np.round(expected * 255)).max() <= 1


def test_legend_columns_are_chosen_from_measured_label_widths():
    import matplotlib
    from matplotlib.patches import Patch

    from engine.present.layout import grid_figure, legend_width
    from engine.present.style import STYLE

    labels = ["cluster 0", "cluster 1 ≈ road", "cluster 2 ≈ building", "cluster 3 ≈ vegetation", "E: changed cluster"]
    with matplotlib.rc_context(STYLE):
        fig = grid_figure(2, 1, (3.0, 3.0))
        renderer = fig.canvas.get_renderer()
        for ncols in (1, 2, 3, 5):
            legend = fig.legend(handles=[Patch(label=label) for label in labels], ncols=ncols, frameon=False)
            measured = legend.get_window_extent(renderer).width / fig.dpi
            assert measured <= legend_width(labels, ncols, 8.0) <= 1.08 * measured, ncols  # never narrower than drawn
            legend.remove()
