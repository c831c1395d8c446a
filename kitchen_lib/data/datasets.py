"""Episode sources: D4RL's kitchen datasets and our own scripted ones, behind one interface.

Both are real Minari datasets in the local Minari store (`$MINARI_DATASETS_PATH`, else
`~/.minari/datasets`) and are read by the same code. D4RL's are downloaded only when asked
(`download=True`, `--download`); ours are made offline by `kitchen_lib.data.generate`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.kitchen import COMPLETE_TASKS, OBS_DIM, completed_tasks

OFFLINE_DATASET_ID = "kitchen-diffusion/scripted-complete-v0"
SMOKE_DATASET_ID = "kitchen-diffusion/scripted-smoke-v0"
# The arm driven to random reachable poses, touching the objects (kitchen_lib.data.explore), in
# versions of (episodes, steps each): each holds the next one's first episodes (the same seeds),
# and each id names exactly that many, so an earlier one is made again as it was (a run trained
# on it finds its episodes and split unchanged). The newest is the one cpu-drive trains on.
EXPLORE_VERSIONS = {
    "kitchen-diffusion/scripted-explore-v0": (10, 600),
    "kitchen-diffusion/scripted-explore-v1": (40, 600),
    "kitchen-diffusion/scripted-explore-v2": (80, 600),
    "kitchen-diffusion/scripted-explore-v3": (160, 600),
}
EXPLORE_DATASET_ID = "kitchen-diffusion/scripted-explore-v3"
EXPLORE_SMOKE_DATASET_ID = "kitchen-diffusion/scripted-explore-smoke-v0"
D4RL_DATASET_IDS = (
    "D4RL/kitchen/complete-v2",
    "D4RL/kitchen/partial-v2",
    "D4RL/kitchen/mixed-v2",
)
OUR_NAMESPACE = "kitchen-diffusion"
# Several datasets trained on together are named as one setting, their ids joined by this.
JOIN = "+"


class DatasetError(UserError, RuntimeError):
    """A dataset is unknown, missing or malformed; the message says what to do."""


# Minari's id form, namespace/.../name-vN: letters, digits, "_" and "-" in each part, no dots,
# so no part can be "." or ".." and no id can reach outside the store.
_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(/[A-Za-z0-9][A-Za-z0-9_-]*)*-v[0-9]+")


def check_dataset_id(dataset_id: str, generated: bool = False) -> str:
    """Refuse anything but a well-formed Minari id (and, for `generated`, one under our namespace)."""
    if isinstance(dataset_id, str) and JOIN in dataset_id and all(_DATASET_ID.fullmatch(p) for p in dataset_id.split(JOIN)):
        raise DatasetError(f"{dataset_id!r} joins several datasets; this needs one of them: "
                           f"{', '.join(dataset_id.split(JOIN))}")
    if not isinstance(dataset_id, str) or not _DATASET_ID.fullmatch(dataset_id):
        raise DatasetError(
            f"{dataset_id!r} is not a Minari dataset id: it should look like namespace/name-vN (letters, digits, "
            f"'_' and '-', parts separated by '/', no '..'), e.g. {OFFLINE_DATASET_ID} or {D4RL_DATASET_IDS[0]}")
    if generated and not dataset_id.startswith(OUR_NAMESPACE + "/"):
        raise DatasetError(
            f"generated datasets live under {OUR_NAMESPACE}/ (got {dataset_id!r}); D4RL's ids "
            f"are reserved for the real D4RL data. Try {OFFLINE_DATASET_ID}.")
    return dataset_id


def dataset_parts(dataset: str) -> list[str]:
    """The ids a dataset setting names: one id, or several joined by "+" (trained on together),
    each checked; e.g. "kitchen-diffusion/scripted-complete-v0+kitchen-diffusion/scripted-explore-v3"."""
    if not isinstance(dataset, str):
        check_dataset_id(dataset)  # its message
    parts = dataset.split(JOIN)
    for part in parts:
        check_dataset_id(part)
    if len(set(parts)) < len(parts):
        raise DatasetError(f"{dataset!r} names a dataset twice: join each dataset once")
    return parts


def joined(*dataset_ids: str) -> str:
    """One setting for several datasets trained on together: joined(a, b) == "a+b"."""
    return JOIN.join(dataset_ids)


@dataclass
class Episode:
    """One episode's states and actions, as stored by Minari."""

    index: int  # position in the dataset (0..N-1)
    observations: np.ndarray  # (T+1, 59) float
    actions: np.ndarray  # (T, 9) float

    def completions(self, tasks: tuple[str, ...] = COMPLETE_TASKS) -> dict[str, int | None]:
        """First step at which each task is complete (None if never), from the states."""
        first: dict[str, int | None] = {t: None for t in tasks}
        for t, obs in enumerate(self.observations):
            for task in completed_tasks(obs, tasks):
                if first[task] is None:
                    first[task] = t
        return first


