"""Count the aten ops and host synchronisations a piece of work issues (works on the CPU).

A host synchronisation is an op whose result the host must read before it can go on:
on a GPU each one waits for the queue to drain. Counted here: `.item()` / `bool()` /
`int()` of a tensor (aten._local_scalar_dense), nonzero, masked_select, unique, and
indexing or index_put with a boolean mask (which run nonzero inside). Copies of the
final results to the host are not visible on a CPU (a CPU tensor's `.cpu()` issues no
op) and are not counted.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_PACKETS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
                aten.unique_consecutive, aten.masked_scatter_}
BOOL_INDEX_PACKETS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as count: ...`; then count.ops (aten ops), count.syncs, and count.by_op."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.sync_by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        self.by_op[str(packet)] += 1
        if packet in SYNC_PACKETS or (packet in BOOL_INDEX_PACKETS and _has_bool_index(args)):
            self.sync_by_op[str(packet)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_by_op.values())
