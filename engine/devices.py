"""The one place a device name becomes a torch.device (no silent fallback)."""

from __future__ import annotations

import re

import torch

from engine.errors import BackendError


def parse_device(device: str | torch.device) -> torch.device:
    """"cpu", "cuda" or "cuda:N" -> a torch.device with an explicit index for CUDA."""
    text = str(device).strip().lower()
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if match is None:
        raise BackendError(f"--device {device!r} not understood: use cpu, cuda or cuda:N")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise BackendError(f"--device {device!r}: the CPU has no index; use cpu")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendError(
            f"--device {device!r} asked for but CUDA is not available to torch {torch.__version__}; use --device cpu"
        )
    count = torch.cuda.device_count()
    idx = torch.cuda.current_device() if index is None else int(index)
    if idx >= count:
        raise BackendError(f"--device {device!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", idx)
