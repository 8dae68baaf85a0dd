"""Shared test setup: one thread per process (2-core CI), CUDA-only tests skipped with the reason."""

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _single_thread_blas():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA device; none is present here")
    not_asked = pytest.mark.skip(reason="slow: run with -m slow")
    slow_asked = "slow" in (config.getoption("-m") or "")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "slow" in item.keywords and not slow_asked:
            item.add_marker(not_asked)
