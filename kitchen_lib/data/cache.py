"""The pairs cache: `PairsCache`, built once per config by `build_pairs` (its one writer, in
kitchen_lib.data.cache_builder), then memory-mapped.

Cache layout, one folder per config under `data/pairs/`, named by a hash of the config:
    frames.npy   (F, H, W, C) uint8, every frame of every used episode, episode after episode
    actions.npy  (F, 9) float32, the action taken at each frame (an episode's last frame: zeros)
    proprio.npy  (F, 9) float32, the robot's joint positions at each frame (observation[0:9])
    objects.npy  (F, 21) float64, the objects' joint positions (qpos[9:30]: what the tasks move)
    meta.json    the config, the dataset's fingerprint, each episode's split, first frame and
                 dataset (several joined by "+" make one cache: `select(split, dataset=...)` takes
                 one's pairs), the (episode, step) of every pair per split, and a blake2b checksum
                 of each array
Reading memory-maps frames.npy, so loading is instant at any size. Every array is read by
`load_array` (header, shape, dtype, finiteness, checksum; a CacheError naming the file). The
per-frame arrays are checked against their checksums whenever they are read; frames.npy, GBs,
only by `verify_cache` (`python -m kitchen_lib pairs --verify`). A cache built before the
per-frame arrays existed gets them on its next `build_pairs`, read from the episodes once, with
their checksums; one built before checksums is accepted (verify_cache notes what it could not check).
"""

from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.datasets import dataset_parts
from kitchen_lib.data.pairs import SPLITS, PairsConfig, spread

CACHE_FORMAT = 1
# The per-frame arrays beside frames.npy: name -> (columns, dtype), each row read from one observation.
# The objects' positions stay float64: task motion is a threshold on their change (evaluate.TASK_MOTION).
FRAME_ARRAYS = {"actions": (9, np.float32), "proprio": (9, np.float32), "objects": (21, np.float64)}


class CacheError(UserError, RuntimeError):
    """A pairs cache is corrupt or does not match its config; the message says what to do."""


