"""The feature cache: SAM3 outputs saved per image in safetensors, so the analysis can
be rerun (`--from-cache`) without the encoder. Readable by any tool with plain
`safetensors` (no pickle, nothing executes when read).

CACHE/index.json            {"format": "datr-feature-cache/2", "image_ids": [...], "prompts": [...],
                             "class_ids": [...], "taus": [...], "dtype": "float16", "shapes": {...},
                             "source": {...}, "source_identity": {...}} -- ids in the order written, unique
CACHE/.datr.lock            held by the run that writes the cache (one writer per cache)
CACHE/<image_id>.safetensors  per image:
    features     (256, 72, 72)        DTYPE    encoder vision_features
    queries      (P, 200, 256)        DTYPE    decoder query states, prompts in index order
    scores       (P, 200)             float32  sigmoid(logit) * sigmoid(presence)
    query_masks  (P, 200, 72, 72)     float16  every query's mask probability pooled 4x4 to the token grid
    union_masks  (T, P, 288, 288)     uint8    1 where a kept (score >= taus[t]) mask has probability >= 0.5
    gt_mask      (288, 288)           uint8    GT majority grid, 255 = ignore (only with GT)
    gt_tokens    (72, 72)             uint8    GT majority grid on the token grid (only with GT)
  metadata: image_id, prompts, class_ids, taus (JSON), dtype, source (sha256 of index.json's source_identity)

DTYPE is --cache-dtype: float16 (default, half the disk) or float32 (the sources' own
precision, so a rerun from the cache reproduces the original rows bitwise; query_masks
are float16 at the source already). Every file is checked against index.json when read
(image id, prompts, class ids, taus, dtype, tensor shapes); a file that fails is that
item's error (errors.parquet), and the run goes on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.core.errors import DataError, one_line
from engine.core.files import atomic_write_bytes, temporary_name
from engine.sources.base import SourceBatch

FORMAT = "datr-feature-cache/2"
OLD_FORMATS = ("datr-feature-cache/1",)  # float16, no class_ids/dtype/shapes in the files: read with the checks they allow
DTYPES = {"float16": torch.float16, "float32": torch.float32}
SHARED_KEYS = ("prompts", "class_ids", "taus", "dtype")  # what a cache and every file in it agree on


def cache_file_name(image_id: str) -> str:
    """A file name for an image id (ids are file stems, tiles add _rN_cN; keep it safe anyway)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id) + ".safetensors"


