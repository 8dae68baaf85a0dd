"""Shared test setup: one thread per process (2-core CI), CUDA-only tests skipped with the reason,
and the fixtures several modules use.

Markers: `gpu` tests need CUDA (skipped with the reason elsewhere; `pytest -m gpu` on a GPU node).
`slow` tests (Dask clusters, the GPU check's quick run, subprocess-heavy runs) run with the rest
(`make test` runs everything); `pytest -m 'not slow'` (`make test-fast`) leaves them out.
"""

from __future__ import annotations

from pathlib import Path

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
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


SCENES = {"count": 2, "size": (400, 300), "seed": 5}  # a module's own SCENES dict overrides any of these


@pytest.fixture(scope="module")
def scenes(request, tmp_path_factory) -> Path:
    """A simulated UDD5 tree (engine.data.scenes) written once per module: SCENES above, updated by the
    module's own `SCENES = {...}`. Treat it as read-only; copy it to change it."""
    from engine.data.scenes import write_scene_set

    spec = {**SCENES, **getattr(request.module, "SCENES", {})}
    return write_scene_set(tmp_path_factory.mktemp("scenes"), spec["count"], size=spec["size"], seed=spec["seed"])


def check_one_line_error(result, *needles: str) -> str:
    """A user error as the CLI must show it: exit status 2, exactly one `datr: error:` line on stderr
    holding every needle, no traceback. Returns the line."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("datr: error:"), result.stderr
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def one_line_error():
    """check_one_line_error(result, *needles), for tests of the CLI's user errors."""
    return check_one_line_error
