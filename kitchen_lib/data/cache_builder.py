"""Building the pairs cache (kitchen_lib.data.cache): its one writer, under the folder's lock.

`build_pairs(cfg)` opens the cache for a config, building it first if needed: it streams the
episodes once, rendering their frames on all cores and taking each frame's action, joint state
and object state on the way, and renames the finished folder into place. A cache built before
the per-frame arrays existed gets them here too, under the same lock.

Several datasets joined by "+" (PairsConfig.dataset) make one cache: their episodes are numbered
one after another (a single dataset's keep their own numbers), each dataset is split into
train/val/test on its own, and meta.json records each episode's dataset and its number there.
A single dataset's cache is keyed, split and laid out exactly as before joining existed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.images import to_grayscale
from kitchen_lib.base.locks import clean_stale, folder_lock, hold_temp, let_go, owner_tag, user_file_mode
from kitchen_lib.base.paths import atomic_path, data_dir, fsync_dir, fsync_file
from kitchen_lib.data.cache import CACHE_FORMAT, FRAME_ARRAYS, PairsCache, file_digest, load_cache
from kitchen_lib.data.datasets import Episode, dataset_parts, dataset_path, episode_lengths, fingerprint, iter_episodes
from kitchen_lib.data.kitchen import state_from_observation
from kitchen_lib.data.pairs import SPLITS, PairsConfig, pair_steps, split_episodes
from kitchen_lib.data.render import render_chunks


@dataclass(frozen=True)
class _Source:
    """One episode a cache is built from."""

    index: int  # its number in the cache: its dataset's own for a single dataset, else offset by the datasets before
    dataset: str
    local: int  # its number in its dataset
    steps: int


def _fingerprint(dataset: str) -> str | dict[str, str]:
    parts = dataset_parts(dataset)
    return fingerprint(parts[0]) if len(parts) == 1 else {p: fingerprint(p) for p in parts}


def _cache_key(cfg: PairsConfig, lengths: list[int] | dict[str, list[int]]) -> dict:
    return {"format": CACHE_FORMAT, "config": asdict(cfg), "dataset_fingerprint": _fingerprint(cfg.dataset), "lengths": lengths}


def cache_dir_for(cfg: PairsConfig, root: Path | None = None) -> Path:
    lengths = _used_lengths(cfg)
    digest = hashlib.sha256(json.dumps(_cache_key(cfg, lengths), sort_keys=True).encode()).hexdigest()[:16]
    return (root or data_dir() / "pairs") / f"pairs-{digest}"


def legacy_cache_dir(cfg: PairsConfig, root: Path | None = None) -> Path | None:
    """Where these pairs were cached while the dataset's fingerprint was its files' sizes and
    modification times (before content digests): such a cache is adopted, not rendered again.
    None for joined datasets (they came after)."""
    if len(dataset_parts(cfg.dataset)) > 1:
        return None
    data = dataset_path(cfg.dataset) / "data"
    old = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(data.iterdir()) if p.is_file())
    key = _cache_key(cfg, _used_lengths(cfg)) | {"dataset_fingerprint": old}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return (root or data_dir() / "pairs") / f"pairs-{digest}"


def _used_lengths(cfg: PairsConfig) -> list[int] | dict[str, list[int]]:
    """Steps of each used episode: a list for one dataset, {dataset: list} for joined ones."""
    per = {}
    for part in dataset_parts(cfg.dataset):
        lengths = episode_lengths(part)
        per[part] = lengths[: cfg.max_episodes] if cfg.max_episodes else lengths
    return next(iter(per.values())) if len(per) == 1 else per


def _sources(cfg: PairsConfig, lengths: list[int] | dict[str, list[int]]) -> list[_Source]:
    """Every used episode, dataset after dataset, numbered as the cache numbers them."""
    per = lengths if isinstance(lengths, dict) else {cfg.dataset: lengths}
    out: list[_Source] = []
    for part, steps in per.items():
        out += [_Source(len(out) + i, part, i, n) for i, n in enumerate(steps)]
    return out


def _read(sources: list[_Source]) -> Iterator[tuple[_Source, Episode]]:
    """The sources' episodes, streamed in the order given (grouped by dataset)."""
    for part in dict.fromkeys(s.dataset for s in sources):
        mine = [s for s in sources if s.dataset == part]
        yield from zip(mine, iter_episodes(part, [s.local for s in mine]), strict=True)


