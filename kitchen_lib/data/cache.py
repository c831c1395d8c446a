"""The pairs cache: `PairsCache`, built once per config by `build_pairs` (its one writer, in
kitchen_lib.data.cache_builder), then memory-mapped.

Cache layout, one folder per config under `data/pairs/`, named by a hash of the config:
    frames.npy   (F, H, W, C) uint8, every frame of every used episode, episode after episode
    actions.npy  (F, 9) float32, the action taken at each frame (an episode's last frame: zeros)
    proprio.npy  (F, 9) float32, the robot's joint positions at each frame (observation[0:9])
    objects.npy  (F, 21) float64, the objects' joint positions (qpos[9:30]: what the tasks move)
    meta.json    the config, the dataset's fingerprint, each episode's split and first frame,
                 and the (episode, step) of every pair per split
Reading memory-maps frames.npy, so loading is instant at any size. A cache built before the
per-frame arrays existed gets them on its next `build_pairs`, read from the episodes once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.pairs import SPLITS, PairsConfig, spread

CACHE_FORMAT = 1
# The per-frame arrays beside frames.npy: name -> (columns, dtype), each row read from one observation.
# The objects' positions stay float64: task motion is a threshold on their change (evaluate.TASK_MOTION).
FRAME_ARRAYS = {"actions": (9, np.float32), "proprio": (9, np.float32), "objects": (21, np.float64)}


class CacheError(UserError, RuntimeError):
    """A pairs cache is corrupt or does not match its config; the message says what to do."""


@dataclass
class PairsCache:
    """A built cache: memory-mapped frames, per-frame arrays and the pair index of each split.
    A FrameSource (kitchen_lib.data.examples): examples are gathered from it by (episode, step)."""

    path: Path
    meta: dict
    frames: np.ndarray  # (F, H, W, C) uint8, memory-mapped
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> PairsConfig:
        return PairsConfig(**self.meta["config"])

    @property
    def k(self) -> int:
        return self.meta["config"]["k"]

    @cached_property
    def first_frame(self) -> dict[int, int]:
        """Episode -> the row of its frame 0 in `frames`: the episode index, built once."""
        return {e["index"]: e["first_frame"] for e in self.meta["episodes"]}

    def first_frames(self, episodes: np.ndarray) -> np.ndarray:
        """(B,) episodes -> (B,) rows of their frame 0."""
        try:
            return np.array([self.first_frame[int(e)] for e in episodes], dtype=np.int64)
        except KeyError as e:
            raise UserError(f"episode {e.args[0]} is not in this cache (episodes {sorted(self.first_frame)})") from None

    def array(self, name: str) -> np.ndarray:
        """A per-frame array (FRAME_ARRAYS), (F, columns), checked against frames.npy."""
        if name not in self._arrays:
            path = self.path / f"{name}.npy"
            if not path.is_file():
                raise CacheError(f"pairs cache {self.path} has no {name}.npy (built before it existed): open it with "
                                 f"build_pairs (or `python -m kitchen_lib pairs`) to add it")
            try:
                a = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise CacheError(f"pairs cache {self.path} has a corrupt {name}.npy ({e}). Delete it and run "
                                 f"`python -m kitchen_lib pairs` with the same settings to rebuild it") from e
            cols, dtype = FRAME_ARRAYS[name]
            if a.shape != (len(self.frames), cols) or a.dtype != dtype:
                raise CacheError(f"{path} is {a.dtype}{a.shape}, not {np.dtype(dtype)}({len(self.frames)}, {cols}): delete it "
                                 f"and run `python -m kitchen_lib pairs` with the same settings to rebuild it")
            self._arrays[name] = a
        return self._arrays[name]

    @property
    def actions(self) -> np.ndarray:
        return self.array("actions")

    @property
    def proprio(self) -> np.ndarray:
        return self.array("proprio")

    def pairs(self, split: str) -> np.ndarray:
        """(N, 2) int array of (episode, step) for a split, in a fixed order."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: choose one of {SPLITS}")
        return np.asarray(self.meta["pairs"][split], dtype=np.int64).reshape(-1, 2)

    def select(self, split: str, max_pairs: int | None = None) -> np.ndarray:
        """(N, 2) (episode, step) rows of a split ('all': every split), evenly thinned to max_pairs."""
        splits = SPLITS if split == "all" else (split,)
        return spread(np.concatenate([self.pairs(s) for s in splits]), max_pairs, f"the {split} split")

    def episode_rows(self, episode: int) -> slice:
        """The rows of one episode's frames."""
        first = int(self.first_frames(np.array([episode]))[0])
        n = next(e["num_frames"] for e in self.meta["episodes"] if e["index"] == episode)
        return slice(first, first + n)

    def episode_frames(self, episode: int) -> np.ndarray:
        """(T+1, H, W, C) uint8 frames of one episode."""
        return self.frames[self.episode_rows(episode)]

    def episode(self, episode: int):
        """One episode as a FrameSource (kitchen_lib.data.examples.Episode), with its actions and joints."""
        from kitchen_lib.data.examples import Episode

        rows = self.episode_rows(episode)
        has = (self.path / "actions.npy").is_file() and (self.path / "proprio.npy").is_file()
        return Episode(self.frames[rows], self.k, self.actions[rows][:-1] if has else None,
                       self.proprio[rows] if has else None)

    def summary(self) -> dict:
        return {
            "dataset": self.meta["config"]["dataset"],
            "cache": str(self.path),
            "k": self.k,
            "size": self.meta["config"]["size"],
            "channels": self.frames.shape[-1],
            "frames": int(self.frames.shape[0]),
            "pairs": {s: len(self.meta["pairs"][s]) for s in SPLITS},
            "episodes": {s: len(self.meta["splits"][s]) for s in SPLITS},
        }


