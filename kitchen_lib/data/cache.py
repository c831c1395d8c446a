"""The pairs cache: `PairsCache`, built once per config (streaming, all cores) by `build_pairs`,
then memory-mapped. `build_pairs` is its one writer, under the folder's lock.

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

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from kitchen_lib.base.images import to_grayscale
from kitchen_lib.base.locks import clean_stale, folder_lock, owner_tag, user_file_mode
from kitchen_lib.base.paths import atomic_path, data_dir
from kitchen_lib.data.datasets import episode_lengths, fingerprint, iter_episodes
from kitchen_lib.data.kitchen import state_from_observation
from kitchen_lib.data.pairs import SPLITS, PairsConfig, pair_steps, split_episodes, spread
from kitchen_lib.data.render import render_chunks

CACHE_FORMAT = 1
# The per-frame arrays beside frames.npy: name -> (columns, dtype), each row read from one observation.
# The objects' positions stay float64: task motion is a threshold on their change (evaluate.TASK_MOTION).
FRAME_ARRAYS = {"actions": (9, np.float32), "proprio": (9, np.float32), "objects": (21, np.float64)}


class CacheError(RuntimeError):
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
            raise ValueError(f"episode {e.args[0]} is not in this cache (episodes {sorted(self.first_frame)})") from None

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
            raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
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


def _cache_key(cfg: PairsConfig, lengths: list[int]) -> dict:
    return {"format": CACHE_FORMAT, "config": asdict(cfg), "dataset_fingerprint": fingerprint(cfg.dataset), "lengths": lengths}


def cache_dir_for(cfg: PairsConfig, root: Path | None = None) -> Path:
    lengths = _used_lengths(cfg)
    digest = hashlib.sha256(json.dumps(_cache_key(cfg, lengths), sort_keys=True).encode()).hexdigest()[:16]
    return (root or data_dir() / "pairs") / f"pairs-{digest}"


def _used_lengths(cfg: PairsConfig) -> list[int]:
    lengths = episode_lengths(cfg.dataset)
    return lengths[: cfg.max_episodes] if cfg.max_episodes else lengths


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


def build_pairs(
    cfg: PairsConfig, root: Path | None = None, force: bool = False, workers: int | None = None, progress: bool = True,
) -> PairsCache:
    """Load the cache for `cfg`, building it first if needed (streaming, all cores)."""
    cfg.validate()
    lengths = _used_lengths(cfg)
    if not lengths:
        raise ValueError(f"{cfg.dataset} has no episodes")
    if cfg.k >= max(lengths):
        raise ValueError(
            f"k={cfg.k} is not shorter than any episode of {cfg.dataset} (the longest has {max(lengths)} steps): "
            f"choose k < {max(lengths)}"
        )
    path = cache_dir_for(cfg, root)
    if path.exists() and not force and _complete(path):
        return load_cache(path, cfg)
    # One builder per cache: a second process asking for the same pairs waits, then reuses them.
    say = (lambda holder: print(f"waiting for {holder}, which is building these pairs ({path.name})", flush=True)) \
        if progress else None
    with folder_lock(path.parent, f"the pairs cache {path.name}", wait=True, on_wait=say, name=f".{path.name}.lock"):
        if path.exists() and not force:
            cache = load_cache(path, cfg)
            _add_frame_arrays(cache)  # a cache built before they existed
            return cache
        clean_stale(path.parent)  # what killed builds left behind
        _build(cfg, path, lengths, workers, progress)
    return load_cache(path, cfg)


def _complete(path: Path) -> bool:
    return all((path / f"{name}.npy").is_file() for name in FRAME_ARRAYS)


def _frame_arrays(observations: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """One episode's per-frame arrays (FRAME_ARRAYS), (T+1, columns) each."""
    acts = np.zeros((len(observations), 9), np.float32)
    acts[: len(actions)] = actions[: len(observations) - 1]
    qpos = np.stack([state_from_observation(o)[0] for o in observations])
    return {"actions": acts, "proprio": observations[:, :9].astype(np.float32), "objects": qpos[:, 9:]}


def _save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, rows in arrays.items():
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, rows, allow_pickle=False)


