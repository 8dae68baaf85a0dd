"""The paper's per-image figures, the manifest figures.json and the image's index.html."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.present.figures.panels import (
    changed_markers,
    class_legend,
    cluster_legend,
    cmap_rgb,
    count_box,
    flip_count,
    heatmap,
    new_figure,
    outline,
    paint,
    panel_title,
    percentile_rgb,
    show_image,
    show_labels,
    suptitle,
    zoom_to,
)
from engine.present.figures.view import (
    FigureOptions,
    FigureRecord,
    ImageView,
    find_slot,
    image_view,
    pick_point,
    safe_name,
    top_masks,
)
from engine.present.html import write_image_page
from engine.present.layout import set_suptitle
from engine.present.palette import (
    DECODER_COLOUR,
    ENCODER_COLOUR,
    FLIP_COLOUR,
    SAME_COLOUR,
    ClusterPalette,
    class_colour,
    class_name,
    class_rgb,
    cluster_palette,
    to_unit,
)
from engine.present.style import STYLE, save
from engine.run.record import is_simulated, read_run_json
from kernels.grid import IGNORE


def draw_image_figures(maps, row: int, handed, cfg, out_dir: Path, options: FigureOptions | None = None) -> list[FigureRecord]:
    """Every per-image figure for entry `row` of `maps` (a BatchMaps) into out_dir/<image_id>/, in this process.

    handed: the sweep's FigureData (the model inputs and full-resolution masks kept for figures).
    """
    options = (options or FigureOptions()).validate()
    view = image_view(maps, row, handed, cfg)
    folder = image_folder(out_dir, view)
    records = draw_view(view, folder, options)
    finish_image(folder, view, records, cfg)
    return records


def image_folder(out_dir: Path, view: ImageView) -> Path:
    folder = Path(out_dir) / safe_name(view.image_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def finish_image(folder: Path, view: ImageView, records: list[FigureRecord], cfg) -> None:
    """The image's manifest (figures.json) and page (index.html)."""
    write_manifest(folder, view, records, cfg)
    write_image_page(folder)


def draw_view(view: ImageView, folder: Path, options: FigureOptions) -> list[FigureRecord]:
    """Draw the figures of `figure_plan` that options.only selects (all when None), in plan order."""
    import matplotlib

    records = []
    with matplotlib.rc_context(STYLE):
        for name, draw in figure_plan(view, folder, options):
            if options.only is None or name in options.only:
                records.append(draw())
                assert records[-1].name == name, f"figure {name} saved as {records[-1].name}"
    return records


def figure_plan(view: ImageView, folder: Path, options: FigureOptions) -> list[tuple[str, Callable[[], FigureRecord]]]:
    """(name, draw) of every figure of one image, in the paper's order."""
    tau, alpha = pick_point(view.slots, options)
    glob = find_slot(view.slots, "global", tau, alpha)
    palette = cluster_palette(view.labels[0], view.k, view.gt)
    plan = [("encoder_pca", lambda: fig_encoder_pca(view, folder, options)),
            ("structural_clustering", lambda: fig_structural(view, palette, folder, options))]
    if glob is not None:
        plan += [("global_clustering", lambda: fig_scope_clustering(view, palette, glob, folder, options, raw=None)),
                 ("global_comparison", lambda: fig_comparison(view, palette, glob, folder, options))]
    for prompt in view.prompts:
        j = find_slot(view.slots, prompt, tau, alpha)
        if j is None:
            continue
        stem = f"class-{safe_name(prompt)}"
        plan += [(f"{stem}_clustering", lambda j=j: fig_scope_clustering(view, palette, j, folder, options, raw=False)),
                 (f"{stem}_clustering_raw", lambda j=j: fig_scope_clustering(view, palette, j, folder, options, raw=True)),
                 (f"{stem}_comparison", lambda j=j: fig_comparison(view, palette, j, folder, options)),
                 (f"{stem}_flips", lambda j=j: fig_flips(view, palette, j, folder, options))]
    plan.append(("decoder_masks", lambda: fig_decoder_masks(view, folder, options, tau)))
    for p, prompt in enumerate(view.prompts):
        for rank, q in enumerate(top_masks(view, p, tau, options.masks_per_prompt)):
            plan.append((f"mask-{safe_name(prompt)}-{rank}", lambda p=p, q=q, rank=rank: fig_mask(view, p, q, rank, folder, options)))
    return plan