def rebuild_advice(path: Path) -> str:
    """How to get a damaged cache file back."""
    return (f"Delete {path.parent} and run `python -m kitchen_lib pairs` with the same settings to rebuild it "
            f"(or add --force_rebuild).")


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """blake2b of a file's bytes, streamed (about 1 GB/s a core: a 64px mixed-v2 frames.npy,
    about 1.9 GB, takes a few seconds; the per-frame arrays, tens of MB, a few hundredths)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "blake2b:" + h.hexdigest()


def load_array(path: Path, shape: tuple[int, ...], dtype, finite: bool = True, mmap: bool = False,
               checksum: str | None = None) -> np.ndarray:
    """The one reader of a cache's arrays: a .npy of exactly `shape` and `dtype`, never pickled,
    checked against `checksum` (file_digest) if given and, for floats when `finite`, free of
    NaN and inf. mmap=True maps it (frames.npy) instead of reading it. Any fault is a CacheError
    naming the file and saying how to rebuild it."""
    path, want = Path(path), f"{np.dtype(dtype)}{tuple(shape)}"
    fix = rebuild_advice(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            header = read(f)  # shape, fortran order, dtype: no data read
    except FileNotFoundError:
        raise CacheError(f"pairs cache {path.parent} is incomplete: {path.name} is missing. {fix}") from None
    except (ValueError, OSError, SyntaxError, TypeError) as e:
        # Not numpy's own words: it would advise loading the file "unsafely" (with pickle).
        raise CacheError(f"{path} is not a valid .npy array file ({type(e).__name__} in its header): it is damaged. "
                         f"{fix}") from None
    if (header[0], header[2]) != (tuple(shape), np.dtype(dtype)) or header[1]:
        raise CacheError(f"{path} holds {header[2]}{header[0]}{' (Fortran order)' if header[1] else ''}, "
                         f"expected {want}. {fix}")
    if checksum is not None and file_digest(path) != checksum:
        raise CacheError(f"{path} does not match the checksum recorded when the cache was built: it is damaged. {fix}")
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:  # truncated
        raise CacheError(f"{path} is damaged ({e}). {fix}") from None
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=tuple(range(1, a.ndim))))
        raise CacheError(f"{path} has NaN or infinite values in {len(bad)} rows (first: row {bad[0]}): it is damaged. "
                         f"{fix}")
    return a


def _never_moves(name: str, a: np.ndarray) -> bool:
    """Joint positions with a joint exactly 0 on every frame, or actions all exactly 0: a real
    robot's never are (an unused action dimension is possible, so actions are judged whole)."""
    if not len(a):
        return False
    if name == "proprio":
        return not a.any(axis=0).all()
    return name == "actions" and not a.any()


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
    def episode_index(self) -> dict[int, tuple[int, int]]:
        """Episode -> (the row of its frame 0 in `frames`, how many frames it has): built once."""
        return {e["index"]: (e["first_frame"], e["num_frames"]) for e in self.meta["episodes"]}

    def _per_episode(self, episodes: np.ndarray, part: int) -> np.ndarray:
        try:
            return np.array([self.episode_index[int(e)][part] for e in episodes], dtype=np.int64)
        except KeyError as e:
            raise UserError(f"episode {e.args[0]} is not in this cache (episodes {sorted(self.episode_index)})") from None

    def first_frames(self, episodes: np.ndarray) -> np.ndarray:
        """(B,) episodes -> (B,) rows of their frame 0."""
        return self._per_episode(episodes, 0)

    def num_frames(self, episodes: np.ndarray) -> np.ndarray:
        """(B,) episodes -> (B,) frames each holds (T+1)."""
        return self._per_episode(episodes, 1)

    def array(self, name: str) -> np.ndarray:
        """A per-frame array (FRAME_ARRAYS), (F, columns): checked against frames.npy, its
        checksum in meta.json (when recorded), finite, and not a robot that never moved."""
        if name not in self._arrays:
            path = self.path / f"{name}.npy"
            if not path.is_file():
                raise CacheError(f"pairs cache {self.path} has no {name}.npy (built before it existed): open it with "
                                 f"build_pairs (or `python -m kitchen_lib pairs`) to add it")
            cols, dtype = FRAME_ARRAYS[name]
            a = load_array(path, (len(self.frames), cols), dtype, checksum=self.meta.get("checksums", {}).get(name))
            if _never_moves(name, a):
                raise CacheError(f"{path} has {'every action' if name == 'actions' else 'a joint'} exactly 0 on every "
                                 f"frame: a real robot's never is, so the file is damaged. {rebuild_advice(path)}")
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

    def select(self, split: str, max_pairs: int | None = None, dataset: str | None = None) -> np.ndarray:
        """(N, 2) (episode, step) rows of a split ('all': every split), only those of one of the
        joined datasets if `dataset` names one, evenly thinned to max_pairs."""
        splits = SPLITS if split == "all" else (split,)
        rows = np.concatenate([self.pairs(s) for s in splits])
        if dataset is None:
            return spread(rows, max_pairs, f"the {split} split")
        rows = rows[np.isin(rows[:, 0], self.episodes_of(dataset))]
        return spread(rows, max_pairs, f"the {split} split of {dataset}")

    @property
    def datasets(self) -> list[str]:
        """The datasets the cache was built from (one, or those joined by "+"), in order."""
        return dataset_parts(self.meta["config"]["dataset"])

    def dataset_of(self, episode: int) -> str:
        """The dataset an episode of the cache comes from."""
        self.first_frames(np.array([episode]))  # an unknown episode gets its message here
        e = next(e for e in self.meta["episodes"] if e["index"] == int(episode))
        return e.get("dataset", self.meta["config"]["dataset"])  # a cache built before joining: its one dataset

    def episodes_of(self, dataset: str) -> list[int]:
        """The cache's episodes (all splits) that come from `dataset`, one of `datasets`."""
        if dataset not in self.datasets:
            raise UserError(f"{dataset!r} is not one of this cache's datasets: {', '.join(self.datasets)}")
        own = self.meta["config"]["dataset"]
        return [e["index"] for e in self.meta["episodes"] if e.get("dataset", own) == dataset]

    def release(self) -> None:
        """Unmap the frame pages this process has read (they stay in the OS page cache): a pass over
        a whole split then keeps its resident memory flat instead of growing to the file's size."""
        mapped = getattr(self.frames, "_mmap", None)  # np.memmap's mapping; absent for in-memory frames
        if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)

    def episode_rows(self, episode: int) -> slice:
        """The rows of one episode's frames."""
        first = int(self.first_frames(np.array([episode]))[0])  # an unknown episode gets its message here
        return slice(first, first + self.episode_index[int(episode)][1])

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
    frames = load_array(path / "frames.npy", shape, np.uint8, mmap=True)  # its checksum: verify_cache
    return PairsCache(path=path, meta=meta, frames=frames)


def _check_meta(meta: dict, shape: tuple, path: Path, fix: str) -> None:
    """Episode boundaries tile the frames, every episode is in exactly one split, and every pair
    lies inside an episode of its own split: an edited or damaged meta.json is refused."""
    try:
        eps = sorted(meta["episodes"], key=lambda e: e["first_frame"])
        ends = [e["first_frame"] + e["num_frames"] for e in eps]
        if [e["first_frame"] for e in eps] != [0] + ends[:-1] or (ends[-1] if ends else 0) != shape[0]:
            raise ValueError("episode boundaries overlap, leave gaps or do not match frames.npy")
        parts = set(dataset_parts(meta["config"]["dataset"]))
        if any(e.get("dataset", next(iter(parts))) not in parts for e in eps):
            raise ValueError("an episode's dataset is not one the cache was built from")
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


def verify_cache(cache: PairsCache) -> list[str]:
    """Read every array of a cache whole against the checksums meta.json recorded at build
    (frames.npy included: seconds at D4RL scale); raises CacheError on the first that differs.
    Returns notes on what could not be checked (a cache built before checksums were recorded)."""
    sums, notes = cache.meta.get("checksums", {}), []
    load_array(cache.path / "frames.npy", cache.frames.shape, np.uint8, mmap=True, checksum=sums.get("frames"))
    for name in FRAME_ARRAYS:
        cache._arrays.pop(name, None)
        cache.array(name)
    missing = [n for n in ("frames", *FRAME_ARRAYS) if n not in sums]
    if missing:
        notes.append(f"no checksum recorded for {', '.join(f'{n}.npy' for n in missing)} (built before checksums "
                     f"were recorded): shapes and values checked, bytes not. --force_rebuild records them")
    return notes

