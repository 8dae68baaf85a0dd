"""Every workaround the `sam3` package (0.1.4) needs to build and run off CUDA, in one place.

Meta's code assumes a CUDA machine with triton and a torchvision whose C++ ops load.
On a CPU-only torch (CI, laptops) five things break; each fix below is narrow (a wrapped
function or a stub module, never an edit of site-packages) and is applied only where the
thing it fixes is actually broken:

1. `import torchvision` raises "operator torchvision::nms does not exist" when its C
   extension cannot load (a CUDA wheel next to a CPU torch): `_meta_registrations.py`
   registers fake kernels for `nms` and `qnms` unconditionally. We define those two op
   schemas first (no kernel: calling them still fails loudly); `roi_align` then uses
   torchvision's own pure-Python fallback.
2. `sam3.model.edt` does `import triton` (a GPU-only distance transform used by the
   video tracker, never by the image model): without triton it is replaced by a stub
   whose function raises.
3. `PositionEmbeddingSine.__init__` precomputes its cache with `device="cuda"`.
4. `TransformerDecoder.__init__` precomputes box-RPB coordinates with `device="cuda"`.
5. `SequenceGeometryEncoder._encode_boxes` calls `.pin_memory()` on every grounding call,
   which needs an accelerator.

Fixes 3-5 are applied only when CUDA is absent: on a CUDA machine the package runs as
written. `apply_cpu_compat()` applies what is needed and then imports `sam3`; everything
that builds the model calls it first. Two import side effects of `sam3` are contained
there too: its `model_builder` switches TF32 matmuls on for the whole process (the flags
are put back: process-wide switches belong to the CLI), and its video model's
`@torch.autocast("cuda")` decorators warn at import on a CPU (silenced, nothing else).

`move_tensor_caches` is needed on every machine: the position-encoding and decoder
caches live in plain dicts, which `Module.to` does not move, so a model built on one
device and run on another (`cpu` on a CUDA host, `cuda:1`) would mix devices.

The fixes are process-wide by nature (a patched class, a registered op schema); which
ones are active is kept in `_APPLIED` and reported by `applied_fixes()` for run.json.

`init_empty_text_params` is for random-weight builds only (tests, benchmarks): the text
encoder creates `positional_embedding` and `text_projection` with `torch.empty` and
relies on the checkpoint to fill them; left as is they give NaN language features.
"""

from __future__ import annotations

import functools
import glob
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

import torch

# Library objects must stay alive for their op definitions to stay registered.
_TORCHVISION_SHIM_LIBS: list = []
_APPLIED: set[str] = set()


def torchvision_extension_loads() -> bool:
    """Whether torchvision's compiled ops load next to this torch (checked without importing it)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    pkg_dir = spec.submodule_search_locations[0]
    candidates = [p for s in importlib.machinery.EXTENSION_SUFFIXES for p in glob.glob(os.path.join(pkg_dir, "_C" + s))]
    for path in candidates:
        try:
            torch.ops.load_library(path)
            return True
        except (ImportError, OSError):
            continue
    return False


def _torchvision_importable() -> bool:
    if "torchvision" in sys.modules:
        return True
    return importlib.util.find_spec("torchvision") is not None and torchvision_extension_loads()


def ensure_torchvision_importable() -> bool:
    """Fix 1. Returns True when the op schemas are defined by us in this process."""
    if "torchvision_ops" in _APPLIED:
        return True
    if _torchvision_importable() or importlib.util.find_spec("torchvision") is None:
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM_LIBS.append(lib)
    _APPLIED.add("torchvision_ops")
    return True


def _stub_edt() -> bool:
    """Fix 2: a stand-in for `sam3.model.edt` when triton is missing."""
    if "edt_stub" in _APPLIED:
        return True
    if "sam3.model.edt" in sys.modules or importlib.util.find_spec("triton") is not None:
        return False
    stub = types.ModuleType("sam3.model.edt")
    stub.__doc__ = "Stub installed by engine.sources.sam3.compat: triton is not installed."

    def edt_triton(data: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("sam3.model.edt.edt_triton needs triton (a CUDA machine); the image model never calls it")

    stub.edt_triton = edt_triton
    sys.modules["sam3.model.edt"] = stub
    _APPLIED.add("edt_stub")
    return True


def _cuda_to_cpu(device):
    """Map the package's hard-coded "cuda" to the CPU on a machine without CUDA."""
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def _patch_position_encoding() -> None:
    """Fix 3: build the precomputed cache on the CPU instead of `device="cuda"`."""
    from sam3.model.position_encoding import PositionEmbeddingSine

    original_init = PositionEmbeddingSine.__init__

    @functools.wraps(original_init)
    def init(self, num_pos_feats, temperature=10000, normalize=True, scale=None, precompute_resolution=None):
        original_init(self, num_pos_feats, temperature, normalize, scale, precompute_resolution=None)
        if precompute_resolution is not None:  # the same sizes as the original, on the CPU
            for stride in (4, 8, 16, 32):
                side = precompute_resolution // stride
                self.forward(torch.zeros((1, 1, side, side), device="cpu"))
                self.cache[(side, side)] = self.cache[(side, side)].clone().detach()

    PositionEmbeddingSine.__init__ = init


