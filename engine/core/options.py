"""A RunConfig from a command's parameters: defaults < run.toml < typed options < what the command fixes.

The CLI names its parameters after the config fields they set (RunConfig's, DataConfig's
and AnalysisConfig's), and every option defaults to None: an option left out sets
nothing, so the dataclasses' defaults and run.toml's values stand. This is one loop over a
click/typer context (`ctx.params`, `ctx.command.params`); nothing here imports typer.
"""

from __future__ import annotations

from dataclasses import fields

from engine.core.config import (
    AnalysisConfig,
    DataConfig,
    RunConfig,
    load_toml,
    merge,
    parse_list,
    split_entries,
)

LIST_FIELDS = {"alphas": float, "ks": int, "dims": int, "taus": float}  # comma lists (or the option repeated)
TABLES = ("data", "analysis", "simulated")
RUN_FIELDS = {f.name for f in fields(RunConfig)} - set(TABLES)
DATA_FIELDS = {f.name for f in fields(DataConfig)}
ANALYSIS_FIELDS = {f.name for f in fields(AnalysisConfig)}


def build_run_config(ctx, **fixed) -> RunConfig:
    """Defaults < run.toml < options typed on the command line < what the command itself fixes.

    Every parameter of the command named like a RunConfig / DataConfig / AnalysisConfig
    field sets it when it is not None. `fixed`: fields the command decides (e.g. `analyze`
    reads one image: split None, one item per batch), set even when None.
    """
    config = ctx.params.get("config")
    base = merge(RunConfig(), load_toml(config)) if config is not None else RunConfig()
    tables: dict[str, dict] = {"run": {}, "data": {}, "analysis": {}}
    # a list option left out arrives as () from click (typer makes it None only for the command's own call)
    typed = {name: value for name, value in ctx.params.items() if value not in (None, ()) and name not in fixed}
    for name, value in [*typed.items(), *fixed.items()]:
        route(ctx, tables, name, value)
    prompts = tables["run"].get("prompts")
    if prompts is not None and len(prompts) != len(base.class_ids) and "class_ids" not in tables["run"]:
        tables["run"]["class_ids"] = tuple(range(len(prompts)))
    return merge(base, {**tables["run"], "data": tables["data"], "analysis": tables["analysis"]}).validate()


def route(ctx, tables: dict[str, dict], name: str, value) -> None:
    """Put one parameter where its config field is (list options parsed, an empty entry refused)."""
    if name in LIST_FIELDS:
        tables["analysis"][name] = parse_list(value, LIST_FIELDS[name], option_name(ctx, name))
    elif name in ANALYSIS_FIELDS:
        tables["analysis"][name] = value
    elif name in DATA_FIELDS:
        tables["data"][name] = value
    elif name == "prompts":
        tables["run"]["prompts"] = split_entries(value, "--prompts")
    elif name in RUN_FIELDS:
        tables["run"][name] = value


def option_name(ctx, name: str) -> str:
    """How the user spells the parameter `name` (its first option string, e.g. --alpha for alphas)."""
    return next((p.opts[0] for p in ctx.command.params if p.name == name), name)
