"""Dataset-level structural clustering: a token reservoir across a sweep, one big PCA + KMeans.

The per-image analysis clusters each image on its own; this asks whether the encoder's
tokens form dataset-wide structure that lines up with the classes. A sweep feeds every
batch's encoder tokens (and the GT token grid) to a `TokenReservoir`; at the end
`cluster_dataset` runs PCA + KMeans on the sample with a big-problem backend (faiss,
cuml, or torch) and reports the cluster-vs-class contingency and purity.

Sampling: every token (image_id, token index) gets a pseudo-random 64-bit priority that
depends only on the seed and that identity (a splitmix64 hash), and the reservoir keeps
the `size` tokens of smallest priority seen so far -- a bottom-k sample, i.e. a uniform
sample without replacement of all tokens offered. Because the priority of a token does
not depend on when or where it was seen, the sample does not depend on batch order or
batch size, two reservoirs fed disjoint (or overlapping) shards merge into exactly the
reservoir one process would have built (Dask workers merge theirs), and re-adding an
image (a resumed sweep) changes nothing. The kept tokens are stored on the CPU in
float32, ordered by priority.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from engine.core.files import atomic_write_bytes, atomic_write_table
from kernels.grid import IGNORE
from kernels.metrics import ari_from_contingency, contingency, matched_accuracy, nmi_from_contingency
from kernels.pca import pca_transform

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def token_priorities(seed: int, image_id: str, n_tokens: int) -> np.ndarray:
    """Priority (uint64) of each token of one image: a hash of (seed, image_id, token index)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{image_id}".encode(), digest_size=8).digest()
    base = np.uint64(int.from_bytes(digest, "little"))
    with np.errstate(over="ignore"):
        return _splitmix64(base + np.arange(n_tokens, dtype=np.uint64) * _GOLDEN)


