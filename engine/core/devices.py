"""Devices: the one place a device name becomes a torch.device (no silent fallback), what it is called,
and the process-wide matmul switch every entry point (the CLI, a Dask worker) sets for it."""

from __future__ import annotations

import platform
import re

import torch

from engine.core.errors import BackendError


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


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, the CPU's model name otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def set_matmul_precision(device: str) -> None:
    """Parity first: on CUDA, fp32 means fp32 (no TF32) in matmuls and convolutions. Process-wide."""
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


CPU_KMEANS_BYTES = 128 * 2**20


def kmeans_memory_budget(device: torch.device) -> int:
    """Bytes one KMeans call of the analysis may take for its working tensors: 128 MiB on a CPU
    (larger chunks buy no speed there), an eighth of the device's memory on CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    return CPU_KMEANS_BYTES
