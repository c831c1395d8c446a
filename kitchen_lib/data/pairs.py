"""(current, future) frame pairs k steps apart, split by episode: the config, the split, and
`PairsCache`, a built cache's frames and pair index (built and opened by `kitchen_lib.data.cache`).

A pair is (frame t, frame t+k) of one episode with t + k <= T: it never crosses an
episode's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kitchen_lib.base.images import to_tensor
from kitchen_lib.data.datasets import OFFLINE_DATASET_ID, check_dataset_id
from kitchen_lib.data.render import DEFAULT_QUALITY, check_render_args

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PairsConfig:
    """Everything that decides the contents of a pairs cache."""

    dataset: str = OFFLINE_DATASET_ID
    k: int = 5  # frames between current and future
    size: int = 64  # square frame size in pixels
    grayscale: bool = False
    quality: str = DEFAULT_QUALITY  # renderer quality: "fast" or "faithful"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    max_episodes: int | None = None  # only the first N episodes (smoke mode, quick looks)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def validate(self) -> None:
        check_dataset_id(self.dataset)
        check_render_args(self.size, self.quality)
        if self.max_episodes is not None and (not isinstance(self.max_episodes, int) or self.max_episodes < 1):
            raise ValueError(f"--max_episodes must be at least 1, or none for all (got {self.max_episodes!r})")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"--k must be a positive whole number of steps (got {self.k!r})")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("--val_fraction and --test_fraction must be in [0, 1) and leave some episodes to train on")


def split_episodes(n: int, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> dict[str, list[int]]:
    """Assign whole episodes to train/val/test, reproducibly for a seed (never split by pair)."""
    if n < 3:
        raise ValueError(f"splitting by episode needs at least 3 episodes (got {n}): generate more with --episodes")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return {
        "test": sorted(order[:n_test].tolist()),
        "val": sorted(order[n_test : n_test + n_val].tolist()),
        "train": sorted(order[n_test + n_val :].tolist()),
    }


def pair_steps(num_steps: int, k: int) -> np.ndarray:
    """Steps t of an episode with T steps (T+1 frames) that have a future frame t+k <= T."""
    return np.arange(max(num_steps - k + 1, 0))


def spread(rows: np.ndarray, n: int | None, what: str = "the selection") -> np.ndarray:
    """At most n rows, evenly spread over all of them (all rows when n is None)."""
    if len(rows) == 0:
        raise ValueError(f"{what} has no pairs")
    if n is not None and len(rows) > n:
        rows = rows[np.linspace(0, len(rows) - 1, n).astype(int)]
    return rows


@dataclass
class PairsCache:
    """A built cache: memory-mapped frames and the pair index of each split."""

    path: Path
    meta: dict
    frames: np.ndarray  # (F, H, W, C) uint8, memory-mapped
    _index: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def config(self) -> PairsConfig:
        return PairsConfig(**self.meta["config"])

    def pairs(self, split: str) -> np.ndarray:
        """(N, 2) int array of (episode, step) for a split, in a fixed order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
        return np.asarray(self.meta["pairs"][split], dtype=np.int64).reshape(-1, 2)

    def frame_indices(self, split: str) -> np.ndarray:
        """(N, 2) rows into `frames` of (current, future) for each pair of a split."""
        if split not in self._index:
            first = {e["index"]: e["first_frame"] for e in self.meta["episodes"]}
            p = self.pairs(split)
            cur = np.array([first[e] for e in p[:, 0]], dtype=np.int64) + p[:, 1]
            self._index[split] = np.stack([cur, cur + self.meta["config"]["k"]], axis=1)
        return self._index[split]

    def select(self, split: str, max_pairs: int | None = None) -> np.ndarray:
        """(N, 2) (episode, step) rows of a split ('all': every split), evenly thinned to max_pairs."""
        splits = SPLITS if split == "all" else (split,)
        return spread(np.concatenate([self.pairs(s) for s in splits]), max_pairs, f"the {split} split")

    def pair_frames(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, C) current and future frames of (episode, step) rows."""
        first = {e["index"]: e["first_frame"] for e in self.meta["episodes"]}
        cur = np.array([first[int(e)] + int(t) for e, t in rows], dtype=np.int64)
        return np.asarray(self.frames[cur]), np.asarray(self.frames[cur + self.meta["config"]["k"]])

    def pair(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(current, future) uint8 (H, W, C) frames of pair i of a split."""
        a, b = self.frame_indices(split)[i]
        return self.frames[a], self.frames[b]

    def episode_frames(self, episode: int) -> np.ndarray:
        for e in self.meta["episodes"]:
            if e["index"] == episode:
                return self.frames[e["first_frame"] : e["first_frame"] + e["num_frames"]]
        raise ValueError(f"episode {episode} is not in this cache (episodes {[e['index'] for e in self.meta['episodes']]})")

    def summary(self) -> dict:
        return {
            "dataset": self.meta["config"]["dataset"],
            "cache": str(self.path),
            "k": self.meta["config"]["k"],
            "size": self.meta["config"]["size"],
            "channels": self.frames.shape[-1],
            "frames": int(self.frames.shape[0]),
            "pairs": {s: len(self.meta["pairs"][s]) for s in SPLITS},
            "episodes": {s: len(self.meta["splits"][s]) for s in SPLITS},
        }


class FramePairs(Dataset):
    """PyTorch Dataset of (current, future) float tensors (C, H, W) in [-1, 1] for one split."""

    def __init__(self, cache: PairsCache, split: str = "train") -> None:
        self.cache, self.split = cache, split
        self.index = cache.frame_indices(split)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.index[i]
        return to_tensor(self.cache.frames[a]), to_tensor(self.cache.frames[b])
