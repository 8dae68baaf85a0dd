"""Building the SAM3 image model: the package's builder, a parameter-free skeleton, strict loading.

`load_sam3_model` never touches the network: it reads and checks the checkpoint against
the keys and shapes of a parameter-free skeleton of the model (about a second, before the
840M-parameter build), then builds, loads strictly and places the model on its device,
checking that every tensor landed there (sam3's own builder keeps "cuda:1" on the CPU).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.core.devices import parse_device
from engine.sources.sam3 import compat
from engine.sources.sam3.checkpoint import (
    CheckpointContents,
    check_state_dict,
    checkpoint_fingerprint,
    read_checkpoint,
    resolve_bpe_path,
)

ModelFactory = Callable[[str], torch.nn.Module]  # bpe path -> un-loaded model on the CPU


def assert_on_device(model: torch.nn.Module, device: torch.device) -> None:
    """Every parameter and buffer of `model` must be on `device` (index included)."""
    stray = [(n, t.device) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device != device]
    assert not stray, f"{len(stray)} tensors not on {device}, e.g. {stray[:3]}"



def build_official_model(bpe_path: str) -> torch.nn.Module:
    """The package's own image-model builder, on the CPU, no weights, no network."""
    compat.apply_cpu_compat()
    build_sam3_image_model = compat.import_model_builder().build_sam3_image_model
    return build_sam3_image_model(
        bpe_path=str(bpe_path), device="cpu", eval_mode=True, checkpoint_path=None, load_from_HF=False,
        enable_segmentation=True, enable_inst_interactivity=False, compile=False,
    )


@contextlib.contextmanager
def parameter_free():
    """Within: every parameter and buffer a module registers is swapped for a meta tensor.

    Gives the model's exact keys and shapes in about a second without allocating or
    initialising its weights (a plain `torch.device("meta")` build fails: the ViT calls
    `.item()` while building).
    """
    from torch.nn.modules import module as nn_module

    def to_meta_param(module, name, param):
        if param is not None and param.device.type != "meta":
            return torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        return None

    def to_meta_buffer(module, name, buffer):
        if buffer is not None and buffer.device.type != "meta":
            return buffer.to("meta")
        return None

    handles = [
        nn_module.register_module_parameter_registration_hook(to_meta_param),
        nn_module.register_module_buffer_registration_hook(to_meta_buffer),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def expected_shapes(bpe_path: str | Path, model_factory: ModelFactory | None = None) -> dict[str, torch.Size]:
    """The state_dict keys and shapes of the model the factory builds, from a parameter-free build."""
    factory = model_factory or build_official_model
    with parameter_free():
        skeleton = factory(str(bpe_path))
    return {k: v.shape for k, v in skeleton.state_dict().items()}


def _place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to `device`, caches included, and check that everything landed there."""
    model = model.to(device).eval()
    compat.move_tensor_caches(model, device)
    assert_on_device(model, device)
    return model


def _load(
    checkpoint: str | Path, bpe_path, device: str, model_factory: ModelFactory | None
) -> tuple[torch.nn.Module, CheckpointContents]:
    dev = parse_device(device)
    bpe = resolve_bpe_path(bpe_path)
    contents = read_checkpoint(checkpoint)
    compat.apply_cpu_compat()
    check_state_dict(contents, expected_shapes(bpe, model_factory))
    model = (model_factory or build_official_model)(str(bpe))
    model.load_state_dict(contents.state, strict=True)  # cannot fail after check_state_dict
    return _place(model, dev), contents


def load_sam3_model(
    checkpoint: str | Path,
    bpe_path: str | Path | None = None,
    device: str = "cpu",
    *,
    model_factory: ModelFactory | None = None,
) -> torch.nn.Module:
    """Build the SAM3 image model and load a local checkpoint into it, strictly.

    Every file problem (missing, truncated, not a checkpoint, pickled objects, another
    model, missing / unexpected keys, wrong shapes) raises a CheckpointError naming the
    file before the model is built. Accepts the official sam3.pt ({"model": ...} with
    "detector."/"tracker." keys; the video tracker's weights are left out) and a plain
    state_dict of the image model. `model_factory(bpe_path)` replaces the package's
    builder (tests use it for a tiny model); it must return an un-loaded CPU model.
    """
    model, _ = _load(checkpoint, bpe_path, device, model_factory)
    return model


def build_random_sam3_model(
    bpe_path: str | Path | None = None,
    device: str = "cpu",
    *,
    seed: int = 0,
    model_factory: ModelFactory | None = None,
) -> torch.nn.Module:
    """The model with random weights (benchmarks, tests): seeded, text params initialised."""
    dev = parse_device(device)
    bpe = resolve_bpe_path(bpe_path)
    compat.apply_cpu_compat()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (model_factory or build_official_model)(str(bpe))
    compat.init_empty_text_params(model, seed=seed)
    return _place(model, dev)



def verify_checkpoint(
    path: str | Path,
    bpe_path: str | Path | None = None,
    device: str = "cpu",
    *,
    model_factory: ModelFactory | None = None,
) -> dict:
    """Load a checkpoint the way a run would and report what was loaded (for `datr env`)."""
    start = time.perf_counter()
    model, contents = _load(path, bpe_path, device, model_factory)
    seconds = time.perf_counter() - start
    return {
        **checkpoint_fingerprint(path),
        "layout": contents.layout,
        "keys_loaded": len(contents.state),
        "keys_ignored": contents.ignored_keys,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(next(model.parameters()).device),
        "bpe_path": str(resolve_bpe_path(bpe_path)),
        "load_seconds": round(seconds, 2),
    }
