"""Count the aten ops, host synchronisations and host-to-device copies a piece of work issues
(works on the CPU).

A host synchronisation is an op whose result the host must read before it can go on:
on a GPU each one waits for the queue to drain. Counted here: `.item()` / `bool()` /
`int()` of a tensor (aten._local_scalar_dense), nonzero, masked_select, unique, and
indexing or index_put with a boolean mask (which run nonzero inside). Copies of the
final results to the host are not visible on a CPU (a CPU tensor's `.cpu()` and `.tolist()`
issue no op) and are not counted.

A host-to-device copy is a copy from a CPU tensor onto another device: `.to(device)` /
`copy_` from a CPU source (aten._to_copy, copy_), `torch.tensor(values, device=cuda)` (which
builds the tensor on the host, then copies it), and indexing a device tensor with a CPU index
(the index is copied inside the op). On a CPU run these are all zero, so the counter also
counts host-data tensors: tensors of one or more dimensions built from Python values or numpy
arrays (aten.lift_fresh: `torch.tensor(list)`, `torch.as_tensor(array)`, indexing with a Python
list). On a GPU each one that meets the device's tensors is a host-to-device copy, so their count
is what a CPU run can show of a GPU run's copies. (A Python number becomes a 0-dim CPU tensor,
which a GPU kernel takes by value: not counted.)
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_PACKETS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
                aten.unique_consecutive, aten.masked_scatter_}
BOOL_INDEX_PACKETS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
COPY_PACKETS = {aten._to_copy, aten.copy_, aten._copy_from, aten.copy}
HOST_DATA_PACKETS = {aten.lift_fresh, aten.lift_fresh_copy}


def _index_tensors(args) -> list[torch.Tensor]:
    indices = args[1] if len(args) > 1 else ()
    return [i for i in (indices or ()) if isinstance(i, torch.Tensor)]


def _on_host(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cpu"


def is_host_to_device(packet, args, kwargs) -> bool:
    """Does this op copy host memory onto another device?"""
    if packet is aten._to_copy:
        target = kwargs.get("device")
        return _on_host(args[0]) and target is not None and torch.device(target).type != "cpu"
    if packet in (aten.copy_, aten.copy):  # copy_(dst, src)
        return _on_host(args[1]) and not _on_host(args[0])
    if packet is aten._copy_from:  # _copy_from(src, dst)
        return _on_host(args[0]) and not _on_host(args[1])
    if packet in BOOL_INDEX_PACKETS and not _on_host(args[0]):  # a CPU index for a device tensor
        return any(_on_host(i) for i in _index_tensors(args))
    return False


def caller() -> str:
    """file:line of the innermost frame outside torch and this module (where the op was asked for)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = Path(frame.f_code.co_filename)
    return f"{path.parent.name}/{path.name}:{frame.f_lineno}"


TORCH_DIR = str(Path(torch.__file__).parent)


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as count: ...`; then count.ops (aten ops), count.syncs, count.host_to_device,
    count.host_data (tensors built from host values), and count.by_op / sync_by_op / copy_by_op."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.sync_by_op: Counter[str] = Counter()
        self.copy_by_op: Counter[str] = Counter()
        self.host_data = 0
        self.where: Counter[str] = Counter()  # "kind file:line" of every sync, copy and host-data tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        self.by_op[str(packet)] += 1
        if packet in SYNC_PACKETS or (packet in BOOL_INDEX_PACKETS and
                                      any(i.dtype == torch.bool for i in _index_tensors(args))):
            self.sync_by_op[str(packet)] += 1
            self.where[f"sync {caller()}"] += 1
        if packet in HOST_DATA_PACKETS and args[0].dim() > 0:  # a 0-dim CPU tensor reaches a GPU kernel by value
            self.host_data += 1
            self.where[f"host-data {caller()}"] += 1
        if (packet in COPY_PACKETS or packet in BOOL_INDEX_PACKETS) and is_host_to_device(packet, args, kwargs):
            self.copy_by_op[str(packet)] += 1
            self.where[f"copy {caller()}"] += 1
        return func(*args, **kwargs)

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_by_op.values())

    @property
    def host_to_device(self) -> int:
        return sum(self.copy_by_op.values())


class SyncWarnings:
    """`with SyncWarnings(device) as sync: ...`; then sync.count, the synchronizing CUDA operations the
    block ran (torch.cuda.set_sync_debug_mode("warn") turns each into a warning), and sync.where, the
    Python lines that ran them. Off CUDA the mode means nothing: count and where stay None.
    Other warnings raised in the block are passed on when it ends."""

    MESSAGE = "called a synchronizing CUDA operation"

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.count: int | None = None
        self.where: Counter[str] | None = None

    def __enter__(self) -> SyncWarnings:
        if self.device.type == "cuda":
            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")  # every occurrence, not once per line
            self._previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type != "cuda":
            return
        torch.cuda.set_sync_debug_mode(self._previous)
        self._catch.__exit__(*exc)
        hits = [w for w in self._records if self.MESSAGE in str(w.message)]
        self.count = len(hits)
        self.where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in hits)
        for w in self._records:
            if self.MESSAGE not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def as_dict(self, top: int = 10) -> dict:
        return {"count": self.count, "where": None if self.where is None else dict(self.where.most_common(top))}