def store_path() -> Path:
    """The local Minari store."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def dataset_path(dataset_id: str) -> Path:
    return store_path() / dataset_id


def is_local(dataset_id: str) -> bool:
    return (dataset_path(dataset_id) / "data" / "metadata.json").exists()


def open_dataset(dataset_id: str, download: bool = False):
    """The `minari.MinariDataset` for an id, with errors that say what to do."""
    import minari

    check_dataset_id(dataset_id)
    if is_local(dataset_id):
        return minari.load_dataset(dataset_id)
    if dataset_id in D4RL_DATASET_IDS:
        if download:
            try:
                return minari.load_dataset(dataset_id, download=True)
            except Exception as e:  # network errors come in many types
                raise DatasetError(
                    f"could not download {dataset_id}: {e}\n"
                    f"Without internet, make the offline dataset instead:\n"
                    f"  python -m kitchen_lib generate --dataset {OFFLINE_DATASET_ID}"
                ) from e
        raise DatasetError(
            f"{dataset_id} is not in the local Minari store ({store_path()}).\n"
            f"Download it (needs internet) with\n"
            f"  minari download {dataset_id}\n"
            f"or pass --download (download=True). Offline, use the project's own dataset:\n"
            f"  python -m kitchen_lib generate --dataset {OFFLINE_DATASET_ID}\n"
            f"and then --dataset {OFFLINE_DATASET_ID}."
        )
    if dataset_id.startswith(OUR_NAMESPACE + "/"):
        raise DatasetError(
            f"{dataset_id} has not been generated yet in {store_path()}. Make it with\n"
            f"  python -m kitchen_lib generate --dataset {dataset_id}"
        )
    raise DatasetError(
        f"unknown dataset id {dataset_id!r}: it is not in the local Minari store "
        f"({store_path()}) and is not one of D4RL's kitchen datasets.\n"
        f"Known ids: {', '.join(D4RL_DATASET_IDS)}, or any id under {OUR_NAMESPACE}/ made with\n"
        f"  python -m kitchen_lib generate --dataset {OFFLINE_DATASET_ID}"
    )


def _check_episode(dataset_id: str, ep) -> tuple[np.ndarray, np.ndarray]:
    obs = ep.observations
    obs = obs["observation"] if isinstance(obs, dict) else obs
    obs = np.asarray(obs, dtype=np.float64)
    if obs.ndim != 2 or obs.shape[1] != OBS_DIM:
        raise DatasetError(
            f"{dataset_id} episode {ep.id}: observations have shape {obs.shape}, expected "
            f"(T+1, {OBS_DIM}) as in D4RL's kitchen datasets. Is this a kitchen dataset?"
        )
    return obs, np.asarray(ep.actions, dtype=np.float64)


def open_datasets(dataset: str, download: bool = False) -> list:
    """Every part of a (possibly joined) dataset setting opened: each missing one raises open_dataset's error."""
    return [open_dataset(part, download=download) for part in dataset_parts(dataset)]


def iter_episodes(dataset_id: str, episodes: list[int] | None = None, download: bool = False) -> Iterator[Episode]:
    """Stream episodes one at a time (mixed-v2's 156k steps never sit in memory at once)."""
    ds = open_dataset(dataset_id, download=download)
    ids = list(range(ds.total_episodes)) if episodes is None else list(episodes)
    for i in ids:
        ep = next(iter(ds.iterate_episodes([i])))
        obs, act = _check_episode(dataset_id, ep)
        yield Episode(index=i, observations=obs, actions=act)


def load_episode(dataset_id: str, index: int) -> Episode:
    ds = open_dataset(dataset_id)
    if not 0 <= index < ds.total_episodes:
        raise DatasetError(f"{dataset_id} has episodes 0..{ds.total_episodes - 1}; asked for {index}")
    return next(iter_episodes(dataset_id, [index]))


def episode_lengths(dataset_id: str) -> list[int]:
    """Steps (actions) per episode, read from the episodes' metadata, not their data."""
    ds = open_dataset(dataset_id)
    return [int(m["total_steps"]) for m in ds.storage.get_episode_metadata(range(ds.total_episodes))]


# (path, size, mtime, inode) -> the file's content digest: each file is read once per process.
_DIGESTS: dict[tuple, str] = {}


def _content_digest(path: Path) -> str:
    """blake2b of a file's bytes, streamed (about 1 GB/s: D4RL kitchen's HDF5 files, up to a few
    hundred MB, take a fraction of a second), remembered while the file's size and mtime hold."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def fingerprint(dataset_id: str) -> str:
    """Changes whenever the dataset's content does, and only then (for cache keys): each data
    file's name, size and content digest. A copy or a `touch` keeps it; a rewrite with other
    data changes it. (Caches keyed by the older size-and-mtime fingerprint get new folders.)"""
    data = dataset_path(dataset_id) / "data"
    return ";".join(f"{p.name}:{p.stat().st_size}:{_content_digest(p)}" for p in sorted(data.iterdir()) if p.is_file())