class TokenReservoir:
    """A bottom-k sample of tokens across a sweep, batch-order independent and mergeable.

    tokens (M, C) float32, labels (M,) int64 class per token (255 = none), priorities
    (M,) uint64, image_ids (M,) object, token_index (M,) int64; M <= size, sorted by
    priority. tokens_seen counts the tokens offered (an image offered twice counts twice).
    """

    def __init__(self, size: int, seed: int = 0, channels: int = 256):
        if size < 1:
            raise ValueError(f"the reservoir size must be >= 1, got {size}")
        self.size, self.seed, self.channels = int(size), int(seed), int(channels)
        self.tokens = torch.empty(0, self.channels, dtype=torch.float32)
        self.labels = np.empty(0, np.int64)
        self.priorities = np.empty(0, np.uint64)
        self.image_ids = np.empty(0, dtype=object)
        self.token_index = np.empty(0, np.int64)
        self.tokens_seen = 0

    def __len__(self) -> int:
        return int(self.priorities.shape[0])

    @property
    def full(self) -> bool:
        return len(self) >= self.size

    def add(self, tokens: torch.Tensor, gt_tokens: torch.Tensor | None, image_ids) -> None:
        """Offer a batch: tokens (B, N, C) on any device, gt_tokens (B, N) class ids or None, B image ids.

        Only the tokens that can enter the sample are gathered and copied to the CPU.
        """
        assert tokens.ndim == 3, f"tokens must be (B, N, C), got {tuple(tokens.shape)}"
        b, n, c = tokens.shape
        assert c == self.channels, f"the reservoir holds {self.channels} channels, got tokens with {c}"
        ids = [str(i) for i in image_ids]
        assert len(ids) == b, f"{b} token maps but {len(ids)} image ids"
        if gt_tokens is not None:
            assert gt_tokens.shape[0] == b and gt_tokens[0].numel() == n, f"gt_tokens must be (B, N) = {(b, n)}, got {tuple(gt_tokens.shape)}"
        self.tokens_seen += b * n
        if b == 0:
            return
        prio = np.stack([token_priorities(self.seed, i, n) for i in ids]).reshape(-1)  # (B*N,)
        candidates = np.nonzero(prio < self.priorities[-1])[0] if self.full else np.arange(b * n)
        if candidates.size > self.size:  # at most `size` of them can stay
            candidates = candidates[np.argpartition(prio[candidates], self.size - 1)[: self.size]]
        if candidates.size == 0:
            return
        sel = torch.as_tensor(candidates, device=tokens.device)
        new_tokens = tokens.detach().reshape(b * n, c)[sel].to("cpu", torch.float32)
        if gt_tokens is None:
            new_labels = np.full(candidates.size, IGNORE, np.int64)
        else:
            new_labels = gt_tokens.detach().reshape(b * n)[sel.to(gt_tokens.device)].to("cpu", torch.int64).numpy()
        self._absorb(new_tokens, new_labels, prio[candidates], np.asarray(ids, dtype=object)[candidates // n], candidates % n)

    def merge(self, other: TokenReservoir) -> TokenReservoir:
        """Fold another reservoir (same size, seed, channels) into this one; returns self."""
        if (other.size, other.seed, other.channels) != (self.size, self.seed, self.channels):
            raise ValueError(
                f"cannot merge a reservoir of (size, seed, channels) = {(other.size, other.seed, other.channels)} "
                f"into one of {(self.size, self.seed, self.channels)}"
            )
        self.tokens_seen += other.tokens_seen
        self._absorb(other.tokens, other.labels, other.priorities, other.image_ids, other.token_index)
        return self

    def save(self, path: Path) -> None:
        """Write the reservoir to `path` (.npz, atomic) so a resumed sweep can continue it."""
        import io

        buf = io.BytesIO()
        np.savez(
            buf, meta=np.array([self.size, self.seed, self.channels, self.tokens_seen], np.int64),
            tokens=self.tokens.numpy(), labels=self.labels, priorities=self.priorities,
            image_ids=np.asarray(self.image_ids.tolist(), dtype=str), token_index=self.token_index,
        )
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> TokenReservoir:
        """Read a reservoir written by `save`."""
        with np.load(Path(path), allow_pickle=False) as data:
            size, seed, channels, seen = (int(v) for v in data["meta"])
            res = cls(size, seed=seed, channels=channels)
            res.tokens = torch.from_numpy(data["tokens"].astype(np.float32).reshape(-1, channels))
            res.labels = data["labels"].astype(np.int64)
            res.priorities = data["priorities"].astype(np.uint64)
            res.image_ids = np.asarray(data["image_ids"].tolist(), dtype=object)
            res.token_index = data["token_index"].astype(np.int64)
        res.tokens_seen = seen
        return res

    def _absorb(self, tokens, labels, priorities, image_ids, token_index) -> None:
        prio = np.concatenate([self.priorities, priorities])
        # one entry per priority (the same token offered twice), the smallest `size`, in priority order
        _, first = np.unique(prio, return_index=True)  # sorted by priority
        keep = first[: self.size]
        keep_t = torch.as_tensor(keep)
        self.tokens = torch.cat([self.tokens, tokens.to(torch.float32)])[keep_t]
        self.labels = np.concatenate([self.labels, np.asarray(labels, np.int64)])[keep]
        self.priorities = prio[keep]
        self.image_ids = np.concatenate([self.image_ids, np.asarray(image_ids, dtype=object)])[keep]
        self.token_index = np.concatenate([self.token_index, np.asarray(token_index, np.int64)])[keep]


def cluster_dataset(
    reservoir: TokenReservoir, k: int, d: int, backend, seed: int = 0, *, n_init: int = 10, max_iter: int = 300,
    tol: float = 1e-4, num_classes: int | None = None, class_names: tuple[str, ...] | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """PCA to d + KMeans with k clusters on the reservoir's tokens; the cluster-vs-class table.

    backend: a ClusterBackend (from kernels.backends.resolve_backend); the tokens are put
    on `device` first (cuml needs CUDA). Returns a JSON-ready dict: sizes (k,), the
    contingency (k x classes) over tokens with a class, purity (share of those tokens in
    their cluster's majority class), per-cluster purity and majority class, NMI, ARI and
    matched accuracy; the GT fields are None when no sampled token has a class.
    """
    m = len(reservoir)
    if m < k:
        raise ValueError(f"the reservoir holds {m} tokens, fewer than k = {k} clusters")
    if not 1 <= d <= reservoir.channels:
        raise ValueError(f"d must be in [1, {reservoir.channels}], got {d}")
    x = reservoir.tokens[None].to(device)  # (1, M, C): one big problem
    fit = backend.pca_fit(x, d)
    z = pca_transform(x, fit)
    km = backend.kmeans(z, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)
    labels = km.labels[0].cpu()
    sizes = torch.bincount(labels.clamp(min=0), minlength=k)[:k]

    gt = torch.as_tensor(reservoir.labels)
    valid = (gt >= 0) & (gt != IGNORE)
    if num_classes is None:
        num_classes = int(gt[valid].max()) + 1 if bool(valid.any()) else 0
    result = {
        "k": k, "d": d, "seed": seed, "n_init": n_init,
        "backend": getattr(backend, "name", type(backend).__name__), "backend_detail": getattr(backend, "detail", ""),
        "tokens": m, "tokens_seen": reservoir.tokens_seen, "reservoir_size": reservoir.size,
        "images": int(len(set(reservoir.image_ids.tolist()))),
        "sizes": sizes.tolist(),
        "inertia": float(km.inertia[0]),
        "explained_variance_ratio": float(fit.explained_variance_ratio[0].sum()),
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "tokens_with_class": int(valid.sum()),
        "contingency": None, "purity": None, "cluster_purity": None, "majority_class": None,
        "nmi": None, "ari": None, "accuracy": None,
    }
    if num_classes > 0 and bool(valid.any()):
        table = contingency(labels[None], gt[None], k, num_classes, valid[None])  # (1, k, classes)
        counts = table[0]
        rows = counts.sum(1)
        top, majority = counts.max(1)
        result.update(
            contingency=counts.long().tolist(),
            purity=float(top.sum() / counts.sum()),
            cluster_purity=[float(t / r) if r > 0 else None for t, r in zip(top, rows, strict=True)],
            majority_class=[int(c) if r > 0 else None for c, r in zip(majority, rows, strict=True)],
            nmi=float(nmi_from_contingency(table)[0]),
            ari=float(ari_from_contingency(table)[0]),
            accuracy=float(matched_accuracy(table)[0]),
        )
    return result


def write_dataset_clustering(out_dir: Path, result: dict | list[dict]) -> list[Path]:
    """Write DIR/dataset_clustering.json (all results) and DIR/dataset_clustering.parquet
    (the contingency in long form: k, d, cluster, class_id, class_name, count). Atomic."""
    import pyarrow as pa

    results = [result] if isinstance(result, dict) else list(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "dataset_clustering.json"
    atomic_write_bytes(json_path, json.dumps({"version": 1, "results": results}, indent=2).encode())
    written = [json_path]
    columns: dict[str, list] = {"k": [], "d": [], "cluster": [], "class_id": [], "class_name": [], "count": []}
    for res in results:
        names = res.get("class_names") or []
        for cluster, row in enumerate(res.get("contingency") or []):
            for class_id, count in enumerate(row):
                columns["k"].append(res["k"])
                columns["d"].append(res["d"])
                columns["cluster"].append(cluster)
                columns["class_id"].append(class_id)
                columns["class_name"].append(names[class_id] if class_id < len(names) else None)
                columns["count"].append(int(count))
    if columns["k"]:
        schema = pa.schema([("k", pa.int32()), ("d", pa.int32()), ("cluster", pa.int32()), ("class_id", pa.int32()),
                            ("class_name", pa.string()), ("count", pa.int64())])
        table = pa.Table.from_pydict(columns, schema=schema)
        parquet_path = out_dir / "dataset_clustering.parquet"
        atomic_write_table(parquet_path, table)
        written.append(parquet_path)
    return written
