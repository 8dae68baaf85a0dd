"""The op counter of `datr bench sweep` (bench/dispatch.py): syncs, host-to-device copies and host-data
tensors, counted exactly on the CPU (the "meta" device stands in for a GPU: it is not the host)."""

import warnings

import torch

from bench.dispatch import OpCounter, SyncWarnings


def test_host_to_device_copies_are_counted_and_the_host_side_is_not():
    x = torch.randn(4, 3)
    dev = torch.zeros(4, 3, device="meta")
    with OpCounter() as count:
        torch.arange(3).to("meta")  # _to_copy from the host
        dev.copy_(x)  # copy_ from the host
        dev[torch.tensor([0, 1])]  # a host index for a device tensor: copied inside the op
        x.to(torch.float64)  # a conversion on the host: no copy to a device
        dev.to(torch.float64)  # on the device: no copy from the host
    assert count.host_to_device == 3, dict(count.copy_by_op)
    assert dict(count.copy_by_op) == {"aten._to_copy": 1, "aten.copy_": 1, "aten.index": 1}


def test_host_data_tensors_are_what_a_gpu_would_copy():
    x = torch.randn(4, 3)
    with OpCounter() as count:
        torch.tensor([1, 2, 3])  # from a Python list
        x[:, [0, 2]]  # indexing with a Python list builds an index tensor on the host
        x[:, 0] = 5.0  # a Python number: a 0-dim tensor a GPU kernel takes by value, not counted
        torch.full((3,), 2.0)  # made by an op: nothing comes from the host
    assert count.host_data == 2 and count.host_to_device == 0
    assert sorted(w.split()[0] for w in count.where.elements()) == ["host-data", "host-data"]
    assert all("test_dispatch.py" in w for w in count.where)


def test_syncs_are_counted_with_where_they_were_asked_for():
    x = torch.randn(5)
    with OpCounter() as count:
        float(x.sum())
        torch.nonzero(x > 0)
        x[x > 0]  # a boolean mask runs nonzero inside
        torch.where(x > 0, x, 0.0)  # branch-free: no read
    assert count.syncs == 3 and dict(count.sync_by_op) == {"aten._local_scalar_dense": 1, "aten.nonzero": 1, "aten.index": 1}
    assert sum(n for w, n in count.where.items() if w.startswith("sync tests/test_dispatch.py")) == 3


def test_sync_warnings_mean_nothing_off_cuda_and_pass_other_warnings_on():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with SyncWarnings("cpu") as sync:
            float(torch.ones(2).sum())
            warnings.warn("unrelated", UserWarning, stacklevel=1)
    assert sync.count is None and sync.as_dict() == {"count": None, "where": None}
    assert [str(w.message) for w in seen] == ["unrelated"]
