"""What one result row is: the column schema of rows/*.parquet and how a grid point's rows are built.

One row per image x slot x (d, k) grid point; a slot is the encoder clustering or one
(tau, alpha, scope) DATR clustering (engine.analysis.layout.Slot). The README's Results
table documents every column; the result store writes exactly this schema. The column
groups below are the one list of them that the rest of the engine reads.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

# Bump when a change alters what the rows of the same options hold (a run's identity
# carries it, so `--resume` does not mix rows of two versions). 2: the flip-ratio controls and kmeans_init;
# 3: DATR from factors (covariance algebra), last digits differ from built token sets; 4: the seed ensemble's
# columns, null permutations drawn on the device, --kmeans-init encoder from Lloyd fixed points.
ROWS_VERSION = 4

FLIP_COLUMNS = ("flip_ratio", "flip_ratio_processed")  # the paper's single flip ratio (best of n_init at --seed)
CONTROL_COLUMNS = ("flip_ratio_null", "flip_ratio_null_processed", "flip_ratio_reseed")  # its single-draw controls
ENSEMBLE_COLUMNS = ("flip_between", "flip_within", "flip_null_between", "effect_instability", "effect_instability_se",
                    "effect_null", "effect_null_se")  # from the seed ensemble (engine.analysis.ensemble)
MEASURE_COLUMNS = ("cos_distance", "datr_shift", "iou")
QUALITY_COLUMNS = ("accuracy", "nmi", "ari", "silhouette", "calinski_harabasz", "davies_bouldin")
FLOAT_COLUMNS = (*FLIP_COLUMNS, *CONTROL_COLUMNS, *ENSEMBLE_COLUMNS, *MEASURE_COLUMNS, *QUALITY_COLUMNS,
                 "inertia", "explained_variance_ratio")
COUNT_COLUMNS = ("kept_queries", "effective_tokens")  # per DATR slot; null for the encoder slot

ROW_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("scope", pa.string()),
    ("scope_kind", pa.string()),
    ("class_id", pa.int32()),
    ("tau", pa.float64()),
    ("alpha", pa.float64()),
    ("d", pa.int32()),
    ("k", pa.int32()),
    ("kmeans_init", pa.string()),
    *[(name, pa.int32()) for name in COUNT_COLUMNS],
    ("n_tokens", pa.int32()),
    ("n_iter", pa.int32()),
    *[(name, pa.float64()) for name in FLOAT_COLUMNS],
])


def append_rows(columns: dict[str, list], image_ids: list[str], slots: list, d: int, k: int, per_slot: dict[str, torch.Tensor],
                n_tokens: int, kmeans_init: str) -> None:
    """Extend the column lists with one row per (image, slot) for the grid point (d, k).

    per_slot: column name -> (B, M) tensor for every FLOAT_COLUMNS / COUNT_COLUMNS entry
    the batch has (absent float columns are null, e.g. the controls when they are off) and `n_iter`;
    kmeans_init: how the run's DATR scopes started KMeans (the same on every row of a run). Every
    value goes to the host in one copy (one synchronisation on a GPU); counts are exact in float64.
    """
    b, m = per_slot["kept_queries"].shape
    missing = torch.full((b, m), float("nan"), dtype=torch.float64, device=per_slot["kept_queries"].device)
    names = list(FLOAT_COLUMNS) + list(COUNT_COLUMNS) + ["n_iter"]
    host = torch.stack([per_slot[name].reshape(b, m).double() if name in per_slot else missing for name in names]).cpu().numpy()
    at = {name: host[i].reshape(-1) for i, name in enumerate(names)}  # row r = image r // M, slot r % M
    encoder = np.tile([slot.is_encoder for slot in slots], b)

    def floats(values: np.ndarray) -> list:
        return [None if v != v else v for v in values.tolist()]  # NaN -> null

    def counts(values: np.ndarray) -> list:
        return [None if enc else int(v) for enc, v in zip(encoder, values.tolist(), strict=True)]

    block = {
        "image_id": np.repeat(np.asarray(image_ids, dtype=object), m).tolist(),
        "scope": [slot.scope for slot in slots] * b,
        "scope_kind": [slot.kind for slot in slots] * b,
        "class_id": [slot.class_id for slot in slots] * b,
        "tau": [slot.tau for slot in slots] * b,
        "alpha": [slot.alpha for slot in slots] * b,
        "d": [d] * (b * m),
        "k": [k] * (b * m),
        "kmeans_init": [kmeans_init] * (b * m),
        **{name: counts(at[name]) for name in COUNT_COLUMNS},
        "n_tokens": [n_tokens] * (b * m),
        "n_iter": at["n_iter"].astype(np.int64).tolist(),
        **{name: floats(at[name]) for name in FLOAT_COLUMNS},
    }
    for key, values in block.items():
        columns.setdefault(key, []).extend(values)
