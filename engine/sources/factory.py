"""The one place a run's configuration becomes a FeatureSource (the feature cache is read by the sweep)."""

from __future__ import annotations

import torch

from engine.core.config import RunConfig


def build_source(cfg: RunConfig, device: torch.device):
    """The simulated stand-in or SAM3 (checkpoint loaded strictly) on `device`, as cfg.model asks."""
    if cfg.model == "simulated":
        from engine.sources.simulated import SimulatedSource

        return SimulatedSource(cfg.prompts, cfg.class_ids, device, cfg.simulated)
    from engine.sources.sam3.source import Sam3Config, Sam3Source

    return Sam3Source.from_config(Sam3Config(checkpoint=cfg.checkpoint, bpe_path=cfg.bpe_path, device=str(device),
                                             prompts=cfg.prompts, grid_chunk=cfg.grid_chunk))
