"""SAM3 checkpoints and vocabulary as untrusted input: read, normalise, check against the model.

`read_checkpoint` loads with `torch.load(weights_only=True)` (nothing executes) and maps
every failure to one line naming the file; `check_state_dict` is load_state_dict(strict=True)
as one-line errors (foreign model, missing, unexpected keys, wrong shapes). The official
sam3.pt is the video model's state_dict: its tracker weights and the tracker's second
neck are dropped by an explicit list, everything else must match exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.core.errors import CheckpointError
from engine.core.files import atomic_write_bytes, file_sha256, stat_key

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def resolve_bpe_path(bpe_path: str | Path | None) -> Path:
    """The BPE vocabulary: the path given, or the copy shipped in the open_clip wheel."""
    if bpe_path is not None:
        path = Path(bpe_path)
        if not path.is_file():
            raise CheckpointError(f"BPE vocabulary {path}: no such file; pass the path of {BPE_NAME}")
        return path
    candidates = []
    for package, rel in (("open_clip", BPE_NAME), ("sam3", os.path.join("..", "assets", BPE_NAME))):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(spec.submodule_search_locations[0]) / rel)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise CheckpointError(
        f"BPE vocabulary {BPE_NAME} not found (looked in the open_clip and sam3 packages): "
        "pip install open_clip_torch, which ships it, or pass --bpe PATH"
    )


@dataclass
class CheckpointContents:
    """A checkpoint read and normalised to the image model's state_dict keys."""

    path: Path
    state: dict[str, torch.Tensor]
    layout: str  # "official" ({"model": {"detector.*", "tracker.*"}}) or "plain" (a state_dict)
    ignored_keys: dict[str, int]  # what of the file the image model does not use, by reason


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {what}")


