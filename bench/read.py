"""Reading the pairs cache at D4RL scale: can the DataLoader keep a GPU fed at 128x128?

    python bench/read.py [--steps 156000] [--size 128] [--batch 16] [--batches 300] [--workers 0 1 2]

Makes a pairs cache the size of D4RL mixed-v2 (156k steps in 250-step episodes; 7.7 GB of
frames at 128x128 RGB) in a temporary folder: rendering that many frames takes hours here, so
its frames are the real 64x64 frames of the offline dataset's cache, upscaled 2x and repeated
(reading does not depend on what the bytes show). Then reads it as training does: the
`seed`-style frame-only `ExampleSet` of the train split (a batch gathered at a time), in one epoch's seeded random
order, through a DataLoader with 0, 1 and 2 worker processes, and reports pairs/s and
frames/s, cold (the file's pages dropped from the page cache with posix_fadvise) and warm,
and each worker's unique memory (USS: what the worker holds that is not shared, so a frames
file copied into a worker would show there). Prints a table, writes bench/results/read.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.data.cache import load_cache  # noqa: E402
from kitchen_lib.data.cache_builder import build_pairs  # noqa: E402
from kitchen_lib.data.examples import ConditioningConfig, ExampleSet  # noqa: E402
from kitchen_lib.data.pairs import PairsConfig  # noqa: E402

EPISODE_STEPS = 250


def make_cache(root: Path, steps: int, size: int, source: np.ndarray) -> Path:
    """A cache folder of `steps` frames of `size` px in 250-step episodes (80/10/10 split)."""
    path = root / "pairs-read-bench"
    path.mkdir()
    episodes = steps // EPISODE_STEPS
    frames = np.lib.format.open_memmap(path / "frames.npy", mode="w+", dtype=np.uint8,
                                       shape=(episodes * EPISODE_STEPS, size, size, 3))
    scale = size // source.shape[1]
    chunk = 2048
    for start in range(0, len(frames), chunk):
        rows = np.arange(start, min(start + chunk, len(frames))) % len(source)
        block = source[rows]
        frames[start : start + len(rows)] = block.repeat(scale, axis=1).repeat(scale, axis=2)
    frames.flush()
    del frames
    split = np.random.default_rng(0).choice(["train", "val", "test"], size=episodes, p=[0.8, 0.1, 0.1])
    split[:3] = ["train", "val", "test"]
    k = 5
    meta = {
        "format": 1,
        "config": {**PairsConfig(dataset="kitchen-diffusion/read-bench-v0", k=k, size=size).__dict__},
        "frames_shape": [episodes * EPISODE_STEPS, size, size, 3],
        "episodes": [{"index": e, "split": str(split[e]), "first_frame": e * EPISODE_STEPS, "num_frames": EPISODE_STEPS}
                     for e in range(episodes)],
        "splits": {s: [e for e in range(episodes) if split[e] == s] for s in ("train", "val", "test")},
        "pairs": {s: [[e, t] for e in range(episodes) if split[e] == s for t in range(EPISODE_STEPS - k)]
                  for s in ("train", "val", "test")},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages, so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_rate(dataset: ExampleSet, batch: int, batches: int, workers: int) -> dict:
    """Pairs/s over `batches` batches in a seeded random order, and the workers' peak USS."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[: batch * batches].tolist()
    batches_of = torch.utils.data.BatchSampler(order, batch, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=batches_of, num_workers=workers,
                                         persistent_workers=False)
    me, uss = psutil.Process(), 0
    t0, n = time.perf_counter(), 0
    for i, b in enumerate(loader):
        n += len(b["current"])
        if i % 50 == 10:
            for child in me.children():
                try:
                    uss = max(uss, child.memory_full_info().uss)
                except psutil.Error:
                    pass
    seconds = time.perf_counter() - t0
    return {"pairs_per_s": n / seconds, "frames_per_s": 2 * n / seconds, "worker_uss_mb": uss / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=156_000, help="frames in the cache (D4RL mixed-v2: about 156k)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="the seed preset's batch")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dir", default=None, help="where to make the cache (default: a temporary folder on /tmp)")
    a = ap.parse_args()
    source = build_pairs(PairsConfig(size=64), progress=False).frames  # the offline dataset's 64x64 frames (the cpu preset's cache)
    if a.size % source.shape[1]:
        ap.error(f"--size must be a multiple of the source frames' {source.shape[1]} px")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-read-", dir=a.dir) as root:
        t0 = time.time()
        path = make_cache(Path(root), a.steps, a.size, np.asarray(source))
        make_s = time.time() - t0
        t0 = time.perf_counter()
        cache = load_cache(path)
        load_s = time.perf_counter() - t0
        dataset = ExampleSet(cache, cache.pairs("train"), ConditioningConfig())
        gb = cache.frames.nbytes / 1e9
        res = {"machine": machine(), "steps": len(cache.frames), "size": a.size, "frames_file_gb": round(gb, 2),
               "make_s": round(make_s, 1), "load_s": round(load_s, 3), "batch": a.batch, "batches": a.batches,
               "train_pairs": len(dataset), "reads": []}
        for workers in a.workers:
            for state in ("cold", "warm"):
                if state == "cold":
                    drop_page_cache(path / "frames.npy")
                r = {"workers": workers, "page_cache": state, **read_rate(dataset, a.batch, a.batches, workers)}
                res["reads"].append(r)
                rows.append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()})
    print(f"cache: {res['steps']:,} frames of {a.size}px, {gb:.2f} GB, made in {make_s:.0f} s, opened in {load_s:.2f} s")
    print(table(rows, ["workers", "page_cache", "pairs_per_s", "frames_per_s", "worker_uss_mb"]))
    print("wrote", write_json("read.json", res))


if __name__ == "__main__":
    main()