def fig_encoder_pca(view: ImageView, folder: Path, options: FigureOptions) -> FigureRecord:
    fig, (a, b) = new_figure(2, options)
    show_image(a, view.image)
    panel_title(a, 0, "input (1008×1008, as the model sees it)" if view.image is not None else "input (not kept)")
    paint(b, percentile_rgb(view.encoder_pca))
    panel_title(b, 1, "encoder features, PCA 1–3 → RGB")
    suptitle(fig, view, "Encoder features")
    files = save(fig, folder, "encoder_pca", options.formats, options.dpi)
    return FigureRecord("encoder_pca", files, "Encoder features",
                        "Encoder vision features (256×72×72); the first three principal components shown as RGB, "
                        "each stretched between its 1st and 99th percentile.")


def fig_structural(view: ImageView, palette: ClusterPalette, folder: Path, options: FigureOptions) -> FigureRecord:
    n = 3 if view.gt is not None else 2
    fig, axes = new_figure(n, options)
    show_labels(axes[0], view.labels_processed[0], palette)
    panel_title(axes[0], 0, "processed (3×3 plurality filter)")
    show_labels(axes[1], view.labels[0], palette)
    panel_title(axes[1], 1, "raw KMeans labels")
    extra = []
    if view.gt is not None:
        paint(axes[2], class_rgb(view.gt))
        panel_title(axes[2], 2, "ground truth (token grid)")
        extra = [("GT: " + class_name(c), class_colour(c)) for c in sorted(set(np.unique(view.gt).tolist()) - {IGNORE})]
    cluster_legend(fig, palette, [view.labels[0], view.labels_processed[0]], extra)
    set_suptitle(fig, f"Encoder structural clustering (PCA d={view.d}, k={view.k}) — {view.image_id}")
    files = save(fig, folder, "structural_clustering", options.formats, options.dpi)
    return FigureRecord("structural_clustering", files, "Encoder structural clustering",
                        "KMeans on the PCA-reduced encoder tokens, processed and raw. Cluster colours follow the GT class "
                        "each cluster overlaps most (one-to-one matching, display only).")


def fig_scope_clustering(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions,
                         raw: bool | None) -> FigureRecord:
    """raw=None: the global figure (processed | raw of one scope); raw=True/False: encoder | DATR_p."""
    slot = view.slots[j]
    eff = view.effective[j]
    fig, (a, b) = new_figure(2, options)
    if raw is None:
        show_labels(a, view.labels_processed[j], palette)
        panel_title(a, 0, "global DATR clustering, processed")
        show_labels(b, view.labels[j], palette)
        panel_title(b, 1, "global DATR clustering, raw")
        shown = [view.labels_processed[j], view.labels[j]]
        stem, title = "global_clustering", "Global DATR clustering"
        caption = ("KMeans on DATR(F) with one softmax over the kept queries of all prompts; labels aligned to the "
                   "encoder clustering (Hungarian), processed and raw.")
    else:
        maps = view.labels if raw else view.labels_processed
        kind = "raw" if raw else "processed"
        show_labels(a, maps[0], palette)
        outline(a, eff)
        panel_title(a, 0, f"encoder clustering, {kind}")
        show_labels(b, maps[j], palette)
        outline(b, eff)
        panel_title(b, 1, f"DATR clustering ({slot.scope}), {kind}")
        shown = [maps[0], maps[j]]
        stem = f"class-{safe_name(slot.scope)}_clustering" + ("_raw" if raw else "")
        title = f"{slot.scope}: encoder vs DATR clustering ({kind})"
        caption = (f"Encoder clustering and the clustering of DATR_{slot.scope}(F) ({kind}); the white outline is the "
                   f"effective region E (mask weight ≥ 0.5) of the '{slot.scope}' prompt.")
    cluster_legend(fig, palette, shown)
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title, caption)


