"""What a benchmark ran on, written into every JSON result."""

from __future__ import annotations

import os
import platform

import torch

from engine.core.devices import cpu_name
from engine.core.versions import versions


def machine_info(device: torch.device | str | None = None) -> dict:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **versions(),
        "cuda": torch.version.cuda,
    }
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info
