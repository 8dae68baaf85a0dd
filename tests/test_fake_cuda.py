"""One analysis batch -- controls and the seed ensemble on -- on fake CUDA tensors, on this CPU-only torch.

torch's FakeTensorMode makes `device="cuda"` tensors that carry shapes, dtypes and devices but
no data, and runs the analysis's ops on them (matmul, eigh, sort, scatter...). Two things are
checked on the way:

- every tensor the analysis computes with is on the batch's device: a tensor it creates on the
  CPU and mixes in fails the run (FakeTensorDeviceMismatchError), except zero-dimensional
  scalars, which CUDA takes from the host too;
- every data-dependent host read (`.item()`, `int(t)`, `bool(t)`, `nonzero`) and every
  host-to-device copy is counted, with where it came from. A fake tensor has no value, so a read
  answers a fixed value (a kept width of 1, "no NaN", every restart still running) and Lloyd runs
  a fixed number of iterations (max_iter): control flow that depends on data stays fixed.

A CPU-only torch has no CUDA device guard, which Python indexing and some Tensor methods use
even on fake tensors; a no-op guard for the CUDA device type is compiled once (torch's
cpp_extension, cached) so that they run.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import engine.analysis.batch as batch_module
import engine.analysis.controls as controls_module
from engine.analysis.batch import analyze_batch
from engine.core.config import AnalysisConfig
from engine.sources.base import SourceBatch
from kernels.backends.torch_backend import TorchBackend

PROMPTS = ("vegetation", "building", "road", "vehicle", "other")
CLASS_IDS = (0, 1, 2, 3, 4)
GUARD = r"""
#include <c10/core/impl/DeviceGuardImplInterface.h>
C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::NoOpDeviceGuardImpl<c10::DeviceType::CUDA>);
int fake_cuda_guard() { return 1; }
"""
ANSWERS = {"width": 1}


@pytest.fixture(scope="module")
def fake_cuda():
    """FakeTensorMode with a CUDA device guard (compiled once per machine)."""
    if torch.cuda.is_available():
        pytest.skip("a real CUDA device is present: tests marked gpu run the analysis there")
    from torch.utils.cpp_extension import load_inline

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's ninja
    load_inline("datr_fake_cuda_guard", cpp_sources=GUARD, functions=["fake_cuda_guard"], verbose=False)
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode


def caller() -> str:
    """The first frame of the project's own code on the stack: file:line function."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace(os.sep, "/")
        if any(f"/{room}/" in path for room in ("engine", "kernels")):
            return f"{path.split('/')[-2]}/{path.split('/')[-1]}:{frame.lineno} {frame.name}"
    return "?"


class HostReads(TorchDispatchMode):
    """Counts data-dependent host reads and host-to-device copies below a FakeTensorMode, answering reads."""

    def __init__(self):
        super().__init__()
        self.reads: Counter = Counter()
        self.copies: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads[caller()] += 1
            value = args[0]
            if value.dtype == torch.bool:
                return False  # "any NaN?" / "any still searching?": no
            return ANSWERS["width"] if not value.dtype.is_floating_point else 0.0
        if func is torch.ops.aten.nonzero.default:
            self.reads[caller()] += 1  # a data-dependent shape: answer "every entry"
            mask = args[0]
            return torch.ones_like(mask, dtype=torch.bool).nonzero_static(size=mask.numel())
        if func is torch.ops.aten._pin_memory.default:
            return args[0]  # pinning host memory for an asynchronous copy: nothing to fake
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
            if isinstance(src, torch.Tensor) and src.device.type == "cpu" and dst is not None and torch.device(dst).type == "cuda":
                self.copies[caller()] += 1
        return func(*args, **kwargs)


def fake_batch(b: int) -> SourceBatch:
    """A SourceBatch of b images on the fake CUDA device (the shapes SAM3 hands over)."""
    dev = "cuda"
    p, q, n = len(PROMPTS), 200, 72 * 72
    return SourceBatch(
        image_ids=[f"image_{i}" for i in range(b)],
        features=torch.randn(b, 256, 72, 72, device=dev),
        queries=torch.randn(b, p, q, 256, device=dev),
        scores=torch.rand(b, p, q, device=dev),
        query_masks=torch.rand(b, p, q, n, device=dev).half(),
        union_masks=torch.zeros(b, 1, p, 288, 288, dtype=torch.bool, device=dev),
        taus=(0.5,),
    )


def run_fake(fake_mode, b: int, monkeypatch, kmeans_init: str = "independent") -> tuple[HostReads, dict]:
    """analyze_batch on b fake images; returns the counts and the (B, M) columns it would write."""
    cfg = AnalysisConfig(n_init=2, seeds=3, max_iter=3, dims=(8,), kmeans_init=kmeans_init)  # fixed Lloyd length
    written: dict = {}

    def keep_columns(columns, image_ids, slots, d, k, per_slot, n_tokens, kmeans_init):
        written.update(per_slot)  # rows would copy these to the host once; fake tensors have no values

    monkeypatch.setattr(batch_module, "append_rows", keep_columns)
    monkeypatch.setattr(controls_module, "kmeans_memory_budget", lambda device: 2**40)  # one KMeans call per part (no CUDA memory query)
    counter = HostReads()
    with fake_mode(allow_non_fake_inputs=False):
        batch = fake_batch(b)
        gt_tokens = torch.randint(0, 5, (b, 72, 72), dtype=torch.uint8, device="cuda")
        gt_mask = torch.randint(0, 5, (b, 288, 288), dtype=torch.uint8, device="cuda")
        with counter:
            analyze_batch(batch, cfg, TorchBackend(eigh="torch"), PROMPTS, CLASS_IDS, 5, gt_tokens=gt_tokens, gt_mask=gt_mask)
    return counter, written


@pytest.mark.slow
@pytest.mark.parametrize("kmeans_init", ["independent", "encoder"])
def test_the_analysis_stays_on_the_device_and_reads_the_host_the_same_for_any_batch(fake_cuda, monkeypatch, kmeans_init):
    one, columns = run_fake(fake_cuda, 1, monkeypatch, kmeans_init)
    three, _ = run_fake(fake_cuda, 3, monkeypatch, kmeans_init)
    for name in ("flip_ratio", "flip_ratio_null", "flip_between", "effect_instability", "effect_null_se", "accuracy"):
        assert columns[name].device.type == "cuda" and columns[name].shape == (1, 7), name
    # no read or copy per image: the same counts for one image and for three
    assert three.reads == one.reads and three.copies == one.copies
    reads, copies = sum(one.reads.values()), sum(one.copies.values())
    print(f"\nfake CUDA, --kmeans-init {kmeans_init}: {reads} data-dependent host reads, {copies} host-to-device copies")
    for where, count in sorted({**one.reads, **{f'copy {k}': v for k, v in one.copies.items()}}.items()):
        print(f"  {count:3d}  {where}")
    assert not any("analysis/ensemble" in where or "analysis/layout" in where for where in one.reads)
    # what is left, per part: the kept widths (one read), Lloyd's repack reads every 4 steps, the finite
    # checks; copies: the class ids, the permutation keys, the factor indexes, k-means++'s CPU uniforms
    assert reads <= 16 and copies <= 12, (one.reads, one.copies)
