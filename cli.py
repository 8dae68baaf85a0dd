"""`datr`: thin typer commands that build a config and call one engine function.

Process-wide switches (threads, TF32, SIGTERM/SIGHUP handled like Ctrl-C) are set here
for this process; a Dask worker sets the same matmul ones when it starts
(engine.run.distributed.WorkerState.setup). Option names match the config fields they set
(`--num-workers` -> DataConfig.num_workers) and default to None, so building a config is
one mapping (`build_run_config`) and the defaults live in the config only; choice options
are checked by the config (engine.core.choices), which names the option and the values in
one line.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from engine.core.choices import Backend, CacheDtype, DatasetKind, Decode, Eigh, KMeansInit, Mode, Model
from engine.core.config import AnalysisConfig, DataConfig, RunConfig, parse_list, split_entries
from engine.core.errors import DatrError, os_error_message
from engine.core.options import build_run_config
from engine.core.processes import exit_code, signals_interrupt
from engine.present.terminal import (
    DatrGroup,
    draw_figures,
    figure_options,
    interrupted_message,
    print_next,
    print_summary,
    project_version,
)

app = typer.Typer(
    name="datr",
    cls=DatrGroup,
    help="Batched SAM3 feature clustering (DATR) over aerial datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: reads at 80 columns, and no option text is taken for markup
)
bench_app = typer.Typer(help="Throughput benchmarks (reference run beside the candidate).", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(bench_app, name="bench")


def version_callback(value: bool) -> None:
    if value:
        from engine.core.versions import package_version

        typer.echo(f"datr {package_version('sam3-datr') or project_version()}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Batched SAM3 feature clustering (DATR) over aerial datasets."""


def user_errors(fn):
    """A DatrError as one line on stderr, exit 2 (no traceback); Ctrl-C, SIGTERM or SIGHUP as the --resume hint, exit 128 + signal."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with signals_interrupt():
            try:
                return fn(*args, **kwargs)
            except DatrError as err:
                typer.echo(f"datr: error: {err.message}", err=True)
                raise typer.Exit(err.exit_code) from None
            except OSError as err:  # full disk, read-only or forbidden folder, ...: the user's to fix
                typer.echo(f"datr: error: {os_error_message(err)}", err=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP (engine.core.processes)
                typer.echo(interrupted_message(fn.__name__), err=True)
                raise typer.Exit(exit_code(err)) from None

    return wrapper


def switches(threads: int | None = None, device: str | None = None) -> None:
    """The process-wide switches: torch's CPU threads, and fp32 meaning fp32 on CUDA (imports torch: not at startup)."""
    import torch

    from engine.core.devices import set_matmul_precision

    if threads is not None:
        if threads < 1:
            raise DatrError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if device is not None:
        set_matmul_precision(device)


