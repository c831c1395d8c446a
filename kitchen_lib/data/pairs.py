"""(current, future) frame pairs k steps apart, split by episode: the config and the split (the
cache that holds them: kitchen_lib.data.cache).

A pair is (frame t, frame t+k) of one episode with t + k <= T: it never crosses an
episode's end. Several datasets joined by "+" make one cache; each is split on its own, so each
has held-out episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.datasets import OFFLINE_DATASET_ID, dataset_parts
from kitchen_lib.data.render import DEFAULT_QUALITY, check_render_args

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PairsConfig:
    """Everything that decides the contents of a pairs cache."""

    dataset: str = OFFLINE_DATASET_ID  # or several ids joined by "+": one cache, each dataset split on its own
    k: int = 5  # frames between current and future
    size: int = 64  # square frame size in pixels
    grayscale: bool = False
    quality: str = DEFAULT_QUALITY  # renderer quality: "fast" or "faithful"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    max_episodes: int | None = None  # only the first N episodes of each dataset (smoke mode, quick looks)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def validate(self) -> None:
        dataset_parts(self.dataset)  # each id well-formed, none twice
        check_render_args(self.size, self.quality)
        if self.max_episodes is not None and (not isinstance(self.max_episodes, int) or self.max_episodes < 1):
            raise UserError(f"--max_episodes must be at least 1, or none for all (got {self.max_episodes!r})")
        if not isinstance(self.k, int) or self.k < 1:
            raise UserError(f"--k must be a positive whole number of steps (got {self.k!r})")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise UserError("--val_fraction and --test_fraction must be in [0, 1) and leave some episodes to train on")


def split_episodes(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Assign whole episodes to train/val/test, reproducibly for a seed (never split by pair)."""
    if n < 3:
        raise UserError(f"splitting by episode needs at least 3 episodes (got {n}): generate more with --episodes")
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
        raise UserError(f"{what} has no pairs")
    if n is not None and len(rows) > n:
        rows = rows[np.linspace(0, len(rows) - 1, n).astype(int)]
    return rows
