"""A RunConfig from a command's parameters: defaults < run.toml < typed options < what the command fixes.

The CLI names its parameters after the config fields they set, so this is one loop over
a click/typer context (`ctx.params`, `ctx.get_parameter_source`, `ctx.command.params`);
nothing here imports typer.
"""

from __future__ import annotations

from dataclasses import fields

from engine.core.config import AnalysisConfig, RunConfig, load_toml, merge, parse_list

LIST_FIELDS = {"alphas": float, "ks": int, "dims": int, "taus": float}  # a comma list on the command line
RUN_FIELDS = {f.name for f in fields(RunConfig)} - {"analysis"}
ANALYSIS_FIELDS = {f.name for f in fields(AnalysisConfig)}


def build_run_config(ctx, **fixed) -> RunConfig:
    """Defaults < run.toml < options typed on the command line < what the command itself fixes.

    Every parameter of the command named like a RunConfig / AnalysisConfig field sets it;
    with --config only the options actually typed do (so the file's values survive the
    command's defaults). `fixed`: fields the command decides (e.g. `analyze` reads one image).
    """
    params = ctx.params
    config = params.get("config")
    base = RunConfig(dataset=params.get("dataset"), out=params["out"])
    if config is not None:
        base = merge(base, load_toml(config))
    typed = explicit_options(ctx)
    run: dict = {}
    analysis: dict = {}
    for name, value in params.items():
        if name in fixed or value is None or (config is not None and name not in typed):
            continue
        if name in LIST_FIELDS:
            analysis[name] = parse_list(value, LIST_FIELDS[name], option_name(ctx, name))
        elif name in ANALYSIS_FIELDS:
            analysis[name] = value
        elif name == "prompts":
            run["prompts"] = tuple(p.strip() for p in value.split(",") if p.strip())
            if len(run["prompts"]) != len(base.class_ids):
                run["class_ids"] = tuple(range(len(run["prompts"])))
        elif name in RUN_FIELDS:
            run[name] = value
    return merge(base, {**run, **fixed, "analysis": analysis}).validate()


def explicit_options(ctx) -> set[str]:
    """Names of the options the user actually typed (so run.toml values survive the defaults)."""
    # compared by name: typer may ship its own copy of click's ParameterSource enum
    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    return {name for name in ctx.params if typed(name)}


def option_name(ctx, name: str) -> str:
    """How the user spells the parameter `name` (its first option string, e.g. --alpha for alphas)."""
    return next((p.opts[0] for p in ctx.command.params if p.name == name), name)