def _examples(keys, n: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def check_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint path, or a one-line CheckpointError when there is no file there."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file; pass the path of SAM3's sam3.pt (gated download: huggingface.co/facebook/sam3)")
    if path.is_dir():
        raise _fail(path, "is a directory; pass the sam3.pt file itself")
    return path


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read a checkpoint without unpickling arbitrary objects; map every failure to one line."""
    path = check_checkpoint_path(path)
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "empty file (0 bytes); download it again")
    with path.open("rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"
    is_pickle = head[:1] == b"\x80"  # pickle protocol >= 2: torch's legacy format or a raw pickle
    if not (is_zip or is_pickle):
        raise _fail(path, f"not a PyTorch checkpoint (starts with {head!r}, neither zip nor pickle); pass SAM3's sam3.pt")
    if is_zip and not zipfile.is_zipfile(path):
        raise _fail(path, f"truncated or corrupt ({size} bytes, the zip archive has no central directory); download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        text = str(err)
        # torch's weights-only unpickler names what it refused: a global (a function or class: code), an opcode
        refused = re.search(r"[Uu]nsupported (global: GLOBAL \S+|GLOBAL \S+|operand \S+)", text)
        if refused:
            raise _fail(
                path,
                f"refused: holds pickled Python objects, not only tensors ({refused.group(0)}); nothing was "
                "executed. Use a weights-only checkpoint such as SAM3's sam3.pt",
            ) from None
        lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("Weights only load failed")]
        first = lines[0] if lines else type(err).__name__
        raise _fail(path, f"truncated or corrupt ({type(err).__name__}: {first[:120]}); download it again") from None
    return normalise_checkpoint(path, obj)


def normalise_checkpoint(path: Path, obj) -> CheckpointContents:
    """Accept {"model": state_dict} (the official layout) or a plain state_dict."""
    if not isinstance(obj, dict):
        raise _fail(path, f"holds a {type(obj).__name__}, not a state_dict; expected a dict of tensors or {{'model': ...}}")
    layout = "plain"
    if "model" in obj and isinstance(obj["model"], dict):
        obj, layout = obj["model"], "official"
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not obj or len(not_tensors) == len(obj):
        raise _fail(path, f"holds no model weights (a dict with keys {_examples(map(str, obj))}); expected a state_dict")
    if not_tensors:
        raise _fail(path, f"{len(not_tensors)} entries are not tensors (e.g. {_examples(map(str, not_tensors))})")
    ignored = {}
    if any("detector" in k for k in obj):
        # the same key mapping as sam3.model_builder._load_checkpoint: keep "detector" keys,
        # prefix stripped; the "tracker" keys belong to the video model
        state = {k.replace("detector.", ""): v for k, v in obj.items() if "detector" in k}
        rest = [k for k in obj if "detector" not in k]
        ignored["tracker"] = sum(1 for k in rest if k.startswith("tracker."))
        state.update({k: obj[k] for k in rest if not k.startswith("tracker.")})  # left in: reported as unexpected
        layout = "official"
    else:
        state = dict(obj)
    return CheckpointContents(path=path, state=state, layout=layout, ignored_keys=ignored)


# The official sam3.pt is the video model's state_dict (it loads into
# build_sam3_video_model strictly). Its detector carries a second, SAM2-style neck for the
# tracker that the image model built without instance interactivity does not have; sam3's
# own image loader drops those weights silently (strict=False). We drop exactly these.
TRACKER_NECK_PREFIX = "backbone.vision_backbone.sam2_convs."


def check_state_dict(contents: CheckpointContents, expected: dict[str, torch.Size]) -> None:
    """load_state_dict(strict=True), as one-line errors: foreign model, missing, unexpected, shapes.

    Removes from `contents.state` the tracker-neck weights the model lacks (counted in
    `contents.ignored_keys`); everything else must match exactly.
    """
    path, state = contents.path, contents.state
    neck = [k for k in state if k.startswith(TRACKER_NECK_PREFIX) and k not in expected]
    for k in neck:
        del state[k]
    if neck:
        contents.ignored_keys["tracker_neck"] = len(neck)
    have, want = set(state), set(expected)
    common = have & want
    if 2 * len(common) < min(len(have), len(want)):  # most names foreign: another model entirely
        hint = " (looks like a SAM 2 checkpoint)" if any("sam_mask_decoder" in k or "memory_attention" in k for k in have) else ""
        raise _fail(
            path,
            f"not a SAM3 image model checkpoint{hint}: only {len(common)} of its {len(want)} weights found; "
            f"the file has e.g. {_examples(have - want)}",
        )
    missing = want - have
    if missing:
        raise _fail(path, f"{_count(missing, 'weight')} missing (e.g. {_examples(missing)}); the file is incomplete or from another SAM3 version")
    unexpected = have - want
    if unexpected:
        raise _fail(path, f"{_count(unexpected, 'unexpected weight')} (e.g. {_examples(unexpected)}); not the SAM3 image model this package builds")
    wrong = sorted(k for k in common if tuple(state[k].shape) != tuple(expected[k]))
    if wrong:
        k = wrong[0]
        raise _fail(
            path,
            f"{_count(wrong, 'weight')} with the wrong shape (e.g. {k}: file {tuple(state[k].shape)} vs model "
            f"{tuple(expected[k])}); a checkpoint of another model size or variant",
        )



HASH_CACHE_ENV = "DATR_HASH_CACHE"  # where the checkpoint hashes are kept (default: the user's cache folder)


def checkpoint_fingerprint(path: str | Path) -> dict:
    """Identity of a (multi-GB) checkpoint: the sha256 of all its bytes, its size and mtime.

    The hash is computed once per file and kept in a small JSON cache keyed by the resolved
    path, size, mtime_ns, ctime_ns and inode (`hash_cache_path`), so a run pays it only
    when the file is new or was written since.
    """
    path = check_checkpoint_path(path)
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "sha256": cached_sha256(path),
        "bytes": stat.st_size,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stat.st_mtime)),
    }


def bpe_fingerprint(bpe_path: str | Path | None) -> dict:
    """The BPE vocabulary the text encoder reads: where it was found and the sha256 of its bytes."""
    path = resolve_bpe_path(bpe_path)
    return {"path": str(path), "sha256": cached_sha256(path)}


def hash_cache_path() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "datr" / "file-hashes.json"
    return Path(os.environ.get(HASH_CACHE_ENV) or default)


def cached_sha256(path: Path) -> str:
    """sha256 of a file, from the hash cache when its (size, mtime_ns, ctime_ns, inode) are those it was hashed at."""
    key, stat = str(Path(path).resolve()), list(stat_key(path))
    cache_file = hash_cache_path()
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    if stat_key(path) != tuple(stat):
        return digest  # written while we read it: do not remember a hash of a moving file
    known[key] = {"stat": stat, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_file, json.dumps(known, indent=1).encode())
    except OSError:
        pass  # an unwritable cache costs the hash again next time, nothing else
    return digest
