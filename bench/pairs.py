"""Pair-cache build at D4RL mixed-v2 scale: time and peak memory while streaming.

    python bench/pairs.py [--steps 156000] [--size 64]

Makes (once) a dataset of that many steps with random actions in FrankaKitchen-v1
(`kitchen-diffusion/random-<steps>-v0`, 250-step episodes), builds its 64x64 pairs into a
fresh cache folder, and samples the resident memory of this process plus its render workers
every 0.2 s. Then times loading the built cache. Prints a table, writes
bench/results/pairs.json. The full size renders about 156k frames: most of an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from _common import table, write_json  # noqa: E402

EPISODE_STEPS = 250


class PeakMemory:
    """Peak of (this process + its children) resident memory, sampled in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self.peak_main = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                main = me.memory_info().rss
                total = main + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            self.peak, self.peak_main = max(self.peak, total), max(self.peak_main, main)
            time.sleep(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=156_000, help="total steps (D4RL mixed-v2 has about 156k)")
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    # Imported here, not at the top: render workers are spawned and re-import this script's
    # top level, and should hold no more than the CLI's workers do (no torch).
    from _common import machine

    from kitchen_lib.data.cache import load_cache
    from kitchen_lib.data.cache_builder import build_pairs
    from kitchen_lib.data.datasets import is_local
    from kitchen_lib.data.generate import generate_dataset
    from kitchen_lib.data.pairs import PairsConfig

    episodes = max(3, a.steps // EPISODE_STEPS)
    dataset = f"kitchen-diffusion/random-{episodes * EPISODE_STEPS}-v0"
    t0 = time.time()
    if not is_local(dataset):
        generate_dataset(dataset, episodes=episodes, max_steps=EPISODE_STEPS, random_actions=True, progress=True)
    gen_s = time.time() - t0

    cfg = PairsConfig(dataset=dataset, k=5, size=a.size)
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as root:
        with PeakMemory() as mem:
            t0 = time.time()
            cache = build_pairs(cfg, root=Path(root))
            build_s = time.time() - t0
        loads = []
        for _ in range(3):
            t0 = time.perf_counter()
            load_cache(cache.path, cfg)
            loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_pairs(cfg, root=Path(root))  # the cached path: config hash, episode lengths, load
        reask_s = time.perf_counter() - t0
        summary = cache.summary()
        frames_gb = cache.frames.nbytes / 1e9

    res = {
        "machine": machine(), "dataset": dataset, "steps": episodes * EPISODE_STEPS, "episodes": episodes,
        "size": a.size, "generate_s": round(gen_s, 1), "build_s": round(build_s, 1),
        "frames_per_s": round(summary["frames"] / build_s, 1), "frames_file_gb": round(frames_gb, 2),
        "peak_rss_total_gb": round(mem.peak / 1e9, 3), "peak_rss_main_gb": round(mem.peak_main / 1e9, 3),
        "load_s": round(min(loads), 4), "build_pairs_when_cached_s": round(reask_s, 4), "pairs": summary["pairs"],
    }
    print(table([res], ["steps", "episodes", "size", "build_s", "frames_per_s", "frames_file_gb",
                        "peak_rss_total_gb", "peak_rss_main_gb", "load_s", "build_pairs_when_cached_s"]))
    print("target: peak memory under 2 GB at 64x64; cached load well under a second")
    print("wrote", write_json(f"pairs-{episodes * EPISODE_STEPS}.json", res))


if __name__ == "__main__":
    main()
