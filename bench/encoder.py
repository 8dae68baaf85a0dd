"""Throughput of the SAM3 stages at full size: the backbone, and grounding over 5 prompts.

Random weights (`random_weights=True`) time exactly the same arithmetic as the real
checkpoint, so the benchmark needs no download. Synthetic uint8 images (1008 x 1008) are
made on the device; one warm-up batch per stage is run and not timed; CUDA times come
from events after a synchronize.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from bench.machine import machine_info
from engine.core.config import DEFAULT_PROMPTS, GRID_CHUNK
from engine.core.devices import parse_device
from engine.core.errors import ConfigError
from engine.core.geometry import MODEL_SIDE
from engine.sources.sam3.build import build_random_sam3_model, load_sam3_model
from engine.sources.sam3.source import Sam3Config, Sam3Source

DEFAULT_IMAGES_CPU = 1
DEFAULT_IMAGES_GPU = 16
# measured with `datr bench encoder --random-weights` at batch 1 on the project's 2-core CPU VM (issue 22)
MEMORY_NOTE = ("bench encoder: full-size SAM3 needs about 6 GB of memory at batch 1 (6.1 GB peak measured on a CPU, "
               "more per image at larger batches) and takes about 5 minutes on 2 CPU cores; stages: 1 build, "
               "2 warm-up, 3 timed batches")


@dataclass(frozen=True)
class EncoderBenchConfig:
    random_weights: bool = False
    checkpoint: Path | None = None
    bpe_path: Path | None = None
    device: str = "cpu"
    images: int | None = None  # None: 1 on a CPU, 16 on a GPU
    batch_size: int = 1
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    grid_chunk: int = GRID_CHUNK
    seed: int = 0
    image_side: int = MODEL_SIDE  # tests only: a smaller side for the tiny model
    model_factory: Callable[[str], torch.nn.Module] | None = None  # tests only: the tiny model


def _timed(device: torch.device, fn: Callable, *args) -> tuple[float, object]:
    """(seconds, result) of one call fn(*args), device work included."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        result = fn(*args)
        stop.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(stop) / 1000.0, result
    begin = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - begin, result


def run_encoder_bench(cfg: EncoderBenchConfig, echo: Callable[[str], object] = print,
                      batch_sizes: tuple[int, ...] | None = None) -> dict:
    """Time the backbone and the 5-prompt grounding; return the bench JSON object.

    batch_sizes: time each of these on the one built model (the GPU check); the report
    is the last one's, with every one's under "per_batch_size". None: cfg.batch_size.
    """
    if cfg.random_weights == (cfg.checkpoint is not None):
        raise ConfigError("bench encoder needs exactly one of --random-weights or --checkpoint PATH")
    if cfg.batch_size < 1 or (cfg.images is not None and cfg.images < 1):
        raise ConfigError(f"--images and --batch-size must be >= 1, got {cfg.images} and {cfg.batch_size}")
    device = parse_device(cfg.device)
    echo(MEMORY_NOTE)
    echo(f"stage 1/3: building SAM3 ({'random weights' if cfg.random_weights else cfg.checkpoint}) on {device} ...")
    begin = time.perf_counter()
    if cfg.random_weights:
        model = build_random_sam3_model(cfg.bpe_path, str(device), seed=cfg.seed, model_factory=cfg.model_factory)
    else:
        model = load_sam3_model(cfg.checkpoint, cfg.bpe_path, str(device), model_factory=cfg.model_factory)
    build_s = time.perf_counter() - begin
    echo(f"stage 1/3: built in {build_s:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    source = Sam3Source(model, Sam3Config(checkpoint=cfg.checkpoint, bpe_path=cfg.bpe_path, device=str(device),
                                          prompts=cfg.prompts, grid_chunk=cfg.grid_chunk))
    reports = [time_encoder(source, replace(cfg, batch_size=b), device, echo) for b in (batch_sizes or (cfg.batch_size,))]
    report = {
        "benchmark": "encoder",
        "machine": machine_info(device),
        "device": str(device),
        **reports[-1],
        "model": "sam3 random weights" if cfg.random_weights else str(cfg.checkpoint),
        "parameters": sum(p.numel() for p in model.parameters()),
        "autocast": source.describe()["autocast"],
        "prompts": list(cfg.prompts),
        "grid_chunk": cfg.grid_chunk,
        "build_seconds": round(build_s, 2),
        "config": {k: v if isinstance(v, (bool, int, float, tuple, type(None))) else str(v) for k, v in asdict(cfg).items()},
    }
    if batch_sizes:
        report["per_batch_size"] = reports
    return report


def time_encoder(source: Sam3Source, cfg: EncoderBenchConfig, device: torch.device, echo: Callable[[str], object]) -> dict:
    """One warm-up batch, then the backbone and grounding timed over cfg.images at cfg.batch_size."""
    n_images = cfg.images or (DEFAULT_IMAGES_GPU if device.type == "cuda" else DEFAULT_IMAGES_CPU)
    batch = min(cfg.batch_size, n_images)
    n_batches = -(-n_images // batch)
    gen = torch.Generator().manual_seed(cfg.seed)
    side = cfg.image_side
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=gen).to(device)
    taus = (0.5,)

    echo(f"stage 2/3: warm-up, one batch of {batch} (not timed): backbone ...")
    seconds, backbone_out = _timed(device, source.encode_images, images)
    echo(f"stage 2/3: backbone done in {seconds:.1f} s; grounding over {len(cfg.prompts)} prompts ...")
    seconds, _ = _timed(device, source.ground, backbone_out, taus)
    echo(f"stage 2/3: grounding done in {seconds:.1f} s")

    backbone_s = grounding_s = 0.0
    for i in range(n_batches):
        seconds, backbone_out = _timed(device, source.encode_images, images)
        backbone_s += seconds
        ground_s, _ = _timed(device, source.ground, backbone_out, taus)
        grounding_s += ground_s
        echo(f"stage 3/3: timed batch {i + 1}/{n_batches} of {batch}: backbone {seconds:.1f} s, grounding {ground_s:.1f} s")
    timed_images = n_batches * batch

    results = []
    for name, seconds in (("backbone", backbone_s), (f"grounding_{len(cfg.prompts)}_prompts", grounding_s)):
        results.append({
            "name": name,
            "ms_per_image": round(1000.0 * seconds / timed_images, 3),
            "images_per_s": round(timed_images / seconds, 4),
        })
    echo(f"{'stage':<24}{'ms/image':>14}{'images/s':>12}   ({timed_images} images, batch {batch}, {device})")
    for row in results:
        echo(f"{row['name']:<24}{row['ms_per_image']:>14.1f}{row['images_per_s']:>12.4f}")
    return {"batch_size": batch, "images": timed_images, "image_side": side, "results": results}
