"""One image's inputs to the figures: its share of a batch's maps and the handed-over tensors, as numpy."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.core.choices import ENCODER
from engine.core.errors import ConfigError
from engine.core.files import file_stem
from engine.present.style import check_formats

DISPLAY_SIDE = 504  # backdrop pixels: 1008 / 2, more than a 3-inch panel shows at 150 dpi


@dataclass(frozen=True)
class FigureOptions:
    """What to draw: formats, resolution, which grid point, how many per-mask figures."""

    formats: tuple[str, ...] = ("png",)
    dpi: int = 150
    tau: float | None = None  # None: the first tau of the grid
    alpha: float | None = None  # None: the first alpha of the grid
    masks_per_prompt: int = 3  # per-mask figures for the top-scoring kept masks of each prompt
    panel_inches: float = 3.0
    only: tuple[str, ...] | None = None  # figure names to draw (e.g. ("structural_clustering",)); None: all
    # saved figures kept for the next figure of the same layout (engine.present.layout.pooled_figure); `replace`
    # hands the same pool on, so every figure one process draws with these options shares it
    pool: dict = field(default_factory=dict, compare=False, repr=False)

    def validate(self) -> FigureOptions:
        check_formats(self.formats)
        if self.masks_per_prompt < 0:
            raise ConfigError(f"masks_per_prompt: need >= 0, got {self.masks_per_prompt}")
        return self


@dataclass
class ImageView:
    """One image's share of a batch's maps, on the host as numpy (what every figure reads)."""

    image_id: str
    slots: list  # engine.analysis.Slot, one per entry of the problem axis
    d: int
    k: int
    labels: np.ndarray  # (M, H, W) int, slot 0 = encoder, others aligned to it
    labels_processed: np.ndarray  # (M, H, W) int, 3x3-filtered, aligned on the filtered maps
    effective: np.ndarray  # (M, H, W) bool
    mask_weights: np.ndarray  # (T, S, H, W) float
    encoder_pca: np.ndarray  # (H, W, 3) float
    gt: np.ndarray | None  # (H, W) class ids, 255 = ignore
    image: np.ndarray | None  # (S', S', 3) uint8, the model's input box-downsampled for display (S' <= 504)
    scores: np.ndarray | None  # (P, Q)
    mask_probs: np.ndarray | None  # (P, Q, 288, 288) full-resolution mask probabilities, when the sweep kept them
    query_masks: np.ndarray | None  # (P, Q, H, W) the same pooled to the token grid (BatchMaps.query_masks)
    encoder_similarity: np.ndarray | None  # (P, Q, H, W) cos(F_j, mask prototype) (BatchMaps.encoder_similarity)
    similarity_kept: np.ndarray | None  # (P, Q) bool, queries the similarity was computed for (BatchMaps.kept)
    prompts: tuple[str, ...]
    class_ids: tuple[int, ...]
    metrics: dict = field(default_factory=dict)  # (scope, tau, alpha) -> row dict from DIR/rows
    simulated: bool = False  # the run's numbers come from the simulated source (engine.run.record.is_simulated)

    def decoder_masks(self) -> np.ndarray | None:
        """(P, Q, h, w) mask probabilities: full resolution when kept, else pooled to the token grid."""
        return self.mask_probs if self.mask_probs is not None else self.query_masks

    def has_similarity(self, p: int, q: int) -> bool:
        if self.encoder_similarity is None:
            return False
        return self.similarity_kept is None or bool(self.similarity_kept[p, q])


# The paper numbers its per-class figures in class blocks of four (clustering, raw, comparison, flips).
PAPER_CLASS_BLOCK = {"vegetation": 5, "building": 9, "road": 13, "vehicle": 17}
PAPER_FIXED = {"encoder_pca": 1, "structural_clustering": 2, "global_clustering": 3, "global_comparison": 4,
               "decoder_masks": 21}
PAPER_CLASS_OFFSET = {"clustering": 0, "clustering_raw": 1, "comparison": 2, "flips": 3}
PAPER_FIRST_MASK, PAPER_MASKS = 22, 3  # masks 0, 1, 2 of a prompt: Figs. 22, 23, 24


def paper_figure(name: str) -> int | None:
    """The number of the paper figure a per-image figure reproduces, None where the paper has none (e.g. `other`)."""
    if name in PAPER_FIXED:
        return PAPER_FIXED[name]
    if m := re.fullmatch(r"class-(.+)_(clustering|clustering_raw|comparison|flips)", name):
        block = PAPER_CLASS_BLOCK.get(m.group(1))
        return None if block is None else block + PAPER_CLASS_OFFSET[m.group(2)]
    if (m := re.fullmatch(r"mask-.+-(\d+)", name)) and int(m.group(1)) < PAPER_MASKS:
        return PAPER_FIRST_MASK + int(m.group(1))
    return None


@dataclass
class FigureRecord:
    name: str
    files: list[str]  # relative to the image folder, one per format
    title: str
    caption: str
    paper: str = ""  # "Fig. 5", or "not in the paper" (derived from the name)
    paper_figure: int | None = None  # the paper's figure number (derived from the name)

    def __post_init__(self) -> None:
        self.paper_figure = paper_figure(self.name)
        self.paper = f"Fig. {self.paper_figure}" if self.paper_figure is not None else "not in the paper"



def image_view(maps, row: int, handed, cfg) -> ImageView:
    """Slice row `row` of a BatchMaps and the figure tensors of its image into numpy.

    handed: what the sweep kept for the figures (engine.run.sweep.FigureData: `images`,
    `mask_probs` by image id), or None.
    """
    image_id = image_id_of(maps, row)
    image = handed.images.get(image_id) if handed is not None else None
    probs = handed.mask_probs.get(image_id) if handed is not None else None
    scores = maps.scores[row]
    similarity = maps.encoder_similarity
    query_masks = maps.query_masks
    kept = maps.kept
    prompts = tuple(cfg.prompts)
    class_ids = tuple(cfg.class_ids)
    view = ImageView(
        image_id=image_id, slots=list(maps.slots), d=int(maps.d), k=int(maps.k),
        labels=_np(maps.labels[row]).astype(np.int64),
        labels_processed=_np(maps.labels_processed[row]).astype(np.int64),
        effective=_np(maps.effective[row]).astype(bool),
        mask_weights=_np(maps.mask_weights[row]).astype(np.float32),
        encoder_pca=_np(maps.encoder_pca[row]).astype(np.float32),
        gt=None if maps.gt_tokens is None else _np(maps.gt_tokens[row]).astype(np.int64),
        image=None if image is None else display_image(_np(image).transpose(1, 2, 0)),
        scores=None if scores is None else _np(scores).astype(np.float32),
        mask_probs=None if probs is None else _np(probs),
        query_masks=None if query_masks is None else _np(query_masks[row]),
        encoder_similarity=None if similarity is None else _np(similarity[row]).astype(np.float32),
        similarity_kept=None if kept is None or similarity is None else _np(kept[row]).astype(bool),
        prompts=prompts, class_ids=class_ids,
    )
    m = view.labels.shape[0]
    assert len(view.slots) == m, f"BatchMaps has {len(view.slots)} slots but labels carry {m}: got {tuple(maps.labels.shape)}"
    view.metrics = read_image_metrics(Path(cfg.out), image_id, view.d, view.k)
    view.simulated = run_simulated(cfg)
    return view


def run_simulated(cfg) -> bool:
    """Whether the sweep's numbers are simulated: its run.json (written when the sweep started), else its config."""
    from engine.run.record import is_simulated, read_run_json

    return is_simulated(read_run_json(Path(cfg.out)) or {"config": {"model": cfg.model}})


