"""The wheels the GPU check carries to a lent machine (gpu-requirements.txt): fetched where the
network is, installed there only where the machine lacks the package. Standard library only: it
runs before anything is installed.

  python -m bench.gpu_wheels download [--dest gpu-wheels] [--python-version 3.12]
      binary wheels for that Python (manylinux x86_64), --no-deps: the list is the closure; a line
      marked "# sdist" (a pure-Python package with no wheel on PyPI) is built into a wheel here.
  python -m bench.gpu_wheels install [--wheels gpu-wheels]
      pip install --no-index --no-deps of the lines whose package is not installed; a package the
      machine has (any version) is used as it is, so nothing here can move its torch or numpy.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "gpu-requirements.txt"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_12_x86_64",
             "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")


@dataclass(frozen=True)
class Requirement:
    name: str
    version: str
    sdist: bool  # no wheel on PyPI: built here (pure Python)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def read_requirements(path: Path = REQUIREMENTS) -> list[Requirement]:
    """The `name==version` lines of the file (comments and blank lines skipped)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        spec, _, comment = line.partition("#")
        if not spec.strip():
            continue
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s]+)\s*", spec)
        if not match:
            raise SystemExit(f"{path}:{number}: expected name==version, got {line!r}")
        out.append(Requirement(match[1], match[2], "sdist" in comment))
    return out


def installed_version(name: str) -> str | None:
    for candidate in {name, name.replace("-", "_"), name.replace("_", "-")}:
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("gpu_wheels: " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def download(dest: Path, python_version: str) -> None:
    reqs = read_requirements()
    dest.mkdir(parents=True, exist_ok=True)
    binary = [r.pin for r in reqs if not r.sdist]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version, *platforms,
        "--dest", str(dest), *binary)
    built = [r.pin for r in reqs if r.sdist]
    if built:
        pip("wheel", "-q", "--no-deps", "--wheel-dir", str(dest), *built)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"gpu_wheels: {len(wheels)} wheels for Python {python_version} in {dest}, {size / 2**20:.1f} MiB")


def install(wheels: Path) -> None:
    reqs = read_requirements()
    have = {r.name: installed_version(r.name) for r in reqs}
    missing = [r for r in reqs if have[r.name] is None]
    kept = [f"{r.name} {have[r.name]}" for r in reqs if have[r.name] is not None]
    print(f"gpu_wheels: the machine has {len(kept)} of {len(reqs)}: {', '.join(kept) or 'none'}")
    if not missing:
        return
    if not any(wheels.glob("*.whl")):
        raise SystemExit(f"gpu_wheels: {len(missing)} packages are missing here ({', '.join(r.name for r in missing)}) "
                         f"and {wheels} holds no wheels: run `python -m bench.gpu_wheels download` where the network is")
    pip("install", "-q", "--no-index", "--no-deps", "--find-links", str(wheels), *(r.pin for r in missing))
    print(f"gpu_wheels: installed {len(missing)}: {', '.join(r.pin for r in missing)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    down = sub.add_parser("download", help="fetch the wheels (where the network is)")
    down.add_argument("--dest", type=Path, default=ROOT / "gpu-wheels")
    down.add_argument("--python-version", default="3.12", help="the GPU machine's Python (binary wheels are per version)")
    inst = sub.add_parser("install", help="install the wheels the machine lacks (offline)")
    inst.add_argument("--wheels", type=Path, default=ROOT / "gpu-wheels")
    args = parser.parse_args(argv)
    if args.command == "download":
        download(args.dest, args.python_version)
    else:
        install(args.wheels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
