"""The GPU check script: --device cpu --quick runs every step and writes both reports; a failing,
hanging or out-of-budget step is recorded and the others still run. The quick run has no time
boxes (--no-time-boxes): on a loaded machine it is slow, not failed."""

import json
import subprocess
import sys

import pytest

from bench.gpu_check import ROOT, Step, plan_steps, run_check, run_step, version_check, version_line


@pytest.mark.slow  # every step of the check, each in its own process (~3 min on 2 cores)
def test_quick_cpu_check_runs_every_step(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--no-time-boxes",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    report = json.loads((out / "gpu-check.json").read_text())
    assert done.stdout.splitlines()[0] == version_line(version_check())  # before any step
    assert report["versions"]["torch"]["fits"] and all(r["timeout_s"] is None for r in report["steps"])
    names = [s.name for s in plan_steps("cpu", quick=True)]
    assert [r["name"] for r in report["steps"]] == names
    assert {r["name"]: r["status"] for r in report["steps"]} == dict.fromkeys(names, "ok"), done.stdout + done.stderr
    assert done.returncode == 0 and report["ok"]
    steps = {r["kind"] + ("" if r["kind"] != "sweep" else r["name"]): r["result"] for r in report["steps"]}
    assert steps["pytest"]["failures"] == 0 and steps["pytest"]["errors"] == 0 and steps["pytest"]["tests"] > 0
    assert steps["parity"]["ok"] and any(row["status"] == "ok" for row in steps["parity"]["rows"])
    kernels = [r["result"] for r in report["steps"] if r["kind"] == "kernels"]
    assert [k["batch_size"] for k in kernels] == [1, 2]
    assert all(k["inertia_ratio_median"] <= 1.01 for k in kernels)
    sweeps = [r["result"] for r in report["steps"] if r["kind"] == "sweep"]
    assert sweeps[0]["grid"] == {"alphas": [0.3], "taus": [0.5]} and sweeps[1]["grid"]["alphas"] == [0.3, 0.6]
    assert [c["batch_size"] for c in sweeps[0]["dispatch_counts"]] == [1]
    counts = sweeps[0]["dispatch_counts"][0]
    assert counts["aten_ops"] > 0 and counts["host_to_device"] == 0 and counts["host_data_tensors"] > 0
    assert counts["sync_warnings"] is None  # the sync debug mode means something on CUDA only
    assert all(r["result"]["sync_warnings"] == {"count": None, "where": None} for r in report["steps"] if r["kind"] != "pytest")
    encoder = next(r["result"] for r in report["steps"] if r["kind"] == "encoder")
    assert [p["batch_size"] for p in encoder["per_batch_size"]] == [1]
    page = (out / "gpu-check.md").read_text()
    assert all(f"| {name} | ok |" in page for name in names) and "(no time boxes)" in page
    ensemble = sweeps[0]["ensemble_cost"]  # what the seed ensemble adds, on the page too
    assert ensemble["seeds"] == 3 and ensemble["ratio"] == pytest.approx(ensemble["ms_per_image_with"] / ensemble["ms_per_image_without"])
    assert f"the seed ensemble (3 seeds) {ensemble['ratio']:.2f}x the analysis without it" in page


def test_failures_and_timeouts_are_recorded_and_the_rest_runs(tmp_path):
    fail = run_step(Step("fails", "x"), [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                    tmp_path / "fails.json", 30)
    assert fail["status"] == "failed" and fail["rc"] == 3 and "boom" in fail["log_tail"]
    hang = run_step(Step("hangs", "x"), [sys.executable, "-c", "import time; print('start', flush=True); time.sleep(600)"],
                    tmp_path / "hangs.json", 5)
    assert hang["status"] == "timeout" and hang["rc"] is None and "start" in hang["log_tail"]  # stopped, not awaited
    report = run_check(tmp_path / "spent", [Step("a", "parity"), Step("b", "kernels")], budget_s=0, echo=lambda s: None)
    assert [r["status"] for r in report["steps"]] == ["skipped", "skipped"] and not report["ok"]
    assert "| a | skipped |" in (tmp_path / "spent" / "gpu-check.md").read_text()
    unboxed = run_check(tmp_path / "unboxed", [], budget_s=None, echo=lambda s: None)
    assert unboxed["ok"] and "(no time boxes)" in (tmp_path / "unboxed" / "gpu-check.md").read_text()


def test_the_version_line_says_what_is_outside_what_the_code_asks_for():
    from bench.gpu_check import _holds, _release

    assert _holds(_release("2.11.0+cu130"), ">=", _release("2.4")) and _holds(_release("2.11.0+cu130"), "<", _release("2.15"))
    assert not _holds(_release("2.15.1"), "<", _release("2.15")) and not _holds(_release("2.5.5"), "<", _release("2.5"))
    here = version_check()
    assert here["torch"]["fits"] and here["numpy"]["fits"]  # this environment is what the project pins
    machine = {"python": "3.12.1", "cuda": "13.0",
               "torch": {"here": "2.11.0+cu130", "wanted": ">=2.4,<2.15", "tested": "2.13.0", "fits": True},
               "numpy": {"here": "2.5.5", "wanted": ">=1.26,<2.5", "tested": None, "fits": False}}
    line = version_line(machine)
    assert line.count("\n") == 0 and "torch 2.11.0+cu130 (CUDA 13.0), numpy 2.5.5 on Python 3.12.1" in line
    assert "numpy 2.5.5 is outside numpy>=1.26,<2.5" in line and "torch 2.11" not in line.split(":", 2)[-1]