def _meta_sources(meta: dict) -> list[_Source]:
    """A cache's episodes as sources (a cache built before joining records no datasets: its own)."""
    default = meta["config"]["dataset"]
    return [_Source(e["index"], e.get("dataset", default), e.get("dataset_index", e["index"]), e["num_frames"] - 1)
            for e in sorted(meta["episodes"], key=lambda e: e["first_frame"])]


def build_pairs(
    cfg: PairsConfig, root: Path | None = None, force: bool = False, workers: int | None = None, progress: bool = True,
) -> PairsCache:
    """Load the cache for `cfg`, building it first if needed (streaming, all cores)."""
    cfg.validate()
    lengths = _used_lengths(cfg)
    steps = [s.steps for s in _sources(cfg, lengths)]
    if not steps:
        raise UserError(f"{cfg.dataset} has no episodes")
    if cfg.k >= max(steps):
        raise UserError(
            f"k={cfg.k} is not shorter than any episode of {cfg.dataset} (the longest has {max(steps)} steps): "
            f"choose k < {max(steps)}"
        )
    path = cache_dir_for(cfg, root)
    if path.exists() and not force and _complete(path):
        return _checked(load_cache(path, cfg))
    # One builder per cache: a second process asking for the same pairs waits, then reuses them.
    say = (lambda holder: print(f"waiting for {holder}, which is building these pairs ({path.name})", flush=True)) \
        if progress else None
    with folder_lock(path.parent, f"the pairs cache {path.name}", wait=True, on_wait=say, name=f".{path.name}.lock"):
        legacy = None if path.exists() or force else legacy_cache_dir(cfg, root)
        if legacy is not None and legacy.is_dir():
            legacy.rename(path)  # same data, same settings: only the name's key changed
            if progress:
                print(f"using the pairs cache {legacy.name}, renamed {path.name} (its key now hashes the data's content)")
        if path.exists() and not force:
            cache = load_cache(path, cfg)
            _add_frame_arrays(cache)  # a cache built before they existed
            return _checked(cache)
        clean_stale(path.parent)  # what killed builds left behind
        _build(cfg, path, lengths, workers, progress)
    return _checked(load_cache(path, cfg))


def _checked(cache: PairsCache) -> PairsCache:
    """Read the per-frame arrays now, against their checksums (tens of MB at D4RL scale): a
    damaged one fails here, naming its file, not later as a diverged run. frames.npy (GBs) is
    checked by `pairs --verify` (cache.verify_cache)."""
    for name in FRAME_ARRAYS:
        cache.array(name)
    return cache


def _complete(path: Path) -> bool:
    return all((path / f"{name}.npy").is_file() for name in FRAME_ARRAYS)


