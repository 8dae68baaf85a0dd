"""Configuration of a run: one dataclass per stage, validated once, written to run.json.

AnalysisConfig (the clustering analysis), DataConfig (where the images are and how they
become model inputs), SimulatedConfig (the simulated source) and RunConfig (everything a
sweep needs; it holds the other three). Each field's default lives here only: the CLI's
options default to None and name these defaults in their help. Choice fields are plain
strings parsed by engine.core.choices.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from engine.core.choices import (
    RESERVED_SCOPES,
    Backend,
    CacheDtype,
    DatasetKind,
    Decode,
    Eigh,
    KMeansInit,
    Mode,
    Model,
)
from engine.core.errors import ConfigError
from engine.core.files import file_stem
from engine.core.geometry import MODEL_SIDE

DEFAULT_PROMPTS = ("vegetation", "building", "road", "vehicle", "other")


MAX_FALSE_POSITIVES = 20  # false-positive blobs per (image, prompt) the simulated source may draw


@dataclass(frozen=True)
class SimulatedConfig:
    """Knobs of the simulated SAM3 (engine/sources/simulated.py; run.toml's [simulated] table).

    planted_effect / planted_class: a known decoder effect for calibrating the effect
    statistics (the simulated module's docstring says how it is planted); 0 = none, and the
    source is then bitwise what it was before the knob existed.
    """

    seed: int = 0
    class_separation: float = 1.0  # per-channel std of each class mean mu_c
    within_class: float = 0.5  # per-channel std of the smooth within-class variation
    variation_rank: int = 4  # number of variation directions per class
    feature_noise: float = 0.5  # per-channel std of the i.i.d. token noise (before smoothing)
    feature_smoothing: float = 1.0  # Gaussian sigma of the feature-map blur, in tokens (0 = none)
    colour_weight: float = 0.2  # per-channel std of the image-colour projection
    mask_noise: float = 0.2  # 0 = masks are the exact GT regions; larger = blurrier, wobblier edges
    miss_rate: float = 0.1  # probability that an instance's query gets a low (not kept) score
    false_positive_rate: float = 0.5  # expected false-positive blobs per (image, prompt)
    query_noise: float = 0.3  # std of the noise on instance query vectors (before LayerNorm)
    min_instance_area: int = 3  # GT components smaller than this (288-grid pixels) get no query
    planted_effect: float = 0.0  # the planted decoder effect: e / 2 of the class moved, in [0, 2] (0 = none, 2 = all of it)
    planted_class: int = 0  # the GT class whose prompt carries it (0 = vegetation in UDD5)

    def __post_init__(self) -> None:
        for name in ("class_separation", "within_class", "feature_noise", "feature_smoothing", "colour_weight",
                     "mask_noise", "false_positive_rate", "query_noise", "planted_effect"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"simulated.{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.miss_rate <= 1:
            raise ConfigError(f"simulated.miss_rate must be in [0, 1], got {self.miss_rate!r}")
        if self.false_positive_rate > MAX_FALSE_POSITIVES:
            raise ConfigError(f"simulated.false_positive_rate must be <= {MAX_FALSE_POSITIVES}, got {self.false_positive_rate!r}")
        if self.variation_rank < 1:
            raise ConfigError(f"simulated.variation_rank must be >= 1, got {self.variation_rank!r}")
        if self.min_instance_area < 1:
            raise ConfigError(f"simulated.min_instance_area must be >= 1, got {self.min_instance_area!r}")
        if self.planted_effect > 2:
            raise ConfigError(f"simulated.planted_effect must be in [0, 2] (the share of the class moved is e / 2: "
                              f"2 moves all of it), got {self.planted_effect!r}")
        if not 0 <= self.planted_class < 255:
            raise ConfigError(f"simulated.planted_class must be a GT class id in [0, 254], got {self.planted_class!r}")


@dataclass(frozen=True)
class AnalysisConfig:
    """Parameters of the clustering analysis; every list is a grid evaluated in one pass."""

    alphas: tuple[float, ...] = (0.3,)
    ks: tuple[int, ...] = (5,)
    dims: tuple[int, ...] = (32,)
    taus: tuple[float, ...] = (0.5,)
    n_init: int = 10
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    effective_threshold: float = 0.5  # W_s(j) >= this makes token j effective
    silhouette_sample: int = 1000
    backend: str = "auto"  # engine.core.choices.Backend
    eigh: str = "auto"  # PCA eigensolver of the torch backend (engine.core.choices.Eigh)
    dataset_sample: int = 0  # tokens in the dataset-level reservoir (0 = no dataset-level clustering)
    controls: bool = True  # the null and reseed controls of every flip ratio (engine.analysis.controls)
    kmeans_init: str = "independent"  # how DATR scopes start KMeans (engine.core.choices.KMeansInit)
    seeds: int = 10  # KMeans seeds per scope for the effect statistics (the ensemble; README "Effects"); 0 = none

    def validate(self) -> AnalysisConfig:
        def need(ok: bool, option: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{option}: {msg}")

        need(len(self.alphas) > 0 and all(math.isfinite(a) and a >= 0 for a in self.alphas), "--alpha",
             f"need finite values >= 0, got {list(self.alphas)}")
        need(len(self.ks) > 0 and all(2 <= k <= 64 for k in self.ks), "--clusters", f"need values in [2, 64], got {list(self.ks)}")
        need(len(self.dims) > 0 and all(1 <= d <= 256 for d in self.dims), "--dims", f"need values in [1, 256], got {list(self.dims)}")
        need(len(self.taus) > 0 and all(math.isfinite(t) and 0 < t <= 1 for t in self.taus), "--tau", f"need values in (0, 1], got {list(self.taus)}")
        need(self.n_init >= 1, "--n-init", f"need >= 1, got {self.n_init}")
        need(isinstance(self.seeds, int) and not isinstance(self.seeds, bool) and (self.seeds == 0 or self.seeds >= 3), "--seeds",
             f"need 0 (no seed ensemble, no effects) or >= 3 (seed pairs with a standard error), got {self.seeds}")
        need(self.max_iter >= 1, "--max-iter", f"need >= 1, got {self.max_iter}")
        need(math.isfinite(self.tol) and self.tol >= 0, "--tol", f"need a finite value >= 0, got {self.tol}")
        need(0 < self.effective_threshold <= 1, "effective_threshold", f"need (0, 1], got {self.effective_threshold}")
        need(self.silhouette_sample >= 2, "silhouette_sample", f"need >= 2, got {self.silhouette_sample}")
        Backend.parse(self.backend, "--backend")
        Eigh.parse(self.eigh, "--eigh")
        KMeansInit.parse(self.kmeans_init, "--kmeans-init")
        need(isinstance(self.controls, bool), "--controls", f"need true or false, got {self.controls!r}")
        need(self.dataset_sample >= 0, "--dataset-sample", f"need >= 0, got {self.dataset_sample}")
        need(self.dataset_sample == 0 or self.dataset_sample >= max(self.ks), "--dataset-sample",
             f"need at least k = {max(self.ks)} tokens, got {self.dataset_sample}")
        for name in ("alphas", "ks", "dims", "taus"):
            values = getattr(self, name)
            need(len(set(values)) == len(values), f"--{name}", f"values repeat: {list(values)}")
        return self


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how to turn them into 1008 x 1008 model inputs (run.toml's [data] table).

    root: the dataset folder (None only for a run that reads a feature cache instead).
    split: the split folder to read (None: ROOT itself, or every split under it).
    kind: what the dataset is (engine.core.choices.DatasetKind; `--dataset` on the command line).
    limit: read only the first `limit` images (sorted by name) -- before tiling.
    """

    root: Path | None = None
    split: str | None = "val"
    mode: str = "squash"  # engine.core.choices.Mode
    tile_overlap: int = 0  # pixels shared by neighbouring tiles, 0 <= overlap < 1008
    kind: str = "auto"  # engine.core.choices.DatasetKind
    num_workers: int = 2
    decode: str = "auto"  # engine.core.choices.Decode
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))
        Mode.parse(self.mode, "--mode")
        DatasetKind.parse(self.kind, "--dataset")
        Decode.parse(self.decode, "--decode")
        if not 0 <= self.tile_overlap < MODEL_SIDE:
            raise ConfigError(f"--tile-overlap must be in [0, {MODEL_SIDE - 1}] pixels, got {self.tile_overlap}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.split is not None and (not self.split or "/" in self.split or self.split in (".", "..")):
            raise ConfigError(f"--split must be a folder name such as val or train, got {self.split!r}")


GRID_CHUNK = 8  # SAM3: image x prompt pairs per forward_grounding call (engine.sources.sam3.source)


@dataclass(frozen=True)
class RunConfig:
    """Everything a sweep needs: the data (DataConfig), the source, the output, the analysis parameters."""

    data: DataConfig = field(default_factory=DataConfig)
    out: Path = Path("datr-out")
    model: str = "simulated"  # engine.core.choices.Model
    checkpoint: Path | None = None
    bpe_path: Path | None = None
    device: str = "cpu"
    batch_size: int = 4
    resume: bool = False
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    class_ids: tuple[int, ...] = (0, 1, 2, 3, 4)
    grid_chunk: int = GRID_CHUNK
    save_features: Path | None = None
    cache_dtype: str = "float16"  # engine.core.choices.CacheDtype
    from_cache: Path | None = None
    figures: int = 0
    simulated: SimulatedConfig = field(default_factory=SimulatedConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def validate(self) -> RunConfig:
        Model.parse(self.model, "--model")
        CacheDtype.parse(self.cache_dtype, "--cache-dtype")
        if self.model == "sam3" and self.checkpoint is None and self.from_cache is None:
            raise ConfigError("--model sam3 needs --checkpoint PATH/sam3.pt (the weights are not downloaded); or use --model simulated")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: need >= 1, got {self.batch_size}")
        if self.figures < 0:
            raise ConfigError(f"--figures: need >= 0, got {self.figures}")
        if self.grid_chunk < 1:
            raise ConfigError(f"grid_chunk: need >= 1, got {self.grid_chunk}")
        if len(self.prompts) == 0 or len(self.prompts) != len(self.class_ids):
            raise ConfigError(f"--prompts: need one prompt per class id, got {len(self.prompts)} prompts for {len(self.class_ids)} classes")
        if len(set(self.prompts)) != len(self.prompts) or any(p in RESERVED_SCOPES for p in self.prompts):
            raise ConfigError(f"--prompts: prompts must be unique and not {' or '.join(map(repr, RESERVED_SCOPES))}, "
                              f"got {list(self.prompts)}")
        check_prompts(self.prompts)
        if self.data.root is None and self.from_cache is None:
            raise ConfigError("give a DATASET folder (or --from-cache DIR)")
        self.analysis.validate()
        return self

    def to_json(self) -> dict:
        return json_ready(asdict(self))


def json_ready(value):
    """A config as asdict gives it, with paths as strings (run.json)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


MAX_PROMPT_CHARS = 80  # a prompt names figure files (class-<prompt>_clustering_raw.svg, within 255 bytes) and table columns


def check_prompts(prompts: tuple[str, ...]) -> None:
    """What the figures need of a prompt, checked before any work: a short printable text, a file name of its own."""
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip() or prompt != prompt.strip() or not prompt.isprintable():
            raise ConfigError(f"--prompts: {prompt!r} is not a prompt; give printable text without leading or trailing spaces")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"--prompts: a prompt of {len(prompt)} characters ({prompt[:24]!r}...); give at most "
                              f"{MAX_PROMPT_CHARS} (a prompt names its figure files)")
    stems: dict[str, str] = {}
    for prompt in prompts:
        stem = file_stem(prompt).lower()
        if stem in stems:
            raise ConfigError(f"--prompts: {stems[stem]!r} and {prompt!r} make the same figure file names ({stem}); "
                              "make them differ in letters or digits")
        stems[stem] = prompt


def split_entries(given: str | Sequence[str] | None, option: str) -> tuple[str, ...] | None:
    """A list option's entries: comma lists, and the option given again appends (--alpha 0.3 --alpha 0.5 = --alpha 0.3,0.5).

    An empty entry (a,,b; a trailing comma; an empty value) is an error, never skipped:
    skipping it would shift every later entry (a prompt onto another class's GT).
    """
    if given is None:
        return None
    entries = []
    for text in [given] if isinstance(given, str) else list(given):
        for entry in str(text).split(","):
            if not entry.strip():
                raise ConfigError(f"{option}: {str(text)!r} has an empty entry; give each value once, separated by "
                                  f"commas (e.g. {option} a,b or {option} a {option} b)")
            entries.append(entry.strip())
    if not entries:
        raise ConfigError(f"{option}: empty list")
    return tuple(entries)


def parse_list(given: str | Sequence[str] | None, cast, option: str) -> tuple | None:
    """'0.3,0.5' (or the option given twice) -> (0.3, 0.5); a clear error naming the option otherwise."""
    entries = split_entries(given, option)
    if entries is None:
        return None
    try:
        return tuple(cast(v) for v in entries)
    except ValueError:
        raise ConfigError(f"{option}: expected a comma-separated list of numbers, got {','.join(entries)!r}") from None


def load_toml(path: Path) -> dict:
    """Read a run.toml: top-level run options, and [data], [analysis] and [simulated] tables."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: not valid TOML ({err})") from None
    tables = {"data": DataConfig, "analysis": AnalysisConfig, "simulated": SimulatedConfig}
    run_keys = {f.name for f in fields(RunConfig)} - set(tables)
    moved = [k for k in data if k in MOVED_TO_DATA]
    if moved:
        raise ConfigError(f"--config {path}: {moved[0]} is a data option: put it in the [data] table as "
                          f"{MOVED_TO_DATA[moved[0]]} = ...")
    for name in tables:
        if name in data and not isinstance(data[name], dict):
            raise ConfigError(f"--config {path}: {name} must be a table ([{name}]), got {type(data[name]).__name__}")
    unknown = [k for k in data if k not in run_keys and k not in tables]
    for name, owner in tables.items():
        keys = {f.name for f in fields(owner)}
        unknown += [f"{name}.{k}" for k in data.get(name, {}) if k not in keys]
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}")
    checks = [(RunConfig, {k: v for k, v in data.items() if k not in tables}, "")]
    checks += [(owner, data.get(name, {}), f"{name}.") for name, owner in tables.items()]
    for owner, table, prefix in checks:
        hints = typing.get_type_hints(owner)
        for key, value in table.items():
            check_toml_type(path, prefix + key, value, hints[key])
    return data


def check_toml_type(path: Path, key: str, value, hint) -> None:
    """A run.toml value against its field's type (int, float, str, bool, Path, tuples of those; None allowed where it is)."""
    def fits(value, hint) -> bool:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            return any(fits(value, a) for a in args if a is not type(None))
        if origin is tuple:
            return isinstance(value, list) and all(fits(v, args[0]) for v in value)
        if hint is bool:
            return isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if hint is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if hint in (str, Path):
            return isinstance(value, str)
        return True

    if not fits(value, hint):
        raise ConfigError(f"--config {path}: {key} = {value!r} is a {type(value).__name__}, expected {describe_type(hint)}")


def describe_type(hint) -> str:
    """'an integer', 'a list of numbers', 'a path' ... for a config field's type."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path (a string)"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return f"a list of {describe_type(args[0]).split(' ', 1)[1]}s"
    if args:
        return describe_type(args[0])
    return names.get(hint, str(hint))


MOVED_TO_DATA = {"dataset": "root", "split": "split", "mode": "mode", "tile_overlap": "tile_overlap", "dataset_kind": "kind",
                 "num_workers": "num_workers", "decode": "decode", "limit": "limit"}  # run.toml keys of older versions


def merge(base: RunConfig, overrides: dict) -> RunConfig:
    """Apply a dict of run options (and 'data' / 'analysis' / 'simulated' dicts) onto a RunConfig."""
    overrides = dict(overrides)
    tables = {name: overrides.pop(name, None) or {} for name in ("data", "analysis", "simulated")}
    tuple_fields = {"alphas", "ks", "dims", "taus", "prompts", "class_ids"}
    path_fields = {"root", "out", "checkpoint", "bpe_path", "save_features", "from_cache"}

    def typed(values: dict) -> dict:
        return {k: tuple(v) if k in tuple_fields else Path(v) if k in path_fields and v is not None else v
                for k, v in values.items()}

    return replace(base, data=replace(base.data, **typed(tables["data"])),
                   analysis=replace(base.analysis, **typed(tables["analysis"])),
                   simulated=replace(base.simulated, **tables["simulated"]), **typed(overrides))