def fig_comparison(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions) -> FigureRecord:
    slot = view.slots[j]
    eff = view.effective[j]
    weights = view.mask_weights[slot.tau_index, slot.scope_index]
    is_global = slot.kind == "global"
    fig, axes = new_figure(4, options, sides=None if is_global and view.gt is not None else {0: "colorbar"})
    if is_global and view.gt is not None:
        show_image(axes[0], view.image, grey=view.image is not None)
        paint(axes[0], class_rgb(view.gt), np.where(view.gt == 255, 0.0, 0.6).astype(np.float32))
        outline(axes[0], eff)
        panel_title(axes[0], 0, "ground truth, effective region outlined")
    else:
        heatmap(fig, axes[0], weights, "magma", "mask weight W", 0.0, 1.0, image=view.image)
        outline(axes[0], eff, colour="white")
        panel_title(axes[0], 0, "mask weight W, E outlined")
    for ax, index, lab, name in ((axes[1], 1, view.labels[0], "encoder"), (axes[2], 2, view.labels[j], "DATR")):
        show_image(ax, view.image, grey=True)
        show_labels(ax, lab, palette, inside=eff if not is_global else None, opacity=0.85 if not is_global else 1.0)
        outline(ax, eff, colour="black", width=0.6)
        panel_title(ax, index, f"{name} clusters" + (" in E" if not is_global else ""))
    show_image(axes[3], view.image, grey=True)
    changed = eff & (view.labels[j] != view.labels[0])
    agree = np.zeros(eff.shape + (4,), dtype=np.float32)
    agree[eff & ~changed] = (*to_unit(SAME_COLOUR), 0.55)
    agree[changed] = (*to_unit(FLIP_COLOUR), 0.95)
    paint(axes[3], agree)
    changed_markers(axes[3], changed, np.broadcast_to(np.array(FLIP_COLOUR, dtype=np.uint8), changed.shape + (3,)))
    panel_title(axes[3], 3, "agreement in E (raw)")
    count_box(axes[3], f"{int(changed.sum())} of {int(eff.sum())} changed")
    shown = [view.labels[0], view.labels[j]] if is_global else [view.labels[0][eff], view.labels[j][eff]]
    cluster_legend(fig, palette, shown, [("E: same cluster", SAME_COLOUR), ("E: changed cluster", FLIP_COLOUR)])
    if is_global:
        stem, title = "global_comparison", "Global comparison: encoder vs global DATR"
    else:
        stem, title = f"class-{safe_name(slot.scope)}_comparison", f"{slot.scope}: encoder vs DATR"
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title,
                        "Where the decoder acts (mask weight / GT), the encoder and DATR clusters (raw, aligned) and the "
                        "tokens of the effective region E whose cluster changed.")


def fig_flips(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions) -> FigureRecord:
    slot = view.slots[j]
    eff = view.effective[j]
    fig, axes = new_figure(2, options)
    shown = []
    zoomed = False
    for index, (maps, kind) in enumerate(((view.labels, "raw"), (view.labels_processed, "processed"))):
        ax = axes[index]
        changed = eff & (maps[j] != maps[0])
        show_image(ax, view.image, grey=True)
        show_labels(ax, maps[j], palette, inside=changed, opacity=1.0)
        changed_markers(ax, changed, palette.rgb(maps[j]))
        outline(ax, eff, colour="black", width=0.8)
        zoomed = zoom_to(ax, eff) or zoomed
        panel_title(ax, index, f"{kind}: changed tokens in E")
        count_box(ax, flip_count(view, slot, int(changed.sum()), int(eff.sum()), processed=kind == "processed"))
        shown.append(maps[j][changed])
    cluster_legend(fig, palette, [s for s in shown if s.size] or [np.zeros(0, dtype=np.int64)],
                   title="cluster a changed token moved to")
    stem = f"class-{safe_name(slot.scope)}_flips"
    title = f"{slot.scope}: DATR-induced cluster changes"
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title,
                        "Tokens of the effective region E (black outline) whose aligned DATR cluster differs from the "
                        "encoder cluster, coloured by the cluster they moved to and ringed so that a single token shows; "
                        "raw and processed labels; the count is written in each panel."
                        + (" The panels are cropped to E's bounding box." if zoomed else ""))


