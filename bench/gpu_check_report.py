"""DIR/gpu-check.md: the GPU check's JSON as a page a person reads (headline figures per step)."""

from __future__ import annotations


def _rows(result: dict) -> dict:
    return {r["name"]: r for r in result.get("results", [])}


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def step_line(rec: dict) -> str:
    """One line of headline figures for a step that ran (empty when it wrote nothing), with the
    count of CUDA's sync warnings where there is one."""
    res = rec.get("result")
    if not res:
        return ""
    line = figures_line(rec["kind"], res)
    sync = res.get("sync_warnings") or {}
    if sync.get("count") is not None:
        top = ", ".join(f"{where} x{n}" for where, n in list(sync["where"].items())[:3])
        line += f"; {sync['count']} sync warnings" + (f" ({top})" if top else "")
    return line


def figures_line(kind: str, res: dict) -> str:
    if kind == "pytest":
        return f"{res['passed']} passed, {res['skipped']} skipped, {res['failures']} failed, {res['errors']} errors"
    if kind == "parity":
        rows = res.get("rows", [])
        ran = [r for r in rows if r["status"] != "skipped"]
        bad = [r for r in rows if r["status"] == "breach"]
        return f"{len(ran)} rows ran, {len(rows) - len(ran)} skipped, {len(bad)} breached" + (
            " (" + ", ".join(f"{r.get('backend')}/{r.get('device')}/{r.get('dtype')}" for r in bad) + ")" if bad else "")
    if kind == "kernels":
        rows = _rows(res)
        first = res["config"]["n_inits"][0]
        torch_row, ref_row = rows.get(f"torch_batched_n_init{first}", {}), rows.get(f"sklearn_per_problem_n_init{first}", {})
        peak = res.get("peak_memory", {})
        return (f"n_init {first}: torch {_fmt(torch_row.get('ms_per_image'), '.3f')} ms/image, sklearn "
                f"{_fmt(ref_row.get('ms_per_image'), '.1f')} ms/image, speedup {_fmt(res.get('speedup_vs_sklearn'))}x, "
                f"inertia ratio median {_fmt(res.get('inertia_ratio_median'), '.5f')}; peak "
                f"{_fmt(peak.get('device_peak_mb', peak.get('host_peak_mb')), '.0f')} MiB "
                f"({'device' if 'device_peak_mb' in peak else 'host'})")
    if kind == "sweep":
        rows = _rows(res)
        mem = res.get("peak_memory", {}).get("batched_sweep", {})
        counts = "; ".join(f"batch {c['batch_size']} on {c.get('device', 'cpu')}: {c['aten_ops']} ops, {c['host_syncs']} syncs, "
                           f"{c.get('host_to_device', '-')} host-to-device copies, {c.get('host_data_tensors', '-')} "
                           f"host-data tensors" + ("" if c.get("sync_warnings") is None else f", {c['sync_warnings']} sync warnings")
                           for c in res.get("dispatch_counts", []))
        ens = res.get("ensemble_cost")
        ensemble = ("" if not ens else f"; the seed ensemble ({ens['seeds']} seeds) {_fmt(ens['ratio'])}x the analysis "
                    f"without it ({_fmt(ens['ms_per_image_with'], '.2f')} vs {_fmt(ens['ms_per_image_without'], '.2f')} ms/image)")
        return (f"{_fmt(rows['sweep_end_to_end']['images_per_s'], '.1f')} images/s end to end, analysis "
                f"{_fmt(rows['analysis_batched']['ms_per_image'], '.2f')} ms/image vs paper's way "
                f"{_fmt(rows['analysis_paper_way_sklearn']['ms_per_image'], '.0f')} ms/image{ensemble}; peak "
                + ", ".join(f"{k.replace('_peak_mb', '')} {v:.0f} MiB" for k, v in mem.items()) + (f"; {counts}" if counts else ""))
    if kind == "encoder":
        parts = []
        for per in res.get("per_batch_size", [res]):
            rows = per["results"]
            total_ms = sum(r["ms_per_image"] for r in rows)
            parts.append(f"batch {per['batch_size']}: " + ", ".join(f"{r['name']} {r['images_per_s']:.1f}" for r in rows)
                         + f" img/s, together {1e3 / total_ms:.1f} img/s")
        return "; ".join(parts) + f" (autocast {res.get('autocast')})"
    return ""


def render(report: dict) -> str:
    machine = report.get("machine", {})
    lines = [
        "# GPU check",
        "",
        f"- result: **{'all steps passed' if report['ok'] else 'some steps did not pass'}** in {report['seconds']} s "
        + ("(no time boxes)" if report["budget_s"] is None else f"(budget {report['budget_s']:.0f} s)"),
        f"- machine: {machine.get('gpu', 'no GPU')} / {machine.get('cpu')} ({machine.get('cpu_count')} CPUs), "
        f"torch {machine.get('torch')}, CUDA {machine.get('cuda')}",
        f"- versions: {report.get('versions', {}).get('line', '-')}",
        "",
        "| step | status | seconds | headline |",
        "| --- | --- | ---: | --- |",
    ]
    for rec in report["steps"]:
        headline = step_line(rec) or rec.get("why", "")
        lines.append(f"| {rec['name']} | {rec['status']} | {rec.get('seconds', '-')} | {headline} |")
    lines += ["", "Targets (issue 14, one H200; reported against, not tested):", ""]
    lines += [f"- {t}" for t in report.get("targets", [])]
    failed = [r for r in report["steps"] if r["status"] in ("failed", "timeout")]
    for rec in failed:
        lines += ["", f"## {rec['name']}: {rec['status']} (rc {rec.get('rc')})", "", "```",
                  rec.get("log_tail", "")[-1500:].rstrip(), "```"]
    return "\n".join(lines) + "\n"
