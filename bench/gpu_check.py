"""`python -m bench.gpu_check --out DIR`: every GPU test and benchmark in one go, one JSON.

Made for a lent GPU with a few minutes on it: each step runs in its own process with a
time box (a step that hangs, crashes the driver or runs out of memory is recorded and
the next one starts), the whole check keeps to `--budget-s`, and the results land in
DIR/gpu-check.json and a readable DIR/gpu-check.md. Steps, in order:

  pytest_gpu         pytest -m gpu
  parity             `datr parity` on the device (torch fp32 with TF32 off, the CuPy eigensolver,
                     faiss-gpu and cuML where they import)
  kernels_bN         `datr bench kernels` at batch N (1, 8, 32, 64), sklearn on the CPU in the same
                     process, with the device's peak memory
  encoder            `datr bench encoder --random-weights` (bf16 autocast on CUDA) at batch 1, 4, 8
  sweep_bN_GRID      `datr bench sweep` on the simulated source at batch 16 and 64, default grid and
                     the 5-alpha x 3-tau grid (the first also counts aten ops, host syncs and
                     host-to-device copies per analysis call, on the CPU and on the device)

Every step but pytest runs under torch.cuda.set_sync_debug_mode("warn"), and its record holds
the count of CUDA's sync warnings and the lines that raised the most (null off CUDA).
Before any step runs, one line says which torch, CUDA and Python the check found and whether
that torch is within what the code asks for (pyproject.toml; CI tests constraints.txt's).

`--device cpu --quick` runs the same steps at toy sizes (tests/test_gpu_check.py runs it with
`--no-time-boxes`, so the script cannot rot and a slow machine fails nothing); its encoder
step uses the tiny SAM3 of engine/sources/sam3/tiny.py. A step's process is this module again
with `--step KIND --params JSON` (see `child`). The exit status is 0 when every step passed,
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID_5X3 = {"alphas": [0.1, 0.2, 0.3, 0.5, 0.8], "taus": [0.3, 0.5, 0.7]}
TARGETS = [  # H200 targets from issue 14: reported against, not tested
    "analysis at most 1 ms/image at the best batch, at least 20x the sklearn CPU path (kernels)",
    "simulated sweep at least 300 images/s (sweep_end_to_end)",
    "SAM3 backbone plus 5-prompt grounding at least 30 images/s in bf16 (encoder)",
]


@dataclass
class Step:
    name: str
    kind: str  # pytest | parity | kernels | sweep | encoder
    params: dict = field(default_factory=dict)
    timeout_s: float = 60.0


def plan_steps(device: str, quick: bool) -> list[Step]:
    """The steps for a device; --quick: the same steps at toy sizes (CPU test of the script)."""
    if quick:
        tests = ["tests/test_eigh.py", "tests/test_parity.py"]
        parity = {"images": 1, "problems": 4, "side": 16, "channels": 16, "d": 4, "k": 3, "n_init": 2}
        kernels = {"images": 2, "reference_images": 1, "n_inits": [1], "repeats": 1, "side": 24, "channels": 32,
                   "d": 8, "k": 3}
        kernel_batches, sweep_batches = (1, 2), (2,)
        sweep = {"images": 2, "reference_images": 1, "n_init": 1, "seeds": 3}
        grids = {"default": {}, "grid2x1": {"alphas": [0.3, 0.6], "taus": [0.5]}}
        encoder = {"images": 1, "batch_sizes": [1], "tiny": True}
        timeouts = {"pytest": 60, "parity": 40, "kernels": 40, "sweep": 60, "encoder": 60}
    else:
        tests = []
        parity = {}
        kernels = {"images": 64, "reference_images": 2, "repeats": 3}
        kernel_batches, sweep_batches = (1, 8, 32, 64), (16, 64)
        sweep = {"images": 64, "reference_images": 1, "n_init": 10, "workers": 4}
        grids = {"default": {}, "grid5x3": GRID_5X3}
        encoder = {"images": 16, "batch_sizes": [1, 4, 8]}
        timeouts = {"pytest": 60, "parity": 45, "kernels": 35, "sweep": 60, "encoder": 120}
    steps = [Step("pytest_gpu", "pytest", {"tests": tests}, timeouts["pytest"]),
             Step("parity", "parity", {"device": device, "config": parity}, timeouts["parity"])]
    steps += [Step(f"kernels_b{b}", "kernels", {**kernels, "device": device, "batch_size": b}, timeouts["kernels"])
              for b in kernel_batches]
    # the encoder before the sweeps: if the budget runs out, the simulated sweeps are what is lost
    steps.append(Step("encoder", "encoder", {**encoder, "device": device}, timeouts["encoder"]))
    first = True
    for b in sweep_batches:
        for grid_name, grid in grids.items():
            counts = ([1] if quick else [1, 16]) if first else []  # ops and syncs are counted once, on the CPU
            steps.append(Step(f"sweep_b{b}_{grid_name}", "sweep",
                              {**sweep, **grid, "device": device, "batch_size": b, "count_batches": counts},
                              timeouts["sweep"]))
            first = False
    return steps


def step_argv(step: Step, json_path: Path) -> list[str]:
    if step.kind == "pytest":
        return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                f"--junitxml={json_path.with_suffix('.xml')}", *step.params.get("tests", [])]
    return [sys.executable, "-m", "bench.gpu_check", "--step", step.kind, "--params", json.dumps(step.params),
            "--json", str(json_path)]


def run_step(step: Step, argv: list[str], json_path: Path, timeout_s: float | None) -> dict:
    """Run one step's process under its time box (None: none); the record says what happened, whatever it was."""
    record = {"name": step.name, "kind": step.kind, "params": step.params,
              "timeout_s": None if timeout_s is None else round(timeout_s, 1)}
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        rc, out = done.returncode, (done.stdout or "") + (done.stderr or "")
        record["status"] = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired as err:
        rc = None
        out = _text(err.stdout) + _text(err.stderr)
        record["status"] = "timeout"
    record.update(rc=rc, seconds=round(time.perf_counter() - start, 2), log_tail=out[-3000:])
    if json_path.exists():
        record["result"] = json.loads(json_path.read_text())
    elif step.kind == "pytest" and json_path.with_suffix(".xml").exists():
        record["result"] = junit_counts(json_path.with_suffix(".xml"))
    return record


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def junit_counts(path: Path) -> dict:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def run_check(out: Path, steps: list[Step], budget_s: float | None, echo=print) -> dict:
    """Run every step within the budget (None: no budget and no time boxes); write DIR/gpu-check.json
    and DIR/gpu-check.md."""
    (out / "steps").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = []
    for step in steps:
        left = None if budget_s is None else budget_s - (time.perf_counter() - start)
        json_path = out / "steps" / f"{step.name}.json"
        json_path.unlink(missing_ok=True)
        if left is not None and left < 5:
            records.append({"name": step.name, "kind": step.kind, "params": step.params, "status": "skipped",
                            "why": f"the {budget_s:.0f} s budget was spent"})
        else:
            box = None if left is None else min(step.timeout_s, left)
            records.append(run_step(step, step_argv(step, json_path), json_path, box))
        rec = records[-1]
        echo(f"gpu-check: {step.name:<22} {rec['status']:<8} {rec.get('seconds', 0):7.1f} s")
    from bench.machine import machine_info  # torch: imported by the parent only here

    versions = version_check()
    versions["line"] = version_line(versions)

    report = {"ok": all(r["status"] == "ok" for r in records), "seconds": round(time.perf_counter() - start, 1),
              "budget_s": budget_s, "machine": machine_info(), "versions": versions, "targets": TARGETS,
              "steps": records}
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu-check.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    from bench.gpu_check_report import render

    return render(report)


