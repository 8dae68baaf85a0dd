"""The GPU check script: --device cpu --quick runs every step and writes both reports; a failing,
hanging or out-of-budget step is recorded and the others still run."""

import json
import subprocess
import sys

from bench.gpu_check import ROOT, Step, plan_steps, run_check, run_step


def test_quick_cpu_check_runs_every_step(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads((out / "gpu-check.json").read_text())
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
    assert sweeps[0]["dispatch_counts"][0]["aten_ops"] > 0
    encoder = next(r["result"] for r in report["steps"] if r["kind"] == "encoder")
    assert [p["batch_size"] for p in encoder["per_batch_size"]] == [1]
    page = (out / "gpu-check.md").read_text()
    assert all(f"| {name} | ok |" in page for name in names)


def test_failures_and_timeouts_are_recorded_and_the_rest_runs(tmp_path):
    fail = run_step(Step("fails", "x"), [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                    tmp_path / "fails.json", 30)
    assert fail["status"] == "failed" and fail["rc"] == 3 and "boom" in fail["log_tail"]
    hang = run_step(Step("hangs", "x"), [sys.executable, "-c", "import time; print('start', flush=True); time.sleep(30)"],
                    tmp_path / "hangs.json", 1.5)
    assert hang["status"] == "timeout" and hang["rc"] is None and "start" in hang["log_tail"]  # stopped, not awaited
    report = run_check(tmp_path / "spent", [Step("a", "parity"), Step("b", "kernels")], budget_s=0, echo=lambda s: None)
    assert [r["status"] for r in report["steps"]] == ["skipped", "skipped"] and not report["ok"]
    assert "| a | skipped |" in (tmp_path / "spent" / "gpu-check.md").read_text()
