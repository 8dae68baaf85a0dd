"""The paper's per-image figures, the manifest figures.json and the image's index.html."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.core.choices import GLOBAL
from engine.present.figures.masks import fig_decoder_masks, fig_mask
from engine.present.figures.panels import (
    changed_markers,
    cluster_legend,
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
from engine.present.palette import (
    FLIP_COLOUR,
    OUTSIDE_COLOUR,
    SAME_COLOUR,
    ClusterPalette,
    class_colour,
    class_name,
    class_rgb,
    cluster_palette,
    to_unit,
)
from engine.present.style import STYLE, save
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
    glob = find_slot(view.slots, GLOBAL, tau, alpha)
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
    panel_title(a, 0, "input, as the model sees it" if view.image is not None else "input (not kept)")
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
    suptitle(fig, view, f"Encoder structural clustering (PCA d={view.d}, k={view.k})")
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
        changed = difference_overlay(b, maps[j] != maps[0], eff, palette.rgb(maps[j]))
        panel_title(b, 1, f"DATR clustering ({slot.scope}), {kind}")
        shown = [maps[0], maps[j]]
        stem = f"class-{safe_name(slot.scope)}_clustering" + ("_raw" if raw else "")
        title = f"{slot.scope}: encoder vs DATR clustering ({kind})"
        extra = [("changed token in E (red tint)", FLIP_COLOUR)]
        caption = (f"Encoder clustering and the clustering of DATR_{slot.scope}(F) ({kind}); the white outline is the "
                   f"effective region E (mask weight ≥ 0.5) of the '{slot.scope}' prompt. In (b) the tokens of E whose "
                   f"cluster differs from (a) are tinted red and outlined (ringed when few) and counted ({changed} here), "
                   "so a pair that looks the same shows where it is not.")
    cluster_legend(fig, palette, shown, extra if raw is not None else None)
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title, caption)


def difference_overlay(ax, differs: np.ndarray, eff: np.ndarray, colours: np.ndarray) -> int:
    """The tokens of E whose cluster differs from the encoder's: tinted the changed-token red and outlined, ringed
    when few (a single token shows), counted in the panel; returns the count."""
    changed = eff & differs
    paint(ax, np.broadcast_to(np.array(FLIP_COLOUR, dtype=np.uint8), changed.shape + (3,)),
          np.where(changed, 0.6, 0.0).astype(np.float32))
    outline(ax, changed, colour="black", width=0.8)
    changed_markers(ax, changed, colours, limit=40)
    count_box(ax, f"{int(changed.sum())} of {int(eff.sum())} tokens in E changed")
    return int(changed.sum())


def fig_comparison(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions) -> FigureRecord:
    slot = view.slots[j]
    eff = view.effective[j]
    weights = view.mask_weights[slot.tau_index, slot.scope_index]
    is_global = slot.kind == GLOBAL
    fig, axes = new_figure(4, options, sides=None if is_global and view.gt is not None else {0: "colorbar"})
    if is_global and view.gt is not None:
        show_image(axes[0], view.image, grey=view.image is not None)
        paint(axes[0], class_rgb(view.gt), np.where(view.gt == 255, 0.0, 0.6).astype(np.float32))
        outline(axes[0], eff)
        panel_title(axes[0], 0, "ground truth, effective region E outlined")
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
    extra = [("E: same cluster", SAME_COLOUR), ("E: changed cluster", FLIP_COLOUR)]
    caption = ("Where the decoder acts (mask weight / GT), the encoder and DATR clusters (raw, aligned) and the "
               "tokens of the effective region E whose cluster changed.")
    if is_global and not eff.all():  # every panel darkened outside E, so which side of the outline is E reads at once
        shade = np.where(eff, 0.0, 0.5).astype(np.float32)
        for ax in axes:
            paint(ax, np.zeros(eff.shape + (3,), dtype=np.float32), shade)
        extra.append(("outside E (darkened)", OUTSIDE_COLOUR))
        caption += " Tokens outside E are darkened in every panel."
    cluster_legend(fig, palette, shown, extra)
    if is_global:
        stem, title = "global_comparison", "Global comparison: encoder vs global DATR"
    else:
        stem, title = f"class-{safe_name(slot.scope)}_comparison", f"{slot.scope}: encoder vs DATR"
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title, caption)


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
        "simulated": view.simulated,
        "has_gt": view.gt is not None,
        "has_encoder_similarity": view.encoder_similarity is not None,
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return path