# ---------------------------------------------------------------------------- the step processes


def child(kind: str, params: dict, json_path: Path) -> None:
    """Run one step in this process under CUDA's sync debug mode and write its JSON (the parent
    time-boxes the process)."""
    from bench.dispatch import SyncWarnings
    from engine.core.devices import set_matmul_precision

    device = params.get("device", "cpu")
    set_matmul_precision(device)  # TF32 off on CUDA: parity and fp32 figures mean fp32
    with SyncWarnings(device) as sync:
        payload = run_kind(kind, params, device)
    payload["sync_warnings"] = sync.as_dict()
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    if kind == "parity" and not payload["ok"]:
        raise SystemExit(1)


def run_kind(kind: str, params: dict, device: str) -> dict:
    """One step's benchmark, in this process; returns its JSON payload."""
    import torch
    from threadpoolctl import threadpool_limits

    from bench.memory import PeakMemory

    echo = print
    if kind == "parity":
        from bench.parity import ParityConfig, run_parity

        payload = run_parity(device=device, echo=echo, cfg=ParityConfig(**params.get("config", {})))
    elif kind == "kernels":
        from bench.kernels import KernelBenchConfig, run_kernel_bench

        torch.set_num_threads(1)
        cfg = KernelBenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}, threads=1)
        with threadpool_limits(1), PeakMemory(device) as peak:
            payload = run_kernel_bench(cfg, echo=echo)
        payload["peak_memory"] = peak.as_dict()
    elif kind == "sweep":
        from bench.sweep import SweepBenchConfig, run_sweep_bench

        torch.set_num_threads(1)
        cfg = SweepBenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
        with threadpool_limits(1):
            payload = run_sweep_bench(cfg, echo=echo)
    elif kind == "encoder":
        payload = encoder_step(params, echo)
    else:
        raise SystemExit(f"gpu_check: unknown step kind {kind!r}")
    return payload


