"""`datr`: thin typer commands that build a config and call one engine function.

Process-wide switches (threads, TF32) are set here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from engine.errors import DatrError

app = typer.Typer(
    name="datr",
    help="Batched SAM3 feature clustering (DATR) over aerial datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Throughput benchmarks (reference run beside the candidate).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def user_errors(fn):
    """Print a DatrError as one line on stderr and exit with status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DatrError as err:
            typer.echo(f"datr: error: {err.message}", err=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise DatrError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def set_matmul_precision(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False  # parity first: fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False


class BackendChoice(str, Enum):
    auto = "auto"
    torch = "torch"
    sklearn = "sklearn"
    faiss = "faiss"
    cuml = "cuml"


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))
        typer.echo(f"wrote {path}")


@app.command()
@user_errors
def env(
    checkpoint: Annotated[Path | None, typer.Option(help="Also load and verify this SAM3 checkpoint (sam3.pt).")] = None,
    bpe: Annotated[Path | None, typer.Option(help="BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); found in open_clip if omitted.")] = None,
    device: Annotated[str, typer.Option(help="Device to load the checkpoint on: cpu, cuda, cuda:N.")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Devices, backends and packages found; with --checkpoint, verify a SAM3 checkpoint."""
    from engine.envinfo import collect_env

    report = collect_env()
    if checkpoint is not None:
        from engine.sam3_adapter import verify_checkpoint

        report["checkpoint"] = verify_checkpoint(checkpoint, bpe_path=bpe, device=device)
    for key, value in report.items():
        typer.echo(f"{key}: {json.dumps(value, default=str)}")
    write_json(json_path, report)


@bench_app.command("kernels")
@user_errors
def bench_kernels(
    device: Annotated[str, typer.Option(help="Device for the batched torch path: cpu, cuda, cuda:N.")] = "cpu",
    images: Annotated[int, typer.Option(min=1, help="Synthetic images (each = 7 clustering problems).")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batched call.")] = 8,
    reference_images: Annotated[int, typer.Option(min=1, help="Images run through the sklearn reference.")] = 4,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads (1 keeps the comparison fair).")] = 1,
    eigh: Annotated[str, typer.Option(help="PCA eigensolver of the torch path: auto, torch, cupy, host.")] = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Batched torch PCA+KMeans vs scikit-learn one problem at a time, same process."""
    from bench.kernels import KernelBenchConfig, run_kernel_bench

    set_threads(threads)
    set_matmul_precision(device)
    cfg = KernelBenchConfig(
        device=device, images=images, batch_size=batch_size, reference_images=reference_images, threads=threads, eigh=eigh
    )
    result = run_kernel_bench(cfg, echo=typer.echo)
    write_json(json_path, result)


@bench_app.command("encoder")
@user_errors
def bench_encoder(
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Full-size SAM3 with random weights (no checkpoint needed).")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="SAM3 checkpoint (sam3.pt) instead of random weights.")] = None,
    bpe: Annotated[Path | None, typer.Option(help="BPE vocabulary; found in open_clip if omitted.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N.")] = "cpu",
    images: Annotated[int | None, typer.Option(min=1, help="Images to time (default: 1 on CPU, 16 on GPU).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward.")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Images/s of the SAM3 backbone and of grounding over the 5 prompts."""
    from bench.encoder import EncoderBenchConfig, run_encoder_bench

    set_threads(threads)
    set_matmul_precision(device)
    cfg = EncoderBenchConfig(
        random_weights=random_weights, checkpoint=checkpoint, bpe_path=bpe, device=device,
        images=images, batch_size=batch_size,
    )
    result = run_encoder_bench(cfg, echo=typer.echo)
    write_json(json_path, result)


class ModelChoice(str, Enum):
    sam3 = "sam3"
    simulated = "simulated"


class ModeChoice(str, Enum):
    squash = "squash"
    tile = "tile"


def build_run_config(
    dataset: Path | None, out: Path, *, config: Path | None, model: ModelChoice, checkpoint: Path | None, bpe: Path | None,
    split: str | None, mode: ModeChoice, tile_overlap: int, dataset_kind: str, device: str, batch_size: int, workers: int,
    decode: str, backend: BackendChoice, alpha: str | None, clusters: str | None, dims: str | None, tau: str | None,
    n_init: int | None, seed: int | None, limit: int | None, resume: bool, prompts: str | None, save_features: Path | None,
    from_cache: Path | None, figures: int, explicit: set[str], extra_analysis: dict | None = None,
):
    """CLI options over run.toml over defaults; only options given on the command line override the file."""
    from engine.config import RunConfig, load_toml, merge, parse_list

    base = RunConfig(dataset=dataset, out=out)
    if config is not None:
        base = merge(base, load_toml(config))
    cli = {
        "dataset": dataset, "out": out, "model": model.value, "checkpoint": checkpoint, "bpe_path": bpe, "split": split,
        "mode": mode.value, "tile_overlap": tile_overlap, "dataset_kind": dataset_kind, "device": device,
        "batch_size": batch_size, "num_workers": workers, "decode": decode, "limit": limit, "resume": resume,
        "save_features": save_features, "from_cache": from_cache, "figures": figures,
    }
    overrides = {k: v for k, v in cli.items() if k in explicit or config is None}
    if prompts is not None:
        names = tuple(p.strip() for p in prompts.split(",") if p.strip())
        overrides["prompts"] = names
        if len(names) != len(base.class_ids):
            overrides["class_ids"] = tuple(range(len(names)))
    analysis = {}
    for key, text, cast, option in (("alphas", alpha, float, "--alpha"), ("ks", clusters, int, "--clusters"),
                                    ("dims", dims, int, "--dims"), ("taus", tau, float, "--tau")):
        values = parse_list(text, cast, option)
        if values is not None:
            analysis[key] = values
    if n_init is not None:
        analysis["n_init"] = n_init
    if seed is not None:
        analysis["seed"] = seed
    if "backend" in explicit or config is None:
        analysis["backend"] = backend.value
    analysis.update({k: v for k, v in (extra_analysis or {}).items() if v is not None})
    overrides["analysis"] = analysis
    return merge(base, overrides).validate()


def explicit_options(ctx: typer.Context) -> set[str]:
    """Names of the options the user actually typed (so run.toml values survive the defaults)."""
    # compared by name: typer may ship its own copy of click's ParameterSource enum
    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    names = {name for name in ctx.params if typed(name)}
    rename = {"bpe": "bpe_path", "workers": "num_workers"}  # parameter name -> RunConfig field
    return {rename.get(n, n) for n in names}


def print_summary(out: Path, echo) -> None:
    from engine.store import read_rows
    from engine.summary import render_summary, summarize

    try:
        table = summarize(read_rows(out))
    except DatrError:
        echo("no rows were written")
        return
    echo(render_summary(table, f"datr summary: {out}"))


ModelOpt = Annotated[ModelChoice, typer.Option(help="sam3 (needs --checkpoint) or simulated (GT-derived stand-in, no weights).")]
CheckpointOpt = Annotated[Path | None, typer.Option(help="SAM3 checkpoint sam3.pt (from the gated facebook/sam3 release).")]
BpeOpt = Annotated[Path | None, typer.Option(help="BPE vocabulary; found in the open_clip package if omitted.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N (no silent fallback).")]
BackendOpt = Annotated[BackendChoice, typer.Option(help="Clustering backend; auto records what it chose.")]
AlphaOpt = Annotated[str | None, typer.Option(help="DATR blend alpha, a comma list is a grid (default 0.3).")]
ClustersOpt = Annotated[str | None, typer.Option(help="KMeans k, a comma list is a grid (default 5).")]
DimsOpt = Annotated[str | None, typer.Option(help="PCA dimensions d, a comma list is a grid (default 32).")]
TauOpt = Annotated[str | None, typer.Option(help="Score threshold tau for kept queries, a comma list is a grid (default 0.5).")]
ModeOpt = Annotated[ModeChoice, typer.Option(help="squash: SAM3's 1008 resize; tile: 1008 crops.")]


@app.command()
@user_errors
def sweep(
    ctx: typer.Context,
    dataset: Annotated[Path | None, typer.Argument(help="UDD5 root (holding train/ val/), a split folder, or an image folder.")] = None,
    out: Annotated[Path, typer.Option(help="Result folder (rows/*.parquet, errors.parquet, run.json).")] = Path("datr-out"),
    model: ModelOpt = ModelChoice.simulated,
    checkpoint: CheckpointOpt = None,
    bpe: BpeOpt = None,
    split: Annotated[str | None, typer.Option(help="Split folder to read.")] = "val",
    mode: ModeOpt = ModeChoice.squash,
    tile_overlap: Annotated[int, typer.Option(help="Pixels shared by neighbouring tiles.")] = 0,
    dataset_kind: Annotated[str, typer.Option("--dataset", help="udd5, udd6, images or auto.")] = "auto",
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 4,
    workers: Annotated[int, typer.Option("--num-workers", help="DataLoader worker processes.")] = 2,
    decode: Annotated[str, typer.Option(help="JPEG decoding: cpu, cuda or auto.")] = "auto",
    backend: BackendOpt = BackendChoice.auto,
    alpha: AlphaOpt = None,
    clusters: ClustersOpt = None,
    dims: DimsOpt = None,
    tau: TauOpt = None,
    n_init: Annotated[int | None, typer.Option(help="KMeans restarts (default 10).")] = None,
    seed: Annotated[int | None, typer.Option(help="KMeans seed (default 0).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a sweep in --out, skipping finished images.")] = False,
    prompts: Annotated[str | None, typer.Option(help="Comma list of text prompts, one per class in class order.")] = None,
    save_features: Annotated[Path | None, typer.Option(help="Also write the feature cache (safetensors) here.")] = None,
    from_cache: Annotated[Path | None, typer.Option(help="Analyse a feature cache instead of running the model.")] = None,
    figures: Annotated[int, typer.Option(help="Draw the per-image figures for the first N images.")] = 0,
    config: Annotated[Path | None, typer.Option(help="run.toml with run options and an [analysis] table.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    eigh: Annotated[str | None, typer.Option(help="PCA eigensolver of the torch backend: auto, torch, cupy, host (default auto).")] = None,
    dataset_sample: Annotated[int | None, typer.Option(help="Also cluster a reservoir sample of this many tokens from all images (0 = off).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Run the shards on this Dask scheduler (tcp://HOST:8786); the dataset and --out must be on a filesystem every worker shares.")] = None,
    cluster: Annotated[str | None, typer.Option(help="local: start a Dask cluster here (one worker per GPU with --device cuda).")] = None,
    dask_workers: Annotated[int | None, typer.Option(help="Workers of --cluster local (default: one per GPU; 2 on a CPU).")] = None,
) -> None:
    """Run the analysis over a dataset; results to --out (resumable). --scheduler/--cluster: over a Dask cluster."""
    set_threads(threads)
    cfg = build_run_config(
        dataset, out, config=config, model=model, checkpoint=checkpoint, bpe=bpe, split=split, mode=mode,
        tile_overlap=tile_overlap, dataset_kind=dataset_kind, device=device, batch_size=batch_size, workers=workers,
        decode=decode, backend=backend, alpha=alpha, clusters=clusters, dims=dims, tau=tau, n_init=n_init, seed=seed,
        limit=limit, resume=resume, prompts=prompts, save_features=save_features, from_cache=from_cache,
        figures=figures, explicit=explicit_options(ctx), extra_analysis={"eigh": eigh, "dataset_sample": dataset_sample},
    )
    set_matmul_precision(cfg.device)
    if scheduler is not None or cluster is not None:
        from engine.distributed import ClusterConfig, run_distributed_sweep  # imports dask: only here

        where = ClusterConfig(scheduler=scheduler, cluster=cluster, workers=dask_workers, threads=threads)
        result = run_distributed_sweep(cfg, where, echo=typer.echo, show_progress=progress)
    elif dask_workers is not None:
        raise DatrError("--dask-workers applies to --cluster local")
    else:
        from engine.pipeline import run_sweep

        result = run_sweep(cfg, echo=typer.echo, show_progress=progress, keep_figures=cfg.figures)
    typer.echo(f"{result.images_done} items analysed, {result.images_skipped_resume} already done, "
               f"{result.errors} skipped with errors, in {result.seconds:.1f} s -> {cfg.out}")
    if cfg.figures:
        draw_sweep_figures(result, cfg)
    print_summary(cfg.out, typer.echo)


def draw_sweep_figures(result, cfg) -> None:
    try:
        from engine.figures import draw_image_figures
    except ImportError:
        raise DatrError("figures need matplotlib; install the project with its dependencies") from None
    for maps, row in result.maps:
        draw_image_figures(maps, row, result, cfg, cfg.out / "figures")


@app.command()
@user_errors
def analyze(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="One image file.")],
    out: Annotated[Path, typer.Option(help="Result folder.")],
    gt: Annotated[Path | None, typer.Option(help="Its ground-truth PNG (index or colour).")] = None,
    model: ModelOpt = ModelChoice.simulated,
    checkpoint: CheckpointOpt = None,
    bpe: BpeOpt = None,
    mode: ModeOpt = ModeChoice.squash,
    dataset_kind: Annotated[str, typer.Option("--dataset", help="udd5, udd6, images or auto.")] = "auto",
    device: DeviceOpt = "cpu",
    backend: BackendOpt = BackendChoice.auto,
    alpha: AlphaOpt = None,
    clusters: ClustersOpt = None,
    dims: DimsOpt = None,
    tau: TauOpt = None,
    n_init: Annotated[int | None, typer.Option(help="KMeans restarts (default 10).")] = None,
    figures: Annotated[bool, typer.Option(help="Draw the paper's per-image figures.")] = True,
    config: Annotated[Path | None, typer.Option(help="run.toml with run options and an [analysis] table.")] = None,
) -> None:
    """The paper's single-image analysis: rows, the summary table and every figure."""
    from engine.data import index_image

    index = index_image(image, gt, mode=mode.value, dataset=dataset_kind)
    cfg = build_run_config(
        image.parent, out, config=config, model=model, checkpoint=checkpoint, bpe=bpe, split=None, mode=mode,
        tile_overlap=0, dataset_kind=dataset_kind, device=device, batch_size=1, workers=0, decode="cpu",
        backend=backend, alpha=alpha, clusters=clusters, dims=dims, tau=tau, n_init=n_init, seed=None, limit=None,
        resume=False, prompts=None, save_features=None, from_cache=None, figures=len(index.items) if figures else 0,
        explicit=explicit_options(ctx) | {"split", "num_workers", "decode", "batch_size", "figures"},
    )
    set_matmul_precision(cfg.device)
    from engine.pipeline import run_sweep

    result = run_sweep(cfg, echo=typer.echo, show_progress=False, index=index, keep_figures=cfg.figures)
    if cfg.figures:
        draw_sweep_figures(result, cfg)
    print_summary(cfg.out, typer.echo)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the scenes, the sweep and the report.")] = Path("demo-out"),
    images: Annotated[int, typer.Option(min=1, help="Simulated scenes to generate.")] = 8,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 4,
    figures: Annotated[int, typer.Option(min=0, help="Per-image figure sets to draw.")] = 1,
) -> None:
    """Simulated UDD5-like scenes end to end: sweep over an alpha grid, figures, report. No weights needed."""
    from engine.config import AnalysisConfig, RunConfig
    from engine.pipeline import run_sweep
    from engine.scenes import write_scene_set

    if out.exists() and any(out.iterdir()):
        import shutil

        if not (out / "scenes").is_dir() and not (out / "sweep").is_dir():
            raise DatrError(f"--out {out}: exists and is not a previous demo folder; choose an empty or new folder")
        shutil.rmtree(out)
    typer.echo(f"demo: writing {images} SIMULATED scenes to {out / 'scenes'}")
    root = write_scene_set(out / "scenes", images, seed=0)
    cfg = RunConfig(dataset=root, out=out / "sweep", model="simulated", device=device, batch_size=batch_size,
                    num_workers=0, figures=figures, analysis=AnalysisConfig(alphas=(0.3, 0.5), n_init=4)).validate()
    set_matmul_precision(cfg.device)
    result = run_sweep(cfg, echo=typer.echo, keep_figures=figures)
    if figures:
        draw_sweep_figures(result, cfg)
    print_summary(cfg.out, typer.echo)
    try:
        from engine.report import build_report
    except ImportError:
        return
    index = build_report(cfg.out, echo=typer.echo)
    typer.echo(f"report: {index}")


@bench_app.command("sweep")
@user_errors
def bench_sweep(
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    images: Annotated[int, typer.Option(min=1, help="Simulated images in the sweep.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 4,
    reference_images: Annotated[int, typer.Option(min=1, help="Images done the paper's way (sklearn, one problem at a time).")] = 2,
    n_init: Annotated[int, typer.Option(min=1, help="KMeans restarts for both.")] = 10,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads (1 keeps the comparison fair).")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """End-to-end sweep on the simulated source, per stage, beside the paper's way."""
    from threadpoolctl import threadpool_limits

    from bench.sweep import SweepBenchConfig, run_sweep_bench

    set_threads(threads)
    set_matmul_precision(device)
    with threadpool_limits(threads):
        result = run_sweep_bench(SweepBenchConfig(device=device, images=images, batch_size=batch_size,
                                                  reference_images=reference_images, n_init=n_init), echo=typer.echo)
    write_json(json_path, result)


@app.command()
@user_errors
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep's --out folder.")],
    formats: Annotated[str, typer.Option(help="Figure formats, comma list of png, pdf, svg.")] = "png",
) -> None:
    """Dataset-level figures and DIR/report/index.html from a sweep's results."""
    from engine.report import build_report

    index = build_report(sweep_dir, echo=typer.echo, formats=tuple(f.strip() for f in formats.split(",") if f.strip()))
    typer.echo(f"report: {index}")


@app.command()
@user_errors
def parity(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the parity table as JSON here.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device (default: every device present).")] = None,
) -> None:
    """Every available backend and device against the scikit-learn reference; exit 1 on a breach."""
    from bench.parity import run_parity

    result = run_parity(device=device, echo=typer.echo)
    write_json(json_path, result)
    if not result["ok"]:
        typer.echo("parity breach: see the table above", err=True)
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except DatrError as err:  # raised outside a command (e.g. in a callback)
        print(f"datr: error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