def _patch_decoder_coords() -> None:
    """Fix 4: `TransformerDecoder._get_coords(..., device="cuda")` made on the CPU."""
    from sam3.model.decoder import TransformerDecoder

    original = TransformerDecoder._get_coords  # a staticmethod, read through the class

    @functools.wraps(original)
    def get_coords(H, W, device):
        return original(H, W, _cuda_to_cpu(device))

    TransformerDecoder._get_coords = staticmethod(get_coords)


def _patch_pin_memory() -> None:
    """Fix 5: `.pin_memory()` is an identity for the duration of `_encode_boxes`.

    Pinning only speeds a host-to-device copy; without an accelerator there is no copy.
    """
    from sam3.model.geometry_encoders import SequenceGeometryEncoder

    original = SequenceGeometryEncoder._encode_boxes

    @functools.wraps(original)
    def encode_boxes(self, *args, **kwargs):
        pin = torch.Tensor.pin_memory
        torch.Tensor.pin_memory = lambda t, *a, **k: t
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.Tensor.pin_memory = pin

    SequenceGeometryEncoder._encode_boxes = encode_boxes


_CPU_PATCHES = {
    "position_encoding": _patch_position_encoding,
    "decoder_coords": _patch_decoder_coords,
    "pin_memory": _patch_pin_memory,
}
FIXES = ("torchvision_ops", "edt_stub", *_CPU_PATCHES)


def _import_sam3_keeping_tf32():
    """Import sam3.model_builder without letting its import-time `_setup_tf32()` stick."""
    if "sam3.model_builder" in sys.modules:
        return sys.modules["sam3.model_builder"]
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        with warnings.catch_warnings():
            # the video model's `@torch.autocast(device_type="cuda")` decorators warn at import
            # on a machine without CUDA; the image model does not use them
            warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported")
            import sam3.model_builder as builder
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    return builder


def import_model_builder():
    """`sam3.model_builder`, imported with every needed fix in place."""
    apply_cpu_compat()
    return _import_sam3_keeping_tf32()


def apply_cpu_compat(*, skip: tuple[str, ...] = ()) -> list[str]:
    """Apply whichever fixes this machine needs (idempotent); then import sam3.

    `skip` names fixes to leave out (tests use it to show each one is needed). Returns
    the names of all fixes active in this process.
    """
    unknown = set(skip) - set(FIXES)
    assert not unknown, f"unknown fixes {sorted(unknown)}; known: {FIXES}"
    if "torchvision_ops" not in skip:
        ensure_torchvision_importable()
    if "edt_stub" not in skip:
        _stub_edt()
    _import_sam3_keeping_tf32()
    if not torch.cuda.is_available():
        for name, patch in _CPU_PATCHES.items():
            if name not in skip and name not in _APPLIED:
                patch()
                _APPLIED.add(name)
    return sorted(_APPLIED)


def applied_fixes() -> list[str]:
    return sorted(_APPLIED)


def move_tensor_caches(model: torch.nn.Module, device: torch.device) -> None:
    """Move the tensors the package caches in plain attributes (not buffers) to `device`.

    `PositionEmbeddingSine.cache` and the decoder's box-RPB coordinate caches are built
    at construction on the default CUDA device (or the CPU, see fix 3) and `Module.to`
    does not move them; left behind, they meet features on another device.
    """
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.position_encoding import PositionEmbeddingSine

    for module in model.modules():
        if isinstance(module, PositionEmbeddingSine):
            module.cache = {k: v.to(device) for k, v in module.cache.items()}
        elif isinstance(module, TransformerDecoder):
            if getattr(module, "compilable_cord_cache", None) is not None:
                module.compilable_cord_cache = tuple(t.to(device) for t in module.compilable_cord_cache)
            if getattr(module, "coord_cache", None):
                module.coord_cache = {k: tuple(t.to(device) for t in v) for k, v in module.coord_cache.items()}


@torch.no_grad()
def init_empty_text_params(model: torch.nn.Module, seed: int = 0) -> int:
    """Give the text encoder's `torch.empty` parameters finite values (random-weight builds).

    Uses open_clip's initialisation (normal, std 0.01 and width**-0.5). Returns the number
    of tensors initialised. Never call this on a model loaded from a checkpoint.
    """
    from sam3.model.text_encoder_ve import TextTransformer

    gen = torch.Generator(device="cpu").manual_seed(seed)
    count = 0
    for module in model.modules():
        if isinstance(module, TextTransformer):
            pos = module.positional_embedding
            pos.copy_(torch.randn(pos.shape, generator=gen) * 0.01)
            count += 1
            proj = module.text_projection
            if isinstance(proj, torch.nn.Parameter):
                proj.copy_(torch.randn(proj.shape, generator=gen) * module.width**-0.5)
                count += 1
    return count