def choices(enum) -> str:
    return ", ".join(member.value for member in enum)


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
    """Devices, backends and packages found.

    With --checkpoint, also load and verify a SAM3 checkpoint."""
    from engine.run.envinfo import collect_env

    report = collect_env()
    if checkpoint is not None:
        from engine.sources.sam3.build import verify_checkpoint

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
    eigh: Annotated[str, typer.Option(help=f"PCA eigensolver of the torch path: {choices(Eigh)}.")] = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Batched torch PCA+KMeans vs scikit-learn per problem.

    Both in the same process, on the same synthetic problems."""
    from bench.kernels import KernelBenchConfig, run_kernel_bench

    switches(threads, device)
    cfg = KernelBenchConfig(device=device, images=images, batch_size=batch_size, reference_images=reference_images,
                            threads=threads, eigh=eigh)
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
    """Images/s of the SAM3 backbone and of grounding.

    Grounding over the 5 prompts, one image x prompt grid per batch."""
    from bench.encoder import EncoderBenchConfig, run_encoder_bench

    switches(threads, device)
    cfg = EncoderBenchConfig(random_weights=random_weights, checkpoint=checkpoint, bpe_path=bpe, device=device,
                             images=images, batch_size=batch_size)
    result = run_encoder_bench(cfg, echo=typer.echo)
    write_json(json_path, result)


def default(owner, name: str) -> str:
    """A config field's default, for an option's help (the config holds the defaults; the CLI's options are None)."""
    value = getattr(owner, name)
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


A, D, R = AnalysisConfig, DataConfig, RunConfig
ModelOpt = Annotated[str | None, typer.Option(help=f"{choices(Model)} (default {default(R, 'model')}): sam3 needs --checkpoint; simulated is a GT-derived stand-in, no weights.")]
CheckpointOpt = Annotated[Path | None, typer.Option(help="SAM3 checkpoint sam3.pt (from the gated facebook/sam3 release).")]
BpeOpt = Annotated[Path | None, typer.Option("--bpe", help="BPE vocabulary; found in the open_clip package if omitted.")]
DeviceOpt = Annotated[str | None, typer.Option(help=f"cpu, cuda or cuda:N (default {default(R, 'device')}; no silent fallback).")]
BackendOpt = Annotated[str | None, typer.Option(help=f"Clustering backend: {choices(Backend)} (default {default(A, 'backend')}; auto records what it chose).")]
LIST = "a comma list, or the option repeated, is a grid"
AlphaOpt = Annotated[list[str] | None, typer.Option("--alpha", metavar="<list>", help=f"DATR blend alpha; {LIST} (default {default(A, 'alphas')}).")]
ClustersOpt = Annotated[list[str] | None, typer.Option("--clusters", metavar="<list>", help=f"KMeans k; {LIST} (default {default(A, 'ks')}).")]
DimsOpt = Annotated[list[str] | None, typer.Option("--dims", metavar="<list>", help=f"PCA dimensions d; {LIST} (default {default(A, 'dims')}).")]
TauOpt = Annotated[list[str] | None, typer.Option("--tau", metavar="<list>", help=f"Score threshold tau for kept queries; {LIST} (default {default(A, 'taus')}).")]
ModeOpt = Annotated[str | None, typer.Option(help=f"{choices(Mode)} (default {default(D, 'mode')}): squash is SAM3's 1008 resize; tile cuts 1008 crops.")]
KindOpt = Annotated[str | None, typer.Option("--dataset", help=f"Dataset kind: {choices(DatasetKind)} (default {default(D, 'kind')}).")]
NInitOpt = Annotated[int | None, typer.Option(help=f"KMeans restarts (default {default(A, 'n_init')}).")]
SeedsOpt = Annotated[int | None, typer.Option(help=f"KMeans seeds per scope for the effect statistics (>= 3, or 0 for none; default {default(A, 'seeds')}).")]
ControlsOpt = Annotated[bool | None, typer.Option("--controls/--no-controls", help="Measure the null and reseed controls of every flip ratio (default on; about doubles the analysis time).")]
KMeansInitOpt = Annotated[str | None, typer.Option(help=f"How DATR scopes start KMeans: {choices(KMeansInit)} (default {default(A, 'kmeans_init')}; independent: k-means++; encoder: from the encoder partition).")]
ConfigOpt = Annotated[Path | None, typer.Option(help="run.toml: run options at the top level, [data], [analysis] and [simulated] tables.")]
FormatsOpt = Annotated[list[str] | None, typer.Option(metavar="<list>", help="Figure formats: a comma list (or the option repeated) of png, pdf, svg (default png).")]
FigureIdsOpt = Annotated[list[str] | None, typer.Option(metavar="<list>", help="Draw the per-image figures of these image ids (a comma list, or the option repeated).")]
PromptsOpt = Annotated[list[str] | None, typer.Option(metavar="<list>", help=f"Text prompts, one per class in class order: a comma list or the option repeated (default {default(R, 'prompts')}).")]


@app.command()
@user_errors
def sweep(
    ctx: typer.Context,
    root: Annotated[Path | None, typer.Argument(metavar="DATASET", help="UDD5 root (holding train/ val/), a split folder, or an image folder.")] = None,
    out: Annotated[Path | None, typer.Option(help=f"Result folder: rows/*.parquet, errors.parquet, run.json (default {default(R, 'out')}).")] = None,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    bpe_path: BpeOpt = None,
    split: Annotated[str | None, typer.Option(help=f"Split folder to read (default {default(D, 'split')}).")] = None,
    mode: ModeOpt = None,
    tile_overlap: Annotated[int | None, typer.Option(help=f"Pixels shared by neighbouring tiles (default {default(D, 'tile_overlap')}).")] = None,
    kind: KindOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[int | None, typer.Option(help=f"Images per batch (default {default(R, 'batch_size')}).")] = None,
    num_workers: Annotated[int | None, typer.Option(help=f"DataLoader worker processes (default {default(D, 'num_workers')}).")] = None,
    decode: Annotated[str | None, typer.Option(help=f"JPEG decoding: {choices(Decode)} (default {default(D, 'decode')}).")] = None,
    backend: BackendOpt = None,
    alphas: AlphaOpt = None,
    ks: ClustersOpt = None,
    dims: DimsOpt = None,
    taus: TauOpt = None,
    n_init: NInitOpt = None,
    seeds: SeedsOpt = None,
    controls: ControlsOpt = None,
    kmeans_init: KMeansInitOpt = None,
    seed: Annotated[int | None, typer.Option(help=f"KMeans seed (default {default(A, 'seed')}).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue the sweep in --out (its run.json must be there): finished images are skipped, changed ones computed again.")] = None,
    prompts: PromptsOpt = None,
    save_features: Annotated[Path | None, typer.Option(help="Also write the feature cache (safetensors) here.")] = None,
    cache_dtype: Annotated[str | None, typer.Option(help=f"Feature cache precision: {choices(CacheDtype)} (default {default(R, 'cache_dtype')}; float32 reruns bitwise, twice the disk).")] = None,
    from_cache: Annotated[Path | None, typer.Option(help="Analyse a feature cache instead of running the model.")] = None,
    figures: Annotated[int | None, typer.Option(help="Draw the per-image figures for the first N images (with --resume: the ones not drawn yet).")] = None,
    figure_ids: FigureIdsOpt = None,
    formats: FormatsOpt = None,
    config: ConfigOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    eigh: Annotated[str | None, typer.Option(help=f"PCA eigensolver of the torch backend: {choices(Eigh)} (default {default(A, 'eigh')}).")] = None,
    dataset_sample: Annotated[int | None, typer.Option(help="Also cluster a reservoir sample of this many tokens from all images (0 = off).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Run the shards on this Dask scheduler (tcp://HOST:8786); the dataset and --out must be on a filesystem every worker shares.")] = None,
    cluster: Annotated[str | None, typer.Option(help="local: start a Dask cluster here (one worker per GPU with --device cuda).")] = None,
    dask_workers: Annotated[int | None, typer.Option(help="Workers of --cluster local (default: one per GPU; 2 on a CPU).")] = None,
) -> None:
    """Run the analysis over a dataset; results to --out (resumable). --scheduler/--cluster: over a Dask cluster."""
    switches(threads)
    options, ids = figure_choices(formats, figure_ids)
    cfg = build_run_config(ctx, **({"figures": len(ids)} if ids else {}))
    switches(device=cfg.device)
    result = run_sweep_command(cfg, scheduler, cluster, dask_workers, threads, progress, ids, options)
    typer.echo(f"{result.images_done} items analysed, {result.images_skipped_resume} already done, "
               f"{result.errors} skipped with errors, in {result.seconds:.1f} s -> {cfg.out}")
    pages = draw_figures(result, cfg, options) if result.figures.maps else []
    drawn = {str(maps.image_ids[row]) for maps, row in result.figures.maps} | set(result.figures.done_before)
    if missing := sorted(set(ids) - drawn):
        typer.echo(f"figures: no image with id {', '.join(missing)} was analysed in this run", err=True)
    print_summary(cfg.out, typer.echo)
    print_next(cfg.out, pages)


def run_sweep_command(cfg: RunConfig, scheduler, cluster, dask_workers, threads, progress: bool, ids: tuple[str, ...],
                      options):
    """The sweep itself: over Dask (--scheduler/--cluster) or here, with the figures asked for."""
    if scheduler is not None or cluster is not None:
        from engine.run.distributed import ClusterConfig, run_distributed_sweep  # imports dask: only here

        where = ClusterConfig(scheduler=scheduler, cluster=cluster, workers=dask_workers, threads=threads)
        return run_distributed_sweep(cfg, where, echo=typer.echo, show_progress=progress)
    if dask_workers is not None:
        raise DatrError("--dask-workers applies to --cluster local")
    from engine.run.sweep import run_sweep

    drawn = None
    if ids or cfg.figures:  # with --resume, images whose figures are complete are not drawn again
        from engine.present.figures.parallel import figures_complete

        drawn = functools.partial(figures_complete, cfg.out, formats=options.formats)
    return run_sweep(cfg, echo=typer.echo, show_progress=progress, keep_figures=ids or cfg.figures, figures_drawn=drawn)


def figure_choices(formats: list[str] | None, figure_ids: list[str] | None):
    """FigureOptions from --formats and the ids of --figure-ids, both list options (an empty entry is an error)."""
    from engine.present.figures.view import FigureOptions

    chosen = split_entries(formats, "--formats")
    ids = split_entries(figure_ids, "--figure-ids") or ()
    return (figure_options(",".join(chosen))[0] if chosen else FigureOptions()), ids


@app.command()
@user_errors
def analyze(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="One image file.")],
    out: Annotated[Path, typer.Option(help="Result folder.")],
    gt: Annotated[Path | None, typer.Option(help="Its ground-truth PNG (index or colour).")] = None,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    bpe_path: BpeOpt = None,
    mode: ModeOpt = None,
    kind: KindOpt = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    alphas: AlphaOpt = None,
    ks: ClustersOpt = None,
    dims: DimsOpt = None,
    taus: TauOpt = None,
    n_init: NInitOpt = None,
    seeds: SeedsOpt = None,
    controls: ControlsOpt = None,
    kmeans_init: KMeansInitOpt = None,
    draw: Annotated[bool, typer.Option("--figures/--no-figures", help="Draw the paper's per-image figures.")] = True,
    formats: FormatsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The paper's single-image analysis and every figure.

    Writes the rows, prints the summary table and draws the per-image figures."""
    from engine.data.index import index_image
    from engine.run.sweep import run_sweep

    options, _ = figure_choices(formats, None)
    cfg = build_run_config(ctx, root=image.parent, split=None, batch_size=1, num_workers=0, decode="cpu")
    index = index_image(image, gt, mode=cfg.data.mode, dataset=cfg.data.kind)
    cfg = replace(cfg, figures=len(index.items) if draw else 0)
    switches(device=cfg.device)
    typer.echo(f"analyze: {len(index.items)} item(s) of {image}: model, clustering and metrics ...")
    result = run_sweep(cfg, echo=typer.echo, show_progress=len(index.items) > 1, index=index, keep_figures=cfg.figures)
    if result.images_done == 0 and not result.images_skipped_resume:
        from engine.run.store import read_shard

        raise DatrError(next((e["error"] for e in read_shard(cfg.out / "errors.parquet").to_pylist()), f"{image}: no rows were written"))
    pages = draw_figures(result, cfg, options) if cfg.figures else []
    print_summary(cfg.out, typer.echo, paper=True)
    print_next(cfg.out, pages)


DEMO_SAMPLE = 20000  # tokens of the demo's dataset-level clustering (of 8 x 5184)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the scenes, the sweep and the report.")] = Path("demo-out"),
    images: Annotated[int, typer.Option(min=1, help="Simulated scenes to generate.")] = 8,
    device: DeviceOpt = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=f"Images per batch (default {default(R, 'batch_size')}).")] = None,
    figures: Annotated[int, typer.Option(min=0, help="Per-image figure sets to draw.")] = 1,
) -> None:
    """Simulated scenes end to end: sweep, figures, report.

    UDD5-like scenes, an alpha grid, the dataset-level clustering; no weights needed."""
    from engine.data.scenes import write_scene_set
    from engine.run.sweep import run_sweep

    if out.exists() and any(out.iterdir()):
        import shutil

        if not (out / "scenes").is_dir() and not (out / "sweep").is_dir():
            raise DatrError(f"--out {out}: exists and is not a previous demo folder; choose an empty or new folder")
        typer.echo(f"demo: replacing the earlier demo output in {out} (scenes, sweep, figures, report); "
                   "give --out DIR to keep it")
        shutil.rmtree(out)
    typer.echo(f"demo: writing {images} SIMULATED scenes to {out / 'scenes'}")
    root = write_scene_set(out / "scenes", images, seed=0)
    cfg = RunConfig(data=DataConfig(root=root, num_workers=0), out=out / "sweep", model="simulated", device=device or R.device,
                    batch_size=batch_size or R.batch_size, figures=figures,
                    analysis=AnalysisConfig(alphas=(0.3, 0.5), dataset_sample=DEMO_SAMPLE)).validate()  # default n_init and seeds
    switches(device=cfg.device)
    result = run_sweep(cfg, echo=typer.echo, keep_figures=figures)
    pages = draw_figures(result, cfg) if figures else []
    print_summary(cfg.out, typer.echo)
    try:
        from engine.present.report.build import build_report
    except ImportError:
        print_next(cfg.out, pages)
        return
    index = build_report(cfg.out, echo=typer.echo)
    print_next(cfg.out, pages, index)


@bench_app.command("sweep")
@user_errors
def bench_sweep(
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    images: Annotated[int, typer.Option(min=1, help="Simulated images in the sweep.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 4,
    reference_images: Annotated[int, typer.Option(min=1, help="Images done the paper's way (sklearn, one problem at a time).")] = 2,
    n_init: Annotated[int, typer.Option(min=1, help="KMeans restarts for both.")] = 10,
    alphas: Annotated[str, typer.Option("--alpha", help="DATR strengths, comma list (the grid both ways run).")] = "0.3",
    taus: Annotated[str, typer.Option("--tau", help="Query score thresholds, comma list.")] = "0.5",
    count_batches: Annotated[str, typer.Option(help="Batch sizes at which aten ops and host syncs of one analysis call are counted (CPU), comma list; empty: none.")] = "1,16",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads (1 keeps the comparison fair).")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """End-to-end sweep on the simulated source, per stage, beside the paper's way on the same grid."""
    from threadpoolctl import threadpool_limits

    from bench.sweep import SweepBenchConfig, run_sweep_bench

    switches(threads, device)
    grid = {"--alpha": parse_list(alphas, float, "--alpha"), "--tau": parse_list(taus, float, "--tau"),
            "--count-batches": parse_list(count_batches, int, "--count-batches") if count_batches.strip() else ()}
    AnalysisConfig(alphas=grid["--alpha"], taus=grid["--tau"])  # the same checks as a sweep's grid
    if any(b < 1 for b in grid["--count-batches"]):
        raise DatrError(f"--count-batches: need batch sizes >= 1, got {count_batches}")
    with threadpool_limits(threads):
        result = run_sweep_bench(SweepBenchConfig(device=device, images=images, batch_size=batch_size,
                                                  reference_images=reference_images, n_init=n_init,
                                                  alphas=grid["--alpha"], taus=grid["--tau"],
                                                  count_batches=grid["--count-batches"]), echo=typer.echo)
    write_json(json_path, result)


