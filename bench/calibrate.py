"""Calibration of the effect statistics on the simulated source: false-positive rate and power.

    python -m bench.calibrate [--datasets 20] [--images 16] [--effects 0,0.25,0.5,1] [--json PATH]

Each dataset is its own set of simulated scenes (scene seed 1000 + i) and simulated source
(`[simulated] seed = i`), swept with the default analysis grid and the planted effect e
(`planted_effect = e`, `planted_class = 0`, vegetation); its effects table is computed as
`datr report` does (engine.analysis.effects.dataset_effects). Reported per e:

- per contrast, the share of significant rows over all datasets (at e = 0: the false-positive
  rate; the goal is at most 5%), and the share of datasets with any significant row;
- the power: the share of datasets in which the planted class is significant against both
  contrasts (at e = 0 this is the planted class's false-positive rate).

Every number comes from rows written by the ordinary sweep (run_sweep), one thread, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from engine.analysis.effects import CONTRASTS, dataset_effects
from engine.core.config import AnalysisConfig, DataConfig, RunConfig, SimulatedConfig
from engine.data.scenes import write_scene_set
from engine.present.report.rows import Rows
from engine.run.store import read_rows
from engine.run.sweep import run_sweep

PLANTED_SCOPE = "vegetation"  # the prompt of class 0


def one_dataset(work: Path, index: int, images: int, effect: float, analysis: AnalysisConfig) -> list[dict]:
    """The effects table of dataset `index` with planted effect `effect`."""
    scenes = work / f"scenes-{index}"
    if not scenes.exists():
        write_scene_set(scenes, images, size=(400, 300), seed=1000 + index)
    out = work / f"sweep-{index}-{effect:g}"
    cfg = RunConfig(data=DataConfig(root=scenes / "UDD5", num_workers=0), out=out, model="simulated", batch_size=4,
                    simulated=SimulatedConfig(seed=index, planted_effect=effect, planted_class=0),
                    analysis=analysis).validate()
    run_sweep(cfg, echo=lambda _msg: None, show_progress=False)
    return dataset_effects(Rows.from_table(read_rows(out)), seed=0)


def summarise(tables: list[list[dict]]) -> dict:
    """Shares of significant rows per contrast, datasets with any, and the planted class's power."""
    out: dict = {"datasets": len(tables)}
    for contrast in CONTRASTS:
        rows = [e for table in tables for e in table if e["contrast"] == contrast and e["p_value"] is not None]
        out[f"significant_rows_{contrast}"] = sum(e["significant"] for e in rows) / max(1, len(rows))
        out[f"rows_{contrast}"] = len(rows)
        out[f"datasets_with_any_{contrast}"] = sum(any(e["significant"] for e in t if e["contrast"] == contrast)
                                                    for t in tables) / max(1, len(tables))
    out["datasets_with_any"] = sum(any(e["significant"] for e in t) for t in tables) / max(1, len(tables))
    planted = [all(e["significant"] and (e["median_effect"] or 0) > 0 for e in t if e["scope"] == PLANTED_SCOPE)
               and any(e["scope"] == PLANTED_SCOPE for e in t) for t in tables]
    out["planted_found_both"] = sum(planted) / max(1, len(tables))
    out["planted_median_effects"] = {c: sorted(round(e["median_effect"], 4) for t in tables for e in t
                                               if e["scope"] == PLANTED_SCOPE and e["contrast"] == c
                                               and e["median_effect"] is not None) for c in CONTRASTS}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--effects", default="0,0.25,0.5,1")
    parser.add_argument("--work", type=Path, default=None, help="keep the scenes and sweeps here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    effects = [float(e) for e in args.effects.split(",")]
    analysis = AnalysisConfig()
    work = args.work or Path(tempfile.mkdtemp(prefix="datr-calibrate-"))
    results = {"analysis": {"alphas": analysis.alphas, "taus": analysis.taus, "dims": analysis.dims, "ks": analysis.ks,
                            "n_init": analysis.n_init, "seeds": analysis.seeds},
               "images": args.images, "effects": {}}
    for effect in effects:
        start = time.perf_counter()
        tables = []
        for i in range(args.datasets):
            tables.append(one_dataset(work, i, args.images, effect, analysis))
            significant = [(e["scope"], e["contrast"]) for e in tables[-1] if e["significant"]]
            print(f"  planted_effect {effect:g}, dataset {i}: significant {significant}", flush=True)
        summary = summarise(tables) | {"seconds": round(time.perf_counter() - start, 1)}
        results["effects"][f"{effect:g}"] = summary
        print(f"planted_effect {effect:g}: " + json.dumps({k: v for k, v in summary.items() if k != "planted_median_effects"}),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(markdown_table(results))
    return 0


def markdown_table(results: dict) -> str:
    """The README's calibration table from main()'s results."""
    lines = ["| planted_effect | datasets | significant rows, instability | significant rows, null | datasets with any "
             "significant row | planted class significant against both |", "| --- | --- | --- | --- | --- | --- |"]
    for effect, s in results["effects"].items():
        any_row = s["datasets_with_any"]
        lines.append(f"| {effect} | {s['datasets']} | {100 * s['significant_rows_instability']:.1f}% of {s['rows_instability']} "
                     f"| {100 * s['significant_rows_null']:.1f}% of {s['rows_null']} | {100 * any_row:.0f}% "
                     f"| {100 * s['planted_found_both']:.0f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