def _frame_arrays(observations: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """One episode's per-frame arrays (FRAME_ARRAYS), (T+1, columns) each."""
    acts = np.zeros((len(observations), 9), np.float32)
    acts[: len(actions)] = actions[: len(observations) - 1]
    qpos = np.stack([state_from_observation(o)[0] for o in observations])
    return {"actions": acts, "proprio": observations[:, :9].astype(np.float32), "objects": qpos[:, 9:]}


def _save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Write each array (atomically, fsynced); returns their checksums for meta.json."""
    for name, rows in arrays.items():
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, rows, allow_pickle=False)
    return {name: file_digest(folder / f"{name}.npy") for name in arrays}


def _add_frame_arrays(cache: PairsCache) -> None:
    """Write the per-frame arrays a cache lacks (the caller holds the cache's lock)."""
    missing = [name for name in FRAME_ARRAYS if not (cache.path / f"{name}.npy").is_file()]
    if not missing:
        return
    out = {name: np.zeros((len(cache.frames), FRAME_ARRAYS[name][0]), FRAME_ARRAYS[name][1]) for name in missing}
    for src, ep in _read(_meta_sources(cache.meta)):
        rows = cache.episode_rows(src.index)
        arrays = _frame_arrays(ep.observations[: src.steps + 1], ep.actions)
        for name in missing:
            out[name][rows] = arrays[name]
    # Their checksums join meta.json's; an old cache's frames.npy stays without one (verify_cache says so).
    cache.meta["checksums"] = cache.meta.get("checksums", {}) | _save_arrays(cache.path, out)
    with atomic_path(cache.path / "meta.json") as tmp:
        _write_json(tmp, cache.meta)


def _build(cfg: PairsConfig, path: Path, lengths: list[int] | dict[str, list[int]], workers: int | None,
           progress: bool) -> None:
    split_of: dict[int, str] = {}
    usable: list[_Source] = []
    for part in dataset_parts(cfg.dataset):
        mine = [s for s in _sources(cfg, lengths) if s.dataset == part]
        ok = [s for s in mine if s.steps > cfg.k]
        if len(ok) < len(mine):
            warnings.warn(f"{len(mine) - len(ok)} episodes of {part} are not longer than k={cfg.k} and are left out",
                          stacklevel=3)
        try:
            splits = split_episodes(len(ok), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        except UserError as e:
            if part == cfg.dataset:
                raise
            raise UserError(f"{part}: {e}") from None
        split_of |= {ok[j].index: s for s, js in splits.items() for j in js}
        usable += ok
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{owner_tag()}", dir=path.parent))
    held = hold_temp(os.open(tmp, os.O_RDONLY))  # the sweeper leaves it alone, in any pid namespace
    try:
        meta = _write_cache(tmp, cfg, usable, split_of, workers, progress)
        meta["build_seconds"] = round(time.time() - t0, 2)
        _write_json(tmp / "meta.json", meta)
        os.chmod(tmp, user_file_mode(directory=True))  # mkdtemp's 0700 would outlive the rename
        fsync_dir(tmp)  # every file is fsynced: their names too, before the folder is renamed
        if path.exists():  # force: move the old cache aside only once the new one is whole
            old = tmp.with_name(tmp.name + "-old")  # carries the owner tag: swept if we die here
            path.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        let_go(held)


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    fsync_file(path)


def _write_cache(tmp: Path, cfg: PairsConfig, usable: list[_Source], split_of: dict[int, str], workers: int | None,
                 progress: bool) -> dict:
    from tqdm.auto import tqdm

    num_frames = sum(s.steps + 1 for s in usable)
    shape = (num_frames, cfg.size, cfg.size, cfg.channels)
    episodes, pairs = [], {s: [] for s in SPLITS}
    first = 0
    for s in usable:
        episodes.append({"index": s.index, "split": split_of[s.index], "first_frame": first, "num_frames": s.steps + 1,
                         "dataset": s.dataset, "dataset_index": s.local})
        pairs[split_of[s.index]] += [[s.index, int(t)] for t in pair_steps(s.steps, cfg.k)]
        first += s.steps + 1

    arrays = {name: np.zeros((num_frames, cols), dtype) for name, (cols, dtype) in FRAME_ARRAYS.items()}
    first_of = {e["index"]: e["first_frame"] for e in episodes}

    def jobs():
        # Episodes are read one at a time and cut into small chunks for the workers; their
        # per-frame arrays are taken on the way, so the episodes are read once.
        for src, ep in _read(usable):
            f0 = first_of[src.index]
            for name, rows in _frame_arrays(ep.observations, ep.actions).items():
                arrays[name][f0 : f0 + len(rows)] = rows
            for s in range(0, len(ep.observations), 64):
                yield (src.index, s), ep.observations[s : s + 64]

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
    fsync_file(tmp / "frames.npy")
    # Checksums of every array, read back once here (a 64px mixed-v2 frames.npy: a few seconds).
    checksums = {"frames": file_digest(tmp / "frames.npy")} | _save_arrays(tmp, arrays)
    return {
        "format": CACHE_FORMAT,
        "config": asdict(cfg),
        "dataset_fingerprint": _fingerprint(cfg.dataset),
        "frames_shape": list(shape),
        "episodes": episodes,
        "splits": {s: [e["index"] for e in episodes if e["split"] == s] for s in SPLITS},
        "pairs": pairs,
        "checksums": checksums,
    }
