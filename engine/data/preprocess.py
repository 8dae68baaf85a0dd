"""Image preprocessing identical to SAM3's own processor.

`Sam3Processor` squashes an image to 1008 x 1008 with torchvision's bilinear,
antialiased resize on uint8, then scales to [0, 1] and normalises with mean = std = 0.5.
We keep images uint8 until the device and normalise there.

torchvision resizes uint8 natively only on a CPU it deems fast enough for it (AVX2,
AVX512, ARM); elsewhere it resizes in float32 and rounds, which moves ~16% of pixels by
one grey level. `native_uint8_resize` is its rule, so the pixels match on every machine.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

from engine.core.geometry import MODEL_SIDE


def native_uint8_resize(device: torch.device) -> bool:
    """Whether torchvision resizes a uint8 image on `device` without going through float.

    torchvision 0.28's rule for bilinear (transforms.v2.functional._geometry._do_native_uint8_resize_on_cpu):
    on the CPU only, when torch's CPU capability is AVX2 or AVX512 or the machine is ARM.
    """
    if device.type != "cpu":
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def squash_image(image: torch.Tensor, side: int = MODEL_SIDE) -> torch.Tensor:
    """Resize a (3, H, W) or (B, 3, H, W) uint8 image to side x side (aspect not kept).

    Same arithmetic as torchvision.transforms.v2.Resize on uint8 (bilinear, antialias):
    the uint8 kernel where torchvision uses it (`native_uint8_resize`), otherwise (CUDA,
    x86 CPUs without AVX2) float32 interpolation rounded to the nearest grey level.
    """
    assert image.dtype == torch.uint8, f"expected uint8 image, got {image.dtype}"
    batched = image.ndim == 4
    x = image if batched else image[None]
    if tuple(x.shape[-2:]) != (side, side):
        if not native_uint8_resize(x.device):
            y = F.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            x = y.round_().clamp_(0, 255).to(torch.uint8)
        else:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x if batched else x[0]


def normalize_for_model(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float, scaled to [0, 1] then (x - 0.5) / 0.5."""
    assert images.dtype == torch.uint8 and images.ndim == 4, f"expected (B,3,S,S) uint8, got {images.dtype} {tuple(images.shape)}"
    x = images.to(dtype) / 255.0
    return (x - 0.5) / 0.5