@app.command()
@user_errors
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep's --out folder (or a folder holding one, e.g. demo-out).")],
    formats: FormatsOpt = None,
) -> None:
    """The report of a sweep: DIR/report/index.html.

    Dataset-level figures, tables and the per-image table from a sweep's results."""
    from engine.present.report.build import build_report
    from engine.present.report.rows import find_sweep

    formats_ok = figure_choices(formats, None)[0].formats
    found = find_sweep(sweep_dir, echo=typer.echo)
    index = build_report(found, echo=typer.echo, formats=formats_ok)
    typer.echo(f"report: {index}")
    typer.echo(f"next:   open it in a browser, or `datr show {found}` for the summary here")


@app.command()
@user_errors
def show(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep's --out folder (or a folder holding one).")],
    csv: Annotated[Path | None, typer.Option("--csv", help="Also write the per-image table (one row per image) here.")] = None,
    width: Annotated[int | None, typer.Option(min=40, help="Table width in characters (default: the terminal's).")] = None,
) -> None:
    """The per-class summary, fitted to the terminal.

    Medians [interquartile ranges] over images, as the report; shares in %; --csv writes the per-image table."""
    from engine.present.report.rows import find_sweep
    from engine.present.summary import write_image_csv
    from engine.present.terminal import show_summary

    found = find_sweep(sweep_dir, echo=typer.echo)
    rows = show_summary(found, width, typer.echo)
    if csv is not None:
        count = write_image_csv(found, rows, csv)
        typer.echo(f"wrote {csv} ({count} images)")


@app.command()
@user_errors
def parity(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the parity table as JSON here.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device (default: every device present).")] = None,
) -> None:
    """Every backend and device against scikit-learn.

    Exit status 1 on a parity breach."""
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
