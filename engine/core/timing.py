"""Per-stage timing: CUDA events on a GPU (read once, after one synchronize), wall clock on the CPU.

Events keep the host free to run ahead (loading the next batch while the GPU computes);
timing with a synchronize per stage would serialise the pipeline it measures.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self._pending: list[tuple[str, object, object]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the device work queued inside the block (CUDA) or the block itself (CPU)."""
        if self.device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self._pending.append((name, begin, end))
        else:
            start = time.perf_counter()
            yield
            self.seconds[name] += time.perf_counter() - start

    @contextmanager
    def host(self, name: str) -> Iterator[None]:
        """Time host-side work (loading, writing) by the wall clock on any device."""
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start

    def collect(self) -> dict[str, float]:
        if self._pending:
            torch.cuda.synchronize(self.device)
            for name, begin, end in self._pending:
                self.seconds[name] += begin.elapsed_time(end) / 1e3
            self._pending.clear()
        return dict(self.seconds)
