"""Baselines every model has to beat."""

from __future__ import annotations

import numpy as np

from kitchen_lib.metrics import changed_fraction, mean_psnr
from kitchen_lib.pairs import PairsCache


def copy_baseline(cache: PairsCache, split: str = "test", max_pairs: int | None = None) -> dict[str, float]:
    """Predict the future frame as a copy of the current one; PSNR and how much changes."""
    idx = cache.frame_indices(split)
    if max_pairs is not None and len(idx) > max_pairs:
        idx = idx[np.linspace(0, len(idx) - 1, max_pairs).astype(int)]
    if len(idx) == 0:
        raise ValueError(f"the {split} split has no pairs")
    cur, fut = cache.frames[idx[:, 0]], cache.frames[idx[:, 1]]
    return {
        "pairs": int(len(idx)),
        "psnr": mean_psnr(fut, cur),
        "changed_fraction": float(np.mean([changed_fraction(c, f) for c, f in zip(cur, fut, strict=True)])),
    }
