"""The closed sets of option values, each checked in one place (`Choice.parse`).

The CLI takes these enums as option types (typer lists the values in --help); the
config dataclasses keep plain strings (they go to run.json and come from run.toml) and
parse them once, in the dataclass that owns the field. The backend and eigensolver
names come from the kernels, which keep their own guard for direct callers.
"""

from __future__ import annotations

from enum import StrEnum

from engine.core.errors import ConfigError
from kernels.choices import BACKENDS, EIGH_METHODS


class Choice(StrEnum):
    """An option's allowed values; members are their own string values."""

    @classmethod
    def parse(cls, value: str, option: str) -> str:
        """The value as a plain string, or ConfigError naming the option and the choices."""
        try:
            return cls(value).value
        except ValueError:
            raise ConfigError(f"{option}: choose {', '.join(m.value for m in cls)}, got {value!r}") from None


class Model(Choice):
    sam3 = "sam3"
    simulated = "simulated"


class Mode(Choice):
    squash = "squash"  # the whole image resized to 1008 x 1008, as SAM3's processor does
    tile = "tile"  # 1008 x 1008 crops in original pixels


class DatasetKind(Choice):
    auto = "auto"
    udd5 = "udd5"
    udd6 = "udd6"
    images = "images"


class Decode(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class KMeansInit(Choice):
    independent = "independent"  # k-means++ with the encoder's seed, the paper's way
    encoder = "encoder"  # every DATR scope starts from the encoder partition's means (one run)


class Autocast(Choice):
    auto = "auto"  # bf16 on CUDA, off on the CPU
    bf16 = "bf16"
    off = "off"


Backend = Choice("Backend", [(name, name) for name in ("auto", *BACKENDS)])
Eigh = Choice("Eigh", [(name, name) for name in ("auto", *EIGH_METHODS)])


class CacheDtype(Choice):
    float16 = "float16"  # half the disk; a rerun from it can land on another partition (float rounding)
    float32 = "float32"  # exact: a rerun from it reproduces the original rows bitwise


class ScopeKind(Choice):
    """What a slot of the analysis clusters (engine/analysis/layout.py): the encoder tokens, DATR over
    all prompts' kept queries, or DATR over one prompt's. The first two are also the scopes' names."""

    encoder = "encoder"
    global_ = "global"
    class_ = "class"


ENCODER = ScopeKind.encoder.value  # the encoder slot's scope name
GLOBAL = ScopeKind.global_.value  # the all-prompts scope's name
RESERVED_SCOPES = (ENCODER, GLOBAL)  # no prompt may take these names
