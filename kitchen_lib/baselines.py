"""Baselines every model has to beat."""

from __future__ import annotations

from collections.abc import Sequence

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


def copy_baseline_by_k(cache: PairsCache, ks: Sequence[int], split: str = "test", stride: int = 1) -> dict[str, list[float]]:
    """Copy-frame PSNR and changed-pixel fraction for each k, on the episodes of a split.

    Uses the cached frames of whole episodes, so any k up to the episode length can be asked
    for, not only the k the cache was built with. `stride` thins the start steps.
    """
    episodes = cache.meta["splits"][split]
    out: dict[str, list[float]] = {"k": list(ks), "psnr": [], "changed_fraction": []}
    for k in ks:
        cur, fut = [], []
        for e in episodes:
            frames = cache.episode_frames(e)
            starts = np.arange(0, len(frames) - k, stride)
            cur.append(frames[starts])
            fut.append(frames[starts + k])
        c, f = np.concatenate(cur), np.concatenate(fut)
        out["psnr"].append(mean_psnr(f, c))
        out["changed_fraction"].append(float(np.mean([changed_fraction(a, b) for a, b in zip(c, f, strict=True)])))
    return out