def fig_decoder_masks(view: ImageView, folder: Path, options: FigureOptions, tau) -> FigureRecord:
    p_count = len(view.prompts)
    fig, axes = new_figure(p_count + 1, options, ncols=min(p_count + 1, 3))
    masks = view.decoder_masks()
    have_probs = masks is not None and view.scores is not None and tau is not None
    # (a) every prompt's kept masks in its class colour; later prompts drawn over earlier ones
    show_image(axes[0], view.image, grey=True)
    overlay = None
    for p, cid in enumerate(view.class_ids):
        if have_probs:
            kept = view.scores[p] >= tau
            union = (masks[p][kept] >= 0.5).any(0) if kept.any() else None
        else:
            union = view.mask_weights[0, 1 + p] >= 0.5
        if union is not None and union.any():
            overlay = np.zeros(union.shape + (4,), dtype=np.float32) if overlay is None else overlay
            overlay[union] = (*to_unit(class_colour(cid)), 0.7)
    if overlay is not None:
        paint(axes[0], overlay)
    panel_title(axes[0], 0, "all prompts (mask prob. ≥ 0.5)" if have_probs else "all prompts (pooled weight ≥ 0.5)")
    for p, prompt in enumerate(view.prompts):
        ax = axes[p + 1]
        show_image(ax, view.image, grey=True)
        if have_probs:
            # every mask in the prompt's class colour (colour = class, in every figure); each mask outlined and
            # numbered by score rank, so overlapping masks stack darker and stay apart
            order = top_masks(view, p, tau, view.scores.shape[1])
            overlay = np.zeros(masks.shape[-2:] + (4,), dtype=np.float32)
            colour = to_unit(class_colour(view.class_ids[p]))
            for rank, q in enumerate(order):
                region = masks[p, q] >= 0.5
                if not region.any():
                    continue
                overlay[region, :3] = colour
                overlay[region, 3] = np.minimum(overlay[region, 3] + 0.35, 0.85)
                outline(ax, region, colour="black", width=0.5)
                ys, xs = np.nonzero(region)
                ax.text((xs.mean() + 0.5) / region.shape[1], (ys.mean() + 0.5) / region.shape[0], str(rank),
                        fontsize=6, ha="center", va="center", color="black",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
            paint(ax, overlay)
            panel_title(ax, p + 1, f"{prompt}: {len(order)} masks (score ≥ {tau:g})")
        else:
            weights = view.mask_weights[0, 1 + p]
            paint(ax, cmap_rgb(weights, "magma"), 0.65)
            panel_title(ax, p + 1, f"{prompt}: pooled mask weight")
    class_legend(fig, list(view.class_ids))
    set_suptitle(fig, f"Decoder masks overview — {view.image_id}" + (f" (τ={tau:g})" if tau is not None else ""))
    files = save(fig, folder, "decoder_masks", options.formats, options.dpi)
    caption = ("Every kept decoder mask (score ≥ τ, probability ≥ 0.5) per prompt in the prompt's class colour, outlined "
               "and numbered by score rank (overlaps stack darker); panel (a) overlays all prompts.")
    if have_probs and view.mask_probs is None:
        caption += " Full-resolution masks were not kept for this image: the masks pooled to the 72×72 token grid are shown."
    if not have_probs:
        caption = "No per-query masks were handed over for this image; the pooled mask weights W_p are shown instead."
    return FigureRecord("decoder_masks", files, "Decoder masks overview", caption)


def fig_mask(view: ImageView, p: int, q: int, rank: int, folder: Path, options: FigureOptions) -> FigureRecord:
    prompt = view.prompts[p]
    probs = view.decoder_masks()[p, q].astype(np.float32)  # (288, 288), or (72, 72) pooled
    similarity = view.encoder_similarity[p, q] if view.has_similarity(p, q) else None
    region = probs >= 0.5
    if similarity is not None:
        fig, (a, b, c) = new_figure(3, options, sides={0: "colorbar", 1: "colorbar"})
        heatmap(fig, a, similarity, "viridis", "cosine similarity", -1.0, 1.0)
        panel_title(a, 0, "encoder similarity")
        heatmap(fig, b, probs, "magma", "mask probability", 0.0, 1.0, image=view.image)
        panel_title(b, 1, "decoder activation")
        # magenta (red + blue) = decoder activation, green = encoder similarity (min-max scaled): white where both
        # are high -- the colour-blind-safe pair in place of red / green
        sim_up = np.repeat(np.repeat(similarity, probs.shape[0] // similarity.shape[0], 0), probs.shape[1] // similarity.shape[1], 1)
        lo, hi = float(sim_up.min()), float(sim_up.max())
        composite = np.dstack([probs, (sim_up - lo) / max(hi - lo, 1e-12), probs])
        paint(c, np.clip(composite, 0, 1))
        outline(c, region, colour="orange", width=0.8)
        panel_title(c, 2, "comparison: decoder magenta, encoder green")
        class_legend(fig, [], [("decoder only", DECODER_COLOUR), ("encoder only", ENCODER_COLOUR),
                               ("both", (255, 255, 255)), ("neither", (0, 0, 0))])
        caption = ("(a) cosine similarity of every encoder token to the mask-weighted mean encoder feature; (b) the "
                   "decoder's mask probability over the image; (c) both at once: magenta = decoder only, green = encoder "
                   "only, white = both, black = neither; orange outline = mask probability ≥ 0.5.")
    else:
        fig, (b, c) = new_figure(2, options, sides={0: "colorbar"})
        heatmap(fig, b, probs, "magma", "mask probability", 0.0, 1.0, image=view.image)
        panel_title(b, 0, "decoder activation")
        paint(c, percentile_rgb(view.encoder_pca))
        outline(c, region, colour="white", width=0.8)
        panel_title(c, 1, "mask on encoder PCA → RGB")
        caption = ("(a) the decoder's mask probability over the image; (b) the mask outline (probability ≥ 0.5) on the "
                   "encoder features' PCA → RGB. The encoder-similarity heatmap needs BatchMaps.encoder_similarity, "
                   "which this run did not hand over.")
    if view.mask_probs is None:
        caption += " The decoder activation is the mask pooled to the 72×72 token grid (full resolution was not kept)."
    score = float(view.scores[p, q])
    stem = f"mask-{safe_name(prompt)}-{rank}"
    title = f"{prompt} mask {rank}: decoder attention"
    set_suptitle(fig, f"{title} (query {q}, score {score:.3f}) — {view.image_id}")
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title, caption)


# ----------------------------------------------------------------------------------------------
# Manifest


def write_manifest(folder: Path, view: ImageView, records: list[FigureRecord], cfg) -> Path:
    """folder/figures.json; figures drawn earlier for the same image and not redrawn now are kept."""
    path = folder / "figures.json"
    figures = [r.__dict__ for r in records]
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("image_id") == view.image_id:
            drawn = {r.name for r in records}
            kept = [f for f in old.get("figures", []) if f["name"] not in drawn and all((folder / x).exists() for x in f["files"])]
            figures = kept + figures
    payload = {
        "image_id": view.image_id,
        "d": view.d, "k": view.k,
        "prompts": list(view.prompts),
        "simulated": is_simulated(read_run_json(cfg.out) or {"config": {"model": cfg.model}}),
        "has_gt": view.gt is not None,
        "has_encoder_similarity": view.encoder_similarity is not None,
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return path


