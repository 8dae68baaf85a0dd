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


def enable_tf32(device: str) -> None:
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
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Batched torch PCA+KMeans vs scikit-learn one problem at a time, same process."""
    from bench.kernels import KernelBenchConfig, run_kernel_bench

    set_threads(threads)
    cfg = KernelBenchConfig(
        device=device, images=images, batch_size=batch_size, reference_images=reference_images, threads=threads
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
    enable_tf32(device)
    cfg = EncoderBenchConfig(
        random_weights=random_weights, checkpoint=checkpoint, bpe_path=bpe, device=device,
        images=images, batch_size=batch_size,
    )
    result = run_encoder_bench(cfg, echo=typer.echo)
    write_json(json_path, result)


def main() -> None:
    try:
        app()
    except DatrError as err:  # raised outside a command (e.g. in a callback)
        print(f"datr: error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
