"""Peak memory of a block of work: device allocator peak on CUDA, sampled host RSS everywhere.

Host memory is read from /proc/self/statm by a sampling thread (every `interval_s`), so
numpy and torch allocations both count; the figure is the peak above the RSS at the
start of the block. The process-wide high-water mark (ru_maxrss) is reported beside it.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import torch

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:  # not Linux: the high-water mark is all there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def max_rss_mb() -> float:
    """The process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`; then peak.host_mb (peak RSS above the start) and,
    on CUDA, peak.device_mb (torch's allocator peak during the block)."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.host_mb = 0.0
        self.device_mb: float | None = None
        self._stop = threading.Event()
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._device_start = torch.cuda.memory_allocated(self.device)
        self._start = self._peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="datr-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.device_mb = (torch.cuda.max_memory_allocated(self.device) - self._device_start) / 2**20
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes())
        self.host_mb = (self._peak - self._start) / 2**20

    def as_dict(self) -> dict:
        out = {"host_peak_mb": round(self.host_mb, 1)}
        if self.device_mb is not None:
            out["device_peak_mb"] = round(self.device_mb, 1)
        return out