class FeatureCacheWriter:
    """Writes a batch's source outputs per image; extends an existing cache only if it was made the same way.

    The caller holds the folder's lock (engine.run.lock), so this is the cache's one writer.
    index.json is rebuilt from the files themselves when the writer opens the folder (each
    file carries its image id, prompts, class ids, taus, dtype and its source's
    fingerprint), so a file written just before a crash is listed, and a file of another
    source or made another way refuses the extension in one line.
    source: what run.json records about the source; source_identity: what decides its
    features (engine.run.identity.source_identity), checked against the cache's.
    """

    def __init__(self, root: Path, prompts: tuple[str, ...], class_ids: tuple[int, ...], taus: tuple[float, ...], source: dict,
                 source_identity: dict, dtype: str = "float16"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dtype = DTYPES[dtype]
        self.meta = {"format": FORMAT, "prompts": list(prompts), "class_ids": list(class_ids), "taus": list(taus),
                     "dtype": dtype, "source": source, "source_identity": source_identity, "shapes": None}
        self.source_fingerprint = source_fingerprint(source_identity)
        self.image_ids: list[str] = []
        index = self.root / "index.json"
        old = read_index(index, "--save-features") if index.is_file() else None
        if old is not None:
            self.check_same(old, index)
            self.meta["shapes"] = old.get("shapes")
        self.image_ids = self.rebuild_ids(old)

    def check_same(self, old: dict, index: Path) -> None:
        """The cache was made the same way and by the same source, or a one-line DataError naming what differs."""
        where = f"--save-features {self.root}"
        differ = [k for k in (*SHARED_KEYS, "format") if old.get(k) != self.meta[k]]
        if differ:
            raise DataError(f"{where}: holds a cache made with other {', '.join(differ)} "
                            f"({', '.join(f'{k}={old.get(k)}' for k in differ)}); choose a new --save-features folder")
        before, now = old.get("source_identity"), self.meta["source_identity"]
        if before is None:
            raise DataError(f"{where}: {index} records no source identity (written by an older datr), so new features "
                            "cannot be matched to its; choose a new --save-features folder")
        if before != now:
            differ = "; ".join(f"{k}: cache {short(a)}, now {short(b)}" for k, a, b in differences(before, now))
            raise DataError(f"{where}: holds features of another source ({differ}); extend it only from the same model and "
                            "weights (or simulated config), or choose a new --save-features folder")

    def rebuild_ids(self, old: dict | None) -> list[str]:
        """The ids of the files in the folder (index.json's order first, then the others by name), each checked."""
        files = {}
        for path in sorted(self.root.glob("*.safetensors")):
            files[self.check_file_meta(path)] = path
        listed = [i for i in (old or {}).get("image_ids", []) if i in files]
        return listed + sorted(set(files) - set(listed))

    def check_file_meta(self, path: Path) -> str:
        """A cache file's image id, after checking that it was made this way by this source."""
        fix = "move it out, or choose a new --save-features folder"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({one_line(err)}); {fix}") from None
        if meta.get("source") != self.source_fingerprint:
            raise DataError(f"{path}: written by another source (or an older datr) than this run's; {fix}")
        for key in ("prompts", "class_ids", "taus"):
            if key not in meta or json.loads(meta[key]) != self.meta[key]:
                raise DataError(f"{path}: its {key} {meta.get(key)} differ from this run's {self.meta[key]}; {fix}")
        if meta.get("dtype") != self.meta["dtype"] or not meta.get("image_id"):
            raise DataError(f"{path}: dtype {meta.get('dtype')} or image id {meta.get('image_id')!r} unlike this run's; {fix}")
        if cache_file_name(meta["image_id"]) != path.name:
            raise DataError(f"{path}: holds image {meta['image_id']!r}, whose file would be {cache_file_name(meta['image_id'])}; {fix}")
        return meta["image_id"]

    def write(self, batch: SourceBatch, gt_mask: torch.Tensor | None, gt_tokens: torch.Tensor | None) -> None:
        file_meta = {"image_id": "", **{k: json.dumps(self.meta[k]) for k in ("prompts", "class_ids", "taus")},
                     "dtype": self.meta["dtype"], "source": self.source_fingerprint}
        for i, image_id in enumerate(batch.image_ids):
            tensors = {
                "features": batch.features[i].to(self.dtype),
                "queries": batch.queries[i].to(self.dtype),
                "scores": batch.scores[i].float(),
                "query_masks": batch.query_masks[i].half(),
                "union_masks": batch.union_masks[i].to(torch.uint8),
            }
            if gt_mask is not None:
                tensors["gt_mask"] = gt_mask[i].to(torch.uint8)
                tensors["gt_tokens"] = gt_tokens[i].to(torch.uint8)
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            if self.meta["shapes"] is None:
                self.meta["shapes"] = {k: list(v.shape) for k, v in tensors.items() if not k.startswith("gt_")}
            save_atomic(self.root / cache_file_name(image_id), tensors, {**file_meta, "image_id": image_id})
            if image_id not in self.image_ids:
                self.image_ids.append(image_id)
        atomic_write_bytes(self.root / "index.json", json.dumps({**self.meta, "image_ids": self.image_ids}, indent=2).encode())


def source_fingerprint(source_identity: dict) -> str:
    """The sha256 of a source identity, carried by every cache file."""
    return hashlib.sha256(json.dumps(source_identity, sort_keys=True, default=str).encode()).hexdigest()


def differences(before: dict, now: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, before, now) of every value that differs, nested tables opened (simulated.seed, checkpoint.sha256)."""
    found = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = temporary_name(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    except SafetensorError as err:  # its I/O errors (a full disk) are not OSErrors: make them one
        raise as_os_error(err, path) from None
    finally:
        tmp.unlink(missing_ok=True)


def as_os_error(err: SafetensorError, path: Path) -> OSError:
    """safetensors' "I/O error: ... (os error 28)" as the OSError it reports."""
    found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(err))
    if found is None:
        return OSError(errno.EIO, f"could not write the cache file ({one_line(err)})", str(path))
    return OSError(int(found.group(2)), found.group(1), str(path))


def read_index(path: Path, option: str = "--from-cache") -> dict:
    """A cache's index.json, checked: JSON, a known format, the keys and their types, unique image ids."""
    fix = "rewrite the cache with --save-features"
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); {fix}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *OLD_FORMATS):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: format {found!r} is not {FORMAT!r}; {fix}")
    kinds = {"image_ids": str, "prompts": str, "class_ids": int, "taus": (int, float)}
    for key, kind in kinds.items():
        value = meta.get(key)
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise DataError(f"{path}: {key!r} is missing or not a list of {getattr(kind, '__name__', 'numbers')}; {fix}")
    repeated = sorted(i for i, n in Counter(meta["image_ids"]).items() if n > 1)
    if repeated:
        raise DataError(f"{path}: image ids listed more than once ({', '.join(repeated[:3])}); {fix}")
    if len(meta["prompts"]) != len(meta["class_ids"]):
        raise DataError(f"{path}: {len(meta['prompts'])} prompts for {len(meta['class_ids'])} class ids; {fix}")
    meta.setdefault("dtype", "float16")
    if meta["dtype"] not in DTYPES:
        raise DataError(f"{path}: dtype {meta['dtype']!r} is not one of {', '.join(DTYPES)}; {fix}")
    return meta


@dataclass
class CachedBatch:
    source: SourceBatch | None  # None when every item of the chunk failed its checks
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None
    positions: list[int]
    errors: list[tuple[str, str, str]]  # (image_id, path, error) of the chunk's bad files


