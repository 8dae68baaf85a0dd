"""The decoder's masks: the overview of every kept mask (Fig. 21) and one figure per top mask (Figs. 22-24)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.analysis.layout import prompt_scope_index
from engine.present.figures.panels import (
    class_legend,
    cmap_rgb,
    heatmap,
    new_figure,
    outline,
    paint,
    panel_title,
    percentile_rgb,
    show_image,
    suptitle,
)
from engine.present.figures.view import FigureOptions, FigureRecord, ImageView, safe_name, top_masks
from engine.present.palette import class_colour, to_unit
from engine.present.style import save

LABEL_GAP = 0.075  # panel widths between the centres of two mask numbers (a 6 pt label is ~0.04 wide on 3 inches)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def label_positions(centres: list[tuple[float, float]], gap: float = LABEL_GAP) -> list[tuple[float, float]]:
    """Where to write each mask's number: at its centre, or the nearest point (rings of 8 directions around it, in
    the panel) at least `gap` from every number placed before it (numbers placed in order, so rank 0 stays put)."""
    placed: list[tuple[float, float]] = []
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    for cx, cy in centres:
        candidates = [(cx, cy)] + [(cx + r * np.cos(a), cy + r * np.sin(a)) for r in gap * np.arange(1, 8) for a in angles]
        inside = [(x, y) for x, y in candidates if 0.03 <= x <= 0.97 and 0.03 <= y <= 0.97] or [(cx, cy)]
        free = [c for c in inside if all(np.hypot(c[0] - x, c[1] - y) >= gap for x, y in placed)]
        placed.append(free[0] if free else inside[0])
    return placed


def draw_prompt_masks(ax, view: ImageView, masks: np.ndarray, p: int, tau) -> int:
    """Prompt p's kept masks in its class colour, each outlined and numbered by score rank (numbers kept apart, with a
    leader line where one had to move); returns the number of masks."""
    order = top_masks(view, p, tau, view.scores.shape[1])
    overlay = np.zeros(masks.shape[-2:] + (4,), dtype=np.float32)
    colour = to_unit(class_colour(view.class_ids[p]))
    centres, ranks = [], []
    for rank, q in enumerate(order):
        region = masks[p, q] >= 0.5
        if not region.any():
            continue
        overlay[region, :3] = colour
        overlay[region, 3] = np.minimum(overlay[region, 3] + 0.35, 0.85)
        outline(ax, region, colour="black", width=0.5)
        ys, xs = np.nonzero(region)
        centres.append(((xs.mean() + 0.5) / region.shape[1], (ys.mean() + 0.5) / region.shape[0]))
        ranks.append(rank)
    paint(ax, overlay)
    for rank, (cx, cy), (x, y) in zip(ranks, centres, label_positions(centres), strict=True):
        if (x, y) != (cx, cy):
            ax.plot([cx, x], [cy, y], color="black", linewidth=0.5, zorder=3)
        ax.text(x, y, str(rank), fontsize=6, ha="center", va="center", color="black", zorder=4,
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    return len(order)


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
            union = view.mask_weights[0, prompt_scope_index(p)] >= 0.5
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
            count = draw_prompt_masks(ax, view, masks, p, tau)
            panel_title(ax, p + 1, f"{prompt}: {plural(count, 'mask')} (score ≥ {tau:g})")
        else:
            paint(ax, cmap_rgb(view.mask_weights[0, prompt_scope_index(p)], "magma"), 0.65)
            panel_title(ax, p + 1, f"{prompt}: pooled mask weight")
    class_legend(fig, list(view.class_ids))
    suptitle(fig, view, "Decoder masks overview" + (f" (τ={tau:g})" if tau is not None else ""))
    files = save(fig, folder, "decoder_masks", options.formats, options.dpi)
    caption = ("Every kept decoder mask (score ≥ τ, probability ≥ 0.5) per prompt in the prompt's class colour, outlined "
               "and numbered by score rank (overlaps stack darker; a number that would cover another is moved aside "
               "with a line to its mask); panel (a) overlays all prompts.")
    if have_probs and view.mask_probs is None:
        caption += " Full-resolution masks were not kept for this image: the masks pooled to the 72×72 token grid are shown."
    if not have_probs:
        caption = "No per-query masks were handed over for this image; the pooled mask weights W_p are shown instead."
    return FigureRecord("decoder_masks", files, "Decoder masks overview", caption)


def colour_key(fig, ax) -> None:
    """Panel (c)'s two-dimensional colour key beside it: decoder activation left to right, encoder similarity bottom to
    top, each pixel the colour the comparison gives that pair (composed at the key's pixels; drawn once on a reused
    figure)."""
    from engine.present.figures.raster import panel_image
    from engine.present.layout import SIDES

    cax = fig.grid.side_axes[fig.grid.axes.index(ax)]
    if fig.grid.colorbars.get(cax) == ("key",):
        return
    pixels = max(2, round(SIDES["key"][1] * fig.dpi))
    ramp = (np.arange(pixels, dtype=np.float32) + 0.5) / pixels
    decoder, encoder = np.meshgrid(ramp, ramp[::-1])  # row 0 at the top: the encoder's maximum
    rgba = np.full((pixels, pixels, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.round(255 * np.dstack([decoder, encoder, decoder]))
    panel_image(cax).set_data(rgba)
    cax.set_xticks([0, 1], ["0", "1"], fontsize=7)
    cax.set_yticks([0, 1], ["max", "min"], fontsize=7)
    cax.set_xlabel("decoder", fontsize=7, labelpad=1)
    cax.set_ylabel("encoder", fontsize=7, labelpad=1)
    cax.set_title("key", fontsize=7)
    fig.grid.colorbars[cax] = ("key",)


def fig_mask(view: ImageView, p: int, q: int, rank: int, folder: Path, options: FigureOptions) -> FigureRecord:
    prompt = view.prompts[p]
    probs = view.decoder_masks()[p, q].astype(np.float32)  # (288, 288), or (72, 72) pooled
    similarity = view.encoder_similarity[p, q] if view.has_similarity(p, q) else None
    region = probs >= 0.5
    if similarity is not None:
        fig, (a, b, c) = new_figure(3, options, sides={0: "colorbar", 1: "colorbar", 2: "key"})
        heatmap(fig, a, similarity, "viridis", "cosine similarity", -1.0, 1.0)
        panel_title(a, 0, "encoder similarity")
        heatmap(fig, b, probs, "magma", "mask probability", 0.0, 1.0, image=view.image)
        panel_title(b, 1, "decoder activation")
        # magenta (red + blue) = decoder activation, green = encoder similarity (min-max scaled): white where both
        # are high -- the colour-blind-safe pair in place of red / green
        sim_up = np.repeat(np.repeat(similarity, probs.shape[0] // similarity.shape[0], 0), probs.shape[1] // similarity.shape[1], 1)
        lo, hi = float(sim_up.min()), float(sim_up.max())
        paint(c, np.clip(np.dstack([probs, (sim_up - lo) / max(hi - lo, 1e-12), probs]), 0, 1))
        outline(c, region, colour="orange", width=0.8)
        panel_title(c, 2, "decoder (magenta) and encoder (green)")
        colour_key(fig, c)
        caption = ("(a) cosine similarity of every encoder token to the mask-weighted mean encoder feature; (b) the "
                   "decoder's mask probability over the image; (c) both at once, read with the key beside it: the "
                   "decoder's probability in magenta (left to right), the encoder similarity scaled between its minimum "
                   "and maximum in green (bottom to top), white where both are high, black where both are low; orange "
                   "outline = mask probability ≥ 0.5.")
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
    stem = f"mask-{safe_name(prompt)}-{rank}"
    title = f"{prompt} mask {rank}: decoder attention"
    suptitle(fig, view, f"{title} (query {q}, score {float(view.scores[p, q]):.3f})")
    files = save(fig, folder, stem, options.formats, options.dpi)
    return FigureRecord(stem, files, title, caption)
