"""The feature cache: SAM3 outputs saved per image in safetensors, so the analysis can
be rerun (`--from-cache`) without the encoder. Readable by any tool with plain
`safetensors` (no pickle, nothing executes when read).

CACHE/index.json            {"format": "datr-feature-cache/1", "image_ids": [...], "prompts": [...],
                             "class_ids": [...], "taus": [...], "source": {...}} -- ids in dataset order
CACHE/<image_id>.safetensors  per image:
    features     (256, 72, 72)        float16  encoder vision_features
    queries      (P, 200, 256)        float16  decoder query states, prompts in index order
    scores       (P, 200)             float32  sigmoid(logit) * sigmoid(presence)
    query_masks  (P, 200, 72, 72)     float16  every query's mask probability pooled 4x4 to the token grid
    union_masks  (T, P, 288, 288)     uint8    1 where a kept (score >= taus[t]) mask has probability >= 0.5
    gt_mask      (288, 288)           uint8    GT majority grid, 255 = ignore (only with GT)
    gt_tokens    (72, 72)             uint8    GT majority grid on the token grid (only with GT)
  metadata: image_id, prompts (JSON), taus (JSON)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.core.errors import DataError
from engine.core.files import atomic_write_bytes, temporary_name
from engine.sources.base import SourceBatch

FORMAT = "datr-feature-cache/1"


def cache_file_name(image_id: str) -> str:
    """A file name for an image id (ids are file stems, tiles add _rN_cN; keep it safe anyway)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id) + ".safetensors"


class FeatureCacheWriter:
    def __init__(self, root: Path, prompts: tuple[str, ...], class_ids: tuple[int, ...], taus: tuple[float, ...], source: dict):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = {"format": FORMAT, "prompts": list(prompts), "class_ids": list(class_ids), "taus": list(taus), "source": source}
        index = self.root / "index.json"
        self.image_ids: list[str] = json.loads(index.read_text()).get("image_ids", []) if index.is_file() else []

    def write(self, batch: SourceBatch, gt_mask: torch.Tensor | None, gt_tokens: torch.Tensor | None) -> None:
        for i, image_id in enumerate(batch.image_ids):
            tensors = {
                "features": batch.features[i].half(),
                "queries": batch.queries[i].half(),
                "scores": batch.scores[i].float(),
                "query_masks": batch.query_masks[i].half(),
                "union_masks": batch.union_masks[i].to(torch.uint8),
            }
            if gt_mask is not None:
                tensors["gt_mask"] = gt_mask[i].to(torch.uint8)
                tensors["gt_tokens"] = gt_tokens[i].to(torch.uint8)
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            path = self.root / cache_file_name(image_id)
            tmp = temporary_name(path)
            save_file(tensors, str(tmp), metadata={"image_id": image_id, "prompts": json.dumps(self.meta["prompts"]),
                                                    "taus": json.dumps(self.meta["taus"])})
            tmp.replace(path)
            if image_id not in self.image_ids:
                self.image_ids.append(image_id)
        atomic_write_bytes(self.root / "index.json", json.dumps({**self.meta, "image_ids": self.image_ids}, indent=2).encode())


@dataclass
class CachedBatch:
    source: SourceBatch
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None
    positions: list[int]


class FeatureCacheReader:
    """Batches of cached SourceBatches, in the cache's image order."""

    def __init__(self, root: Path):
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise DataError(f"--from-cache {self.root}: no index.json here; point it at a folder written by --save-features")
        try:
            self.meta = json.loads(index.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{index}: not valid JSON ({err}); rewrite the cache with --save-features") from None
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{index}: format {self.meta.get('format')!r} is not {FORMAT!r}; rewrite the cache with --save-features")
        self.image_ids: list[str] = list(self.meta["image_ids"])
        self.prompts = tuple(self.meta["prompts"])
        self.class_ids = tuple(self.meta["class_ids"])
        self.taus = tuple(float(t) for t in self.meta["taus"])
        if not self.image_ids:
            raise DataError(f"--from-cache {self.root}: the cache holds no images")

    def describe(self) -> dict:
        """What run.json records: the cache, and whether the source that wrote it was simulated."""
        return {"model": "cache", "from_cache": str(self.root), "num_images": len(self.image_ids),
                **{k: self.meta[k] for k in ("prompts", "taus", "source")},
                "simulated": bool((self.meta.get("source") or {}).get("simulated", False))}

    def check_taus(self, taus: tuple[float, ...]) -> list[int]:
        """Positions of the requested taus among the cached ones (the 288 unions exist only for those)."""
        missing = [t for t in taus if t not in self.taus]
        if missing:
            raise DataError(f"--from-cache {self.root}: cached for tau {list(self.taus)}, not {missing}; use those --tau values or re-run with --save-features")
        return [self.taus.index(t) for t in taus]

    def load(self, image_id: str) -> dict[str, torch.Tensor]:
        path = self.root / cache_file_name(image_id)
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise DataError(f"{path}: listed in index.json but missing; re-run with --save-features") from None
        except (SafetensorError, OSError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({err}); re-run with --save-features") from None

    def batches(self, positions: list[int], batch_size: int, taus: tuple[float, ...], device: torch.device) -> Iterator[CachedBatch]:
        tau_pos = self.check_taus(taus)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            items = [self.load(self.image_ids[i]) for i in chunk]

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
            yield CachedBatch(src, stack("gt_mask") if has_gt else None, stack("gt_tokens") if has_gt else None, chunk)