class FeatureCacheReader:
    """Batches of cached SourceBatches, in the cache's image order."""

    def __init__(self, root: Path):
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise DataError(f"--from-cache {self.root}: no index.json here; point it at a folder written by --save-features")
        self.meta = read_index(index)
        self.image_ids: list[str] = list(self.meta["image_ids"])
        self.prompts = tuple(self.meta["prompts"])
        self.class_ids = tuple(self.meta["class_ids"])
        self.taus = tuple(float(t) for t in self.meta["taus"])
        if not self.image_ids:
            raise DataError(f"--from-cache {self.root}: the cache holds no images")

    def describe(self) -> dict:
        """What run.json records: the cache, and whether the source that wrote it was simulated."""
        return {"model": "cache", "from_cache": str(self.root), "num_images": len(self.image_ids), "dtype": self.meta["dtype"],
                **{k: self.meta[k] for k in ("prompts", "taus", "source") if k in self.meta},
                "simulated": bool((self.meta.get("source") or {}).get("simulated", False))}

    def file_of(self, image_id: str) -> Path:
        """The file that holds `image_id`."""
        return self.root / cache_file_name(image_id)

    def check_taus(self, taus: tuple[float, ...]) -> list[int]:
        """Positions of the requested taus among the cached ones (the 288 unions exist only for those)."""
        missing = [t for t in taus if t not in self.taus]
        if missing:
            raise DataError(f"--from-cache {self.root}: cached for tau {list(self.taus)}, not {missing}; use those --tau values or re-run with --save-features")
        return [self.taus.index(t) for t in taus]

    def load(self, image_id: str) -> dict[str, torch.Tensor]:
        """One image's tensors, checked against index.json; DataError naming the file otherwise."""
        path = self.root / cache_file_name(image_id)
        fix = "re-run with --save-features (or delete it: the run records it as an error)"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except FileNotFoundError:
            raise DataError(f"{path}: listed in index.json but missing; {fix}") from None
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({one_line(err)}); {fix}") from None
        self.check_file(path, image_id, meta, tensors, fix)
        return tensors

    def check_file(self, path: Path, image_id: str, meta: dict, tensors: dict[str, torch.Tensor], fix: str) -> None:
        if meta.get("image_id") != image_id:
            raise DataError(f"{path}: holds image {meta.get('image_id')!r}, not {image_id!r} (swapped or renamed file); {fix}")
        for key in ("prompts", "class_ids", "taus"):
            if key in meta and json.loads(meta[key]) != self.meta[key]:
                raise DataError(f"{path}: {key} {meta[key]} differ from index.json's {self.meta[key]}; {fix}")
        dtype = DTYPES[meta.get("dtype", "float16")]
        if meta.get("dtype", "float16") != self.meta["dtype"]:
            raise DataError(f"{path}: dtype {meta.get('dtype', 'float16')} differs from index.json's {self.meta['dtype']}; {fix}")
        p, t = len(self.prompts), len(self.taus)
        expected = {"features": (None, None, None, dtype), "queries": (p, None, None, dtype), "scores": (p, None, torch.float32),
                    "query_masks": (p, None, None, None, torch.float16), "union_masks": (t, p, None, None, torch.uint8)}
        shapes = self.meta.get("shapes") or {}
        for key, (*dims, kind) in expected.items():
            got = tensors.get(key)
            want = tuple(shapes.get(key) or dims)
            fits = got is not None and got.dtype == kind and got.ndim == len(want) and \
                all(w is None or w == g for w, g in zip(want, got.shape, strict=True))
            if not fits:
                found = "missing" if got is None else f"{tuple(got.shape)} {got.dtype}"
                raise DataError(f"{path}: tensor {key} is {found}, expected {want} {kind}; {fix}")
        source = self.meta.get("source_identity")
        if source is not None and meta.get("source") != source_fingerprint(source):
            raise DataError(f"{path}: made by another source than index.json's source_identity (copied in from another cache?); {fix}")

    def batches(self, positions: list[int], batch_size: int, taus: tuple[float, ...], device: torch.device) -> Iterator[CachedBatch]:
        tau_pos = self.check_taus(taus)
        for start in range(0, len(positions), batch_size):
            chunk, items, errors = [], [], []
            for i in positions[start : start + batch_size]:
                image_id = self.image_ids[i]
                try:
                    items.append(self.load(image_id))
                    chunk.append(i)
                except DataError as err:
                    errors.append((image_id, str(self.root / cache_file_name(image_id)), err.message))
            if not items:
                yield CachedBatch(None, None, None, [], errors)
                continue

            def stack(key: str, dtype=None, items=items) -> torch.Tensor:
                t = torch.stack([it[key] for it in items]).to(device)
                return t if dtype is None else t.to(dtype)

            has_gt = all("gt_mask" in it for it in items)
            src = SourceBatch(
                image_ids=[self.image_ids[i] for i in chunk],
                features=stack("features", torch.float32),
                queries=stack("queries", torch.float32),
                scores=stack("scores", torch.float32),
                query_masks=stack("query_masks"),
                union_masks=stack("union_masks", torch.bool)[:, tau_pos],
                taus=tuple(taus),
            )
            yield CachedBatch(src, stack("gt_mask") if has_gt else None, stack("gt_tokens") if has_gt else None, chunk, errors)
