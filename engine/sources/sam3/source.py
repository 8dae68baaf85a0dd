"""SAM3 as a FeatureSource: batched image x prompt grounding, reduced on the device.

The prompts are encoded once (`forward_text`) when the source is made; each batch runs
`backbone.forward_image` once, then `forward_grounding` over the B x P grid of (image,
prompt) pairs in chunks of `grid_chunk` pairs, and each chunk is reduced on the device
right away (scores, pooled mask weights, union masks), so the 288x288 mask logits of only
one chunk are alive at a time. Loading lives in `build` and `checkpoint`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.core.choices import Autocast
from engine.core.config import DEFAULT_PROMPTS, GRID_CHUNK
from engine.core.devices import parse_device
from engine.core.errors import ConfigError
from engine.core.geometry import MASK_GRID, MODEL_SIDE, NUM_QUERIES, TOKEN_GRID
from engine.core.versions import package_version
from engine.data.preprocess import normalize_for_model
from engine.sources.base import SourceBatch
from engine.sources.sam3 import compat
from engine.sources.sam3.build import assert_on_device, build_random_sam3_model, load_sam3_model
from engine.sources.sam3.checkpoint import checkpoint_fingerprint, resolve_bpe_path
from kernels.grid import pool_to_tokens

MASK_THRESHOLD = 0.5  # a mask pixel is foreground at probability >= 0.5 (DESIGN: union of kept masks)


@dataclass(frozen=True)
class Sam3Config:
    checkpoint: Path | None
    bpe_path: Path | None = None
    device: str = "cpu"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    grid_chunk: int = GRID_CHUNK  # image x prompt pairs per forward_grounding call
    autocast: str = "auto"  # engine.core.choices.Autocast: bf16 on CUDA under auto, off on the CPU

    def __post_init__(self) -> None:
        if self.grid_chunk < 1:
            raise ConfigError(f"grid_chunk must be >= 1, got {self.grid_chunk}")
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ConfigError(f"prompts must be non-empty strings, got {self.prompts!r}")
        Autocast.parse(self.autocast, "autocast")


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run uses: bf16 on CUDA under "auto", none on the CPU."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


class Sam3Source:
    """SAM3 image model behind the FeatureSource contract (engine.sources.base)."""

    name = "sam3"

    def __init__(self, model: torch.nn.Module, config: Sam3Config):
        if getattr(model, "supervise_joint_box_scores", False):
            raise ConfigError("this SAM3 model has supervise_joint_box_scores = True: its pred_logits already include "
                              "the presence score, which the query score would count twice; build the image model "
                              "(sam3.build_sam3_image_model), not the video detector")
        self.model = model.eval()
        self.config = config
        self.prompts = tuple(config.prompts)
        self.device = next(model.parameters()).device
        assert_on_device(model, self.device)
        if parse_device(config.device) != self.device:
            raise ConfigError(f"the model is on {self.device} but the config asks for device {config.device!r}")
        self.autocast = autocast_dtype(config.autocast, self.device)
        self.random_weights = config.checkpoint is None
        # the prompts do not depend on the image: encode them once for the whole run
        with self._context():
            text = model.backbone.forward_text(list(self.prompts), device=self.device)
        self.text = {k: text[k] for k in ("language_features", "language_mask", "language_embeds")}
        assert self.text["language_features"].shape[1] == len(self.prompts), (
            f"language_features: got {tuple(self.text['language_features'].shape)} for {len(self.prompts)} prompts"
        )

    @classmethod
    def from_config(cls, config: Sam3Config, *, random_weights: bool = False) -> Sam3Source:
        """Load the checkpoint named in `config` (or, asked explicitly, random weights)."""
        if config.checkpoint is None:
            if not random_weights:
                raise ConfigError("the sam3 model needs --checkpoint PATH (sam3.pt)")
            return cls(build_random_sam3_model(config.bpe_path, config.device), config)
        return cls(load_sam3_model(config.checkpoint, config.bpe_path, config.device), config)

    def _context(self):
        # no_grad rather than inference_mode: what we hand on must allow in-place updates
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if self.autocast is not None:
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.autocast))
        return stack

    # -- the two stages, public so the benchmark can time them apart

    def encode_images(self, images: torch.Tensor) -> dict:
        """(B, 3, S, S) uint8 -> the backbone's output dict (vision features, FPN, pos. enc.)."""
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, (
            f"images must be (B, 3, S, S) uint8, got {images.dtype} {tuple(images.shape)}"
        )
        x = normalize_for_model(images.to(self.device, non_blocking=True))
        with self._context():
            return self.model.backbone.forward_image(x)

    def ground(
        self,
        backbone_out: dict,
        taus: tuple[float, ...],
        keep_mask_probs: bool = False,
    ) -> dict[str, torch.Tensor]:
        """forward_grounding over the B x P grid in chunks; each chunk reduced on the device.

        Returns tensors indexed by pair k = b * P + p: queries (K, Q, C) float32, scores
        (K, Q) float32, query_masks (K, Q, h, w) float16, union_masks (K, T, M, M) bool,
        and mask_probs (K, Q, M, M) float16 on request.
        """
        from sam3.model.data_misc import FindStage

        b = backbone_out["vision_features"].shape[0]
        p = len(self.prompts)
        side = backbone_out["vision_features"].shape[-1]
        pairs = b * p
        img_ids = torch.arange(b, device=self.device).repeat_interleave(p)  # image-major pair order
        text_ids = torch.arange(p, device=self.device).repeat(b)
        out: dict[str, torch.Tensor] = {}
        chunk = self.config.grid_chunk
        for start in range(0, pairs, chunk):
            stop = min(start + chunk, pairs)
            find = FindStage(
                img_ids=img_ids[start:stop], text_ids=text_ids[start:stop], input_boxes=None,
                input_boxes_mask=None, input_boxes_label=None, input_points=None, input_points_mask=None,
            )
            with self._context():
                result = self.model.forward_grounding(
                    backbone_out={**backbone_out, **self.text}, find_input=find, find_target=None,
                    geometric_prompt=self.model._get_dummy_prompt(num_prompts=stop - start),
                )
            with torch.no_grad():  # outside autocast: the reduction runs in float32
                reduced = self._reduce(result, taus, keep_mask_probs, side)
            del result
            for key, value in reduced.items():
                if key not in out:
                    out[key] = torch.empty((pairs, *value.shape[1:]), dtype=value.dtype, device=value.device)
                out[key][start:stop] = value
        return out

    def _reduce(self, result: dict, taus: tuple[float, ...], keep_mask_probs: bool, side: int) -> dict:
        n = result["queries"].shape[0]
        queries = result["queries"].float()  # (n, Q, C)
        presence = result["presence_logit_dec"].float().sigmoid()  # (n, 1)
        scores = result["pred_logits"].float()[..., 0].sigmoid() * presence  # (n, Q)
        probs = result["pred_masks"].float().sigmoid()  # (n, Q, M, M)
        assert probs.shape[:2] == scores.shape, f"pred_masks: got {tuple(probs.shape)} for scores {tuple(scores.shape)}"
        foreground = probs >= MASK_THRESHOLD
        union = torch.stack(
            [(foreground & (scores >= tau)[:, :, None, None]).any(dim=1) for tau in taus], dim=1
        ) if taus else torch.zeros((n, 0, *probs.shape[-2:]), dtype=torch.bool, device=probs.device)
        reduced = {
            "queries": queries,
            "scores": scores,
            "query_masks": pool_to_tokens(probs, grid=side).half(),
            "union_masks": union,
        }
        if keep_mask_probs:
            reduced["mask_probs"] = probs.half()
        return reduced

    def run_batch(
        self,
        images: torch.Tensor,
        image_ids: list[str],
        taus: tuple[float, ...],
        gt_mask: torch.Tensor | None = None,
        gt_tokens: torch.Tensor | None = None,
        keep_mask_probs: bool = False,
    ) -> SourceBatch:
        """(B, 3, S, S) uint8 images -> SourceBatch. The ground truth is not used."""
        b = images.shape[0]
        assert len(image_ids) == b, f"{len(image_ids)} image ids for {b} images"
        taus = tuple(float(t) for t in taus)
        backbone_out = self.encode_images(images)
        features = backbone_out["vision_features"].float()  # (B, C, h, w)
        grid = self.ground(backbone_out, taus, keep_mask_probs)
        del backbone_out
        p, q = len(self.prompts), grid["queries"].shape[1]
        mask_side = grid["union_masks"].shape[-1]
        if images.shape[-1] == MODEL_SIDE:  # the full model: the contract's fixed sizes
            assert features.shape[-2:] == (TOKEN_GRID, TOKEN_GRID), f"features: got {tuple(features.shape)}"
            assert mask_side == MASK_GRID and q == NUM_QUERIES, f"masks: got {mask_side}, queries: got {q}"

        def per_image(t: torch.Tensor) -> torch.Tensor:  # (B*P, ...) -> (B, P, ...)
            return t.view(b, p, *t.shape[1:])

        return SourceBatch(
            image_ids=list(image_ids),
            features=features,
            queries=per_image(grid["queries"]),
            scores=per_image(grid["scores"]),
            query_masks=per_image(grid["query_masks"]),
            union_masks=per_image(grid["union_masks"]).transpose(1, 2).contiguous(),  # (B, T, P, M, M)
            taus=taus,
            mask_probs=per_image(grid["mask_probs"]) if keep_mask_probs else None,
        )

    def describe(self) -> dict:
        """What run.json records about this source."""
        cfg = self.config
        return {
            "source": self.name,
            "checkpoint": checkpoint_fingerprint(cfg.checkpoint) if cfg.checkpoint is not None else None,
            "random_weights": self.random_weights,
            "bpe_path": str(resolve_bpe_path(cfg.bpe_path)),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "param_dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "autocast": str(self.autocast).replace("torch.", "") if self.autocast is not None else "off",
            "outputs_dtype": "float32 (query_masks, mask_probs: float16)",
            "prompts": list(self.prompts),
            "grid_chunk": cfg.grid_chunk,
            "compat_fixes": compat.applied_fixes(),
            "sam3_version": package_version("sam3"),
        }

