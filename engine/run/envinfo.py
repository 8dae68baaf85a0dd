"""What `datr env` reports: interpreter, torch, CUDA devices, optional packages found."""

from __future__ import annotations

import importlib
import os
import platform
import sys

from engine.core.devices import cpu_name
from engine.core.versions import package_version

# import name -> distribution name (for the version); each is optional
OPTIONAL_PACKAGES = {
    "sam3": "sam3",
    "faiss": "faiss-cpu",
    "cuml": "cuml-cu12",
    "cupy": "cupy-cuda12x",
    "dask": "dask",
    "matplotlib": "matplotlib",
}


def _check_import(name: str) -> dict:
    """Try the import; report the version or the one-line reason it failed."""
    try:
        if name == "sam3":  # needs the compatibility fixes on a CPU-only torch
            from engine.sources.sam3.compat import apply_cpu_compat

            fixes = apply_cpu_compat()
            module = sys.modules["sam3"]
        else:
            module = importlib.import_module(name)
            fixes = None
    except Exception as err:  # an optional package may fail in any way (missing, ABI, no GPU)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return {"ok": False, "error": f"{type(err).__name__}: {message}"[:200]}
    dist = OPTIONAL_PACKAGES[name]
    found = getattr(module, "__version__", None) or package_version(dist, dist.split("-")[0], name)
    report = {"ok": True, "version": found}
    if fixes:
        report["compat_fixes"] = fixes
    return report


def _cuda_devices(torch) -> list[dict]:
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({
            "device": f"cuda:{index}",
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        })
    return devices


def collect_env() -> dict:
    """Python, torch and CUDA versions, the devices present, which optional packages import."""
    import torch

    from engine.core.errors import CheckpointError
    from engine.sources.sam3.checkpoint import BPE_NAME, resolve_bpe_path

    try:
        bpe = str(resolve_bpe_path(None))
    except CheckpointError:
        bpe = f"not found ({BPE_NAME}: pip install open_clip_torch, or pass --bpe)"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {"name": cpu_name(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "torch": {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
        },
        "cuda_devices": _cuda_devices(torch),
        "packages": {name: _check_import(name) for name in OPTIONAL_PACKAGES},
        "backends": _backends(torch),
        "bpe_vocabulary": bpe,
    }


def _backends(torch) -> dict:
    """Which clustering backend runs on which device here, with the reason when not."""
    from kernels.backends import BACKENDS, backend_status

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return {f"{name}@{dev}": dict(zip(("ok", "why"), backend_status(name, dev), strict=True)) for name in BACKENDS for dev in devices}
