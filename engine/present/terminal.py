"""What the CLI prints around the commands: one-line usage errors, the Ctrl-C hint, where the outputs went.

Kept torch-free and light: `cli` imports it at start-up.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from engine.core.errors import DatrError

INVOCATION: list[str] = []  # the arguments of this invocation (for the --resume hint after Ctrl-C)


class DatrGroup(typer.core.TyperGroup):
    """The command group: usage errors (unknown command or option, bad value) as one line on stderr, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # typer may ship its own copy of click: take the exception classes from the module typer's own come from
        click = sys.modules[typer.BadParameter.__module__]

        args = list(sys.argv[1:] if args is None else args)
        INVOCATION[:] = args
        try:
            code = super().main(args=args, prog_name=prog_name or "datr", complete_var=complete_var,
                                standalone_mode=False, **extra)
        except click.NoArgsIsHelpError as err:  # `datr` or `datr bench` alone: the help
            typer.echo(err.ctx.get_help())
            code = 0
        except click.ClickException as err:
            where = f"{err.ctx.command_path} --help" if getattr(err, "ctx", None) is not None else "datr --help"
            typer.echo(f"datr: error: {err.format_message()} (see `{where}`)", err=True)
            code = err.exit_code
        except typer.Abort:
            typer.echo("datr: aborted", err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def project_version() -> str:
    """The version in pyproject.toml, for a checkout that is not installed."""
    import tomllib

    try:
        return tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def interrupted_message(command: str) -> str:
    """What Ctrl-C leaves behind; for a sweep, the command that continues it."""
    if command != "sweep":
        return "datr: interrupted"
    args = list(INVOCATION) or ["sweep", "..."]
    if "--resume" not in args:
        args.append("--resume")
    return ("datr: interrupted; every finished batch is kept in --out. Continue with:\n"
            f"  datr {shlex.join(args)}")


def print_next(out: Path, pages: list[Path], report: Path | None = None, echo=typer.echo) -> None:
    """Where the outputs went, and the next command to run."""
    echo(f"results: {out / 'rows'}  (run.json, errors.parquet beside it)")
    for page in pages[:5]:
        echo(f"figures: {page}")
    if len(pages) > 5:
        echo(f"figures: {len(pages) - 5} more pages under {out / 'figures'}")
    if report is not None:
        echo(f"report:  {report}")
    echo(f"next:    datr show {out}" + ("" if report is not None else f"   |   datr report {out}"))


def print_summary(out: Path, echo, paper: bool = False) -> None:
    """The per-scope summary; paper=True adds the paper's single-image numbers beside each scope."""
    from engine.core.errors import DatrError
    from engine.present.paper import PAPER_NOTE
    from engine.present.summary import render_summary, summarize, with_paper_column
    from engine.run.store import read_rows

    try:
        rows = read_rows(out)
        table = summarize(rows)
    except DatrError:
        echo("no rows were written")
        return
    if paper:
        table = with_paper_column(table, rows)
    echo(render_summary(table, f"datr summary: {out}"))
    if not paper:  # across images: the effect statistics (one image has no test)
        from engine.analysis.effects import dataset_effects
        from engine.present.effects import render_effects
        from engine.present.report.rows import Rows

        echo(render_effects(dataset_effects(Rows.from_table(rows))).rstrip("\n"))
    if paper:
        echo(PAPER_NOTE)


def figure_options(formats: str, figure_ids: str | None = None):
    """FigureOptions from --formats (checked: a bad item is named) and the ids of --figure-ids."""
    from engine.present.figures.view import FigureOptions
    from engine.present.style import check_formats

    return FigureOptions(formats=check_formats(split_list(formats))), split_list(figure_ids or "")


def split_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def draw_figures(result, cfg, options=None) -> list[Path]:
    try:
        from engine.present.figures.parallel import draw_sweep_figures
    except ImportError:
        raise DatrError("figures need matplotlib; install the project with its dependencies") from None
    return draw_sweep_figures(result, cfg, options, echo=typer.echo)