def image_id_of(maps, row: int) -> str:
    """The image id of a BatchMaps row."""
    return str(maps.image_ids[row])


def read_image_metrics(out: Path, image_id: str, d: int, k: int) -> dict:
    """(scope, tau, alpha) -> row of DIR/rows for this image at grid point (d, k); {} without rows."""
    files = sorted((out / "rows").glob("part-*.parquet"))
    if not files:
        return {}
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(files, format="parquet").to_table(
        filter=(pc.field("image_id") == image_id) & (pc.field("d") == d) & (pc.field("k") == k))
    return {(r["scope"], r["tau"], r["alpha"]): r for r in table.to_pylist()}


def _np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float16 stays float16 (mask_probs is big)
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def display_image(image: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """(S, S, 3) -> box-averaged by the smallest integer factor that brings it to <= max_side (display only)."""
    h, w = image.shape[:2]
    f = max(1, -(-max(h, w) // max_side))
    h2, w2 = h // f * f, w // f * f
    small = image[:h2, :w2].astype(np.float32).reshape(h2 // f, f, w2 // f, f, -1).mean((1, 3))
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def safe_name(text: str) -> str:
    return file_stem(text)  # one rule for file names: RunConfig checks the prompts' against it up front


def pick_point(slots, options: FigureOptions) -> tuple[float | None, float | None]:
    """(tau, alpha) of the figures: the requested ones, else the first of the grid."""
    datr = [s for s in slots if s.kind != ENCODER]
    if not datr:
        return None, None
    taus = list(dict.fromkeys(s.tau for s in datr))
    alphas = list(dict.fromkeys(s.alpha for s in datr))
    tau = taus[0] if options.tau is None else _grid_value(taus, options.tau, "tau")
    alpha = alphas[0] if options.alpha is None else _grid_value(alphas, options.alpha, "alpha")
    return tau, alpha


def _grid_value(values: list[float], wanted: float, name: str) -> float:
    for v in values:
        if abs(v - wanted) < 1e-9:
            return v
    raise ConfigError(f"figures: {name}={wanted} is not in the sweep's grid {values}")


def find_slot(slots, scope: str, tau, alpha) -> int | None:
    for j, s in enumerate(slots):
        if s.scope == scope and s.kind != ENCODER and s.tau == tau and s.alpha == alpha:
            return j
    return None


def top_masks(view: ImageView, p: int, tau, count: int) -> list[int]:
    """Query indices of prompt p's kept masks (score >= tau), best score first, at most count."""
    if view.scores is None or view.decoder_masks() is None or tau is None or count == 0:
        return []
    scores = view.scores[p]
    kept = np.flatnonzero(scores >= tau)
    return [int(q) for q in kept[np.argsort(-scores[kept], kind="stable")][:count]]

