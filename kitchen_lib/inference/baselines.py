"""Baselines every model has to beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kitchen_lib.data.cache import PairsCache
from kitchen_lib.data.examples import ConditioningConfig, gather
from kitchen_lib.inference.metrics import changed_fraction, frame_scores, mean_psnr, summarise


def copy_frame(current: np.ndarray) -> np.ndarray:
    """The copy baseline's prediction: nothing moves, the future frame is the current one."""
    return current


def copy_baseline(cache: PairsCache, split: str = "test", max_pairs: int | None = None) -> dict[str, float]:
    """Score copy_frame on the pairs of a split (evenly thinned to max_pairs), and say how much changes."""
    pairs = gather(cache, cache.select(split, max_pairs), ConditioningConfig())  # the frames alone
    cur, fut = pairs["current"], pairs["future"]
    scores = summarise([frame_scores(c, f, p) for c, f, p in zip(cur, fut, copy_frame(cur), strict=True)])
    return {"pairs": len(cur), **scores,
            "changed_fraction": float(np.mean([changed_fraction(c, f) for c, f in zip(cur, fut, strict=True)]))}


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