def load_cache(path: Path, cfg: PairsConfig | None = None) -> PairsCache:
    """Open a cache folder, checking it is whole and (if given) made for `cfg`."""
    path = Path(path)
    fix = f"Delete {path} (or pass --force_rebuild / force=True) and it will be rebuilt."
    try:
        meta = json.loads((path / "meta.json").read_text())
        shape = tuple(meta["frames_shape"])
    except FileNotFoundError as e:
        raise CacheError(f"pairs cache {path} is incomplete: {e.filename} is missing. {fix}") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CacheError(f"pairs cache {path} has a corrupt meta.json ({e}). {fix}") from e
    _check_meta(meta, shape, path, fix)
    if cfg is not None and meta.get("config") != asdict(cfg):
        diff = {k: (meta.get("config", {}).get(k), v) for k, v in asdict(cfg).items() if meta.get("config", {}).get(k) != v}
        raise CacheError(f"pairs cache {path} was built for a different config (cached, wanted): {diff}. {fix}")
    try:
        frames = np.load(path / "frames.npy", mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as e:
        raise CacheError(f"pairs cache {path} is incomplete: frames.npy is missing. {fix}") from e
    except (ValueError, OSError) as e:
        raise CacheError(f"pairs cache {path} has a corrupt frames.npy ({e}). {fix}") from e
    if frames.shape != shape or frames.dtype != np.uint8:
        raise CacheError(f"pairs cache {path}: frames.npy is {frames.dtype}{frames.shape}, meta.json says uint8{shape}. {fix}")
    return PairsCache(path=path, meta=meta, frames=frames)


def _check_meta(meta: dict, shape: tuple, path: Path, fix: str) -> None:
    """Episode boundaries tile the frames, every episode is in exactly one split, and every pair
    lies inside an episode of its own split: an edited or damaged meta.json is refused."""
    try:
        eps = sorted(meta["episodes"], key=lambda e: e["first_frame"])
        ends = [e["first_frame"] + e["num_frames"] for e in eps]
        if [e["first_frame"] for e in eps] != [0] + ends[:-1] or (ends[-1] if ends else 0) != shape[0]:
            raise ValueError("episode boundaries overlap, leave gaps or do not match frames.npy")
        split_of = {e["index"]: e["split"] for e in eps}
        listed = {ep: s for s in SPLITS for ep in meta["splits"].get(s, [])}
        if len(split_of) != len(eps) or listed != split_of or sum(len(v) for v in meta["splits"].values()) != len(eps):
            raise ValueError("the episodes' splits disagree with meta['splits'] (an episode in two splits, or none)")
        k, frames = meta["config"]["k"], {e["index"]: e["num_frames"] for e in eps}
        for split, rows in meta["pairs"].items():
            rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
            ok = [split_of.get(ep) == split and 0 <= t and t + k < frames[ep] for ep, t in rows.tolist()]
            if not all(ok):
                raise ValueError(f"{ok.count(False)} {split} pairs lie outside the {split} episodes")
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"pairs cache {path} has an inconsistent meta.json ({e}). {fix}") from e


