"""Input checks shared by the kernels: they raise ValueError, which the engine turns into a user error."""

from __future__ import annotations

import torch


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ValueError when x (P, ...) holds NaN or inf (callers turn it into a user error).

    Callers pass a small derived tensor (a covariance, squared norms): NaN/inf in the
    input always reaches it, so the full input need not be scanned.
    """
    bad_rows = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad_rows.any()):
        bad = bad_rows.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} contains NaN or inf, or values too large for {x.dtype} "
            f"(problems {bad[:5]}{'...' if len(bad) > 5 else ''})"
        )
