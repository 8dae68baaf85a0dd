"""Installed package versions, for run.json, `datr env` and every benchmark's JSON."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def package_version(*distributions: str) -> str | None:
    """The version of the first of these distributions that is installed, else None."""
    for name in distributions:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """Python and the packages whose versions decide the numbers of a run."""
    import numpy
    import pyarrow
    import sklearn
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "sklearn": sklearn.__version__, "pyarrow": pyarrow.__version__, "sam3": package_version("sam3")}