def encoder_step(params: dict, echo) -> dict:
    from bench.encoder import EncoderBenchConfig, run_encoder_bench
    from bench.memory import PeakMemory

    extra = {}
    if params.get("tiny"):  # --quick: the tests' tiny SAM3 (same classes, cut widths) at 224 px
        from engine.sources.sam3.tiny import TINY_SIDE, build_tiny_sam3

        extra = {"model_factory": build_tiny_sam3, "image_side": TINY_SIDE}
    cfg = EncoderBenchConfig(random_weights=True, device=params["device"], images=params["images"], **extra)
    with PeakMemory(params["device"]) as peak:
        payload = run_encoder_bench(cfg, echo=echo, batch_sizes=tuple(params["batch_sizes"]))
    payload["peak_memory"] = peak.as_dict()
    payload["config"]["model_factory"] = "engine.sources.sam3.tiny.build_tiny_sam3" if params.get("tiny") else None
    return payload


CHECKED_PACKAGES = ("torch", "numpy")  # the machine's own, never replaced by the carried wheels


def version_check() -> dict:
    """Which torch (and CUDA), numpy and Python run the check, against what the code asks for
    (pyproject.toml) and what CI tests (constraints.txt): {package: {here, wanted, tested, fits}}."""
    import numpy
    import torch

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    constraints = (ROOT / "constraints.txt").read_text()
    out = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for name, module in zip(CHECKED_PACKAGES, (torch, numpy), strict=True):
        wanted = next(d for d in deps if re.match(rf"{name}\b", d))[len(name):]
        pins = re.findall(rf"^{name}==(\S+)", constraints, re.M)
        here = module.__version__
        out[name] = {"here": here, "wanted": wanted, "tested": pins[0] if pins else None,
                     "fits": all(_holds(_release(here), op, _release(bound))
                                 for op, bound in re.findall(r"(>=|<=|==|<|>)\s*([\d.]+)", wanted))}
    return out


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", version.split("+")[0])[:3])


def _holds(here: tuple, op: str, bound: tuple) -> bool:
    here = (here + (0,) * len(bound))[: len(bound)]  # 2.11.0 against 2.15 compares (2, 11) with (2, 15)
    return {">=": here >= bound, "<=": here <= bound, "==": here == bound, "<": here < bound, ">": here > bound}[op]


def version_line(v: dict) -> str:
    """One line, printed before any step: what runs the check and whether it is what the code asks for."""
    parts = [f"{name} {v[name]['here']}" + (f" (CUDA {v['cuda']})" if name == "torch" else "") for name in CHECKED_PACKAGES]
    outside = [f"{name} {v[name]['here']} is outside {name}{v[name]['wanted']}" for name in CHECKED_PACKAGES
               if not v[name]["fits"]]
    tested = ", ".join(f"{name} {v[name]['tested']}" for name in CHECKED_PACKAGES if v[name]["tested"])
    verdict = "; ".join(outside) + " (steps that fail may fail on that)" if outside else "within what the code asks for"
    return f"gpu_check: {', '.join(parts)} on Python {v['python']} (CI tests {tested}): {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu-check.json, gpu-check.md and steps/")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--quick", action="store_true", help="the same steps at toy sizes (a CPU test of this script)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget for all steps (360; 150 with --quick)")
    parser.add_argument("--no-time-boxes", action="store_true",
                        help="no budget and no per-step time box (tests on a loaded machine: slow is not failed)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        child(args.step, json.loads(args.params), args.json)
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: error: --device {args.device} but CUDA is not available here; "
                  "use --device cpu --quick to check the script", file=sys.stderr)
            return 2
    print(version_line(version_check()), flush=True)
    budget = None if args.no_time_boxes else (args.budget_s or (150.0 if args.quick else 360.0))
    report = run_check(args.out, plan_steps(args.device, args.quick), budget)
    print(f"gpu-check: {'all steps passed' if report['ok'] else 'some steps did not pass'} in {report['seconds']} s; "
          f"see {args.out / 'gpu-check.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