def _add_frame_arrays(cache: PairsCache) -> None:
    """Write the per-frame arrays a cache lacks (the caller holds the cache's lock)."""
    missing = [name for name in FRAME_ARRAYS if not (cache.path / f"{name}.npy").is_file()]
    if not missing:
        return
    out = {name: np.zeros((len(cache.frames), FRAME_ARRAYS[name][0]), FRAME_ARRAYS[name][1]) for name in missing}
    counts = {e["index"]: e["num_frames"] for e in cache.meta["episodes"]}
    for ep in iter_episodes(cache.meta["config"]["dataset"], sorted(counts)):
        rows = cache.episode_rows(ep.index)
        arrays = _frame_arrays(ep.observations[: counts[ep.index]], ep.actions)
        for name in missing:
            out[name][rows] = arrays[name]
    _save_arrays(cache.path, out)


def _build(cfg: PairsConfig, path: Path, lengths: list[int], workers: int | None, progress: bool) -> None:
    usable = [i for i, n in enumerate(lengths) if n > cfg.k]
    if len(usable) < len(lengths):
        warnings.warn(f"{len(lengths) - len(usable)} episodes of {cfg.dataset} are not longer than k={cfg.k} and are left out", stacklevel=3)
    splits = split_episodes(len(usable), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    split_of = {usable[j]: s for s, js in splits.items() for j in js}
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{owner_tag()}", dir=path.parent))
    try:
        meta = _write_cache(tmp, cfg, lengths, usable, split_of, workers, progress)
        meta["build_seconds"] = round(time.time() - t0, 2)
        _write_json(tmp / "meta.json", meta)
        os.chmod(tmp, user_file_mode(directory=True))  # mkdtemp's 0700 would outlive the rename
        if path.exists():  # force: move the old cache aside only once the new one is whole
            old = tmp.with_name(tmp.name + "-old")  # carries the owner tag: swept if we die here
            path.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _write_cache(tmp: Path, cfg, lengths, usable, split_of, workers, progress) -> dict:
    from tqdm.auto import tqdm

    num_frames = sum(lengths[i] + 1 for i in usable)
    shape = (num_frames, cfg.size, cfg.size, cfg.channels)
    episodes, pairs = [], {s: [] for s in SPLITS}
    first = 0
    for i in usable:
        episodes.append({"index": i, "split": split_of[i], "first_frame": first, "num_frames": lengths[i] + 1})
        pairs[split_of[i]] += [[i, int(t)] for t in pair_steps(lengths[i], cfg.k)]
        first += lengths[i] + 1

    arrays = {name: np.zeros((num_frames, cols), dtype) for name, (cols, dtype) in FRAME_ARRAYS.items()}
    first_of = {e["index"]: e["first_frame"] for e in episodes}

    def jobs():
        # Episodes are read one at a time and cut into small chunks for the workers; their
        # per-frame arrays are taken on the way, so the episodes are read once.
        for ep in iter_episodes(cfg.dataset, usable):
            f0 = first_of[ep.index]
            for name, rows in _frame_arrays(ep.observations, ep.actions).items():
                arrays[name][f0 : f0 + len(rows)] = rows
            for s in range(0, len(ep.observations), 64):
                yield (ep.index, s), ep.observations[s : s + 64]

    # Written straight to the file (not through a memory map), so memory stays flat.
    with open(tmp / "frames.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        bar = tqdm(total=num_frames, desc=f"render {cfg.size}px {cfg.quality}", unit="frame", disable=not progress)
        for _, frames in render_chunks(jobs(), cfg.size, cfg.quality, workers):
            if cfg.grayscale:
                frames = to_grayscale(frames)
            f.write(np.ascontiguousarray(frames).tobytes())
            bar.update(len(frames))
        bar.close()
    _save_arrays(tmp, arrays)
    return {
        "format": CACHE_FORMAT,
        "config": asdict(cfg),
        "dataset_fingerprint": fingerprint(cfg.dataset),
        "frames_shape": list(shape),
        "episodes": episodes,
        "splits": {s: [e["index"] for e in episodes if e["split"] == s] for s in SPLITS},
        "pairs": pairs,
    }
