"""Render speed and fidelity: env.render() vs KitchenRenderer (fast, faithful), 128x128.

    python bench/render.py [--states 20] [--dataset ID]

Same states for every renderer: restored from a dataset's observations (or, with no dataset,
from a short expert episode). Prints a table and writes bench/results/render.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

import kitchen_lib  # noqa: F401,E402  (headless MUJOCO_GL before mujoco loads)
from kitchen_lib.data.datasets import OFFLINE_DATASET_ID, is_local, load_episode  # noqa: E402
from kitchen_lib.data.kitchen import make_env, state_from_observation  # noqa: E402
from kitchen_lib.data.render import KitchenRenderer, RenderPool, default_workers  # noqa: E402
from kitchen_lib.inference.metrics import psnr  # noqa: E402

SIZE = 128


def bench_states(dataset: str, n: int) -> np.ndarray:
    if is_local(dataset):
        obs = load_episode(dataset, 0).observations
    else:
        from kitchen_lib.data.expert import run_episode

        env = make_env()
        obs = run_episode(env, 0, max_steps=400).observations
        env.close()
    return obs[np.linspace(0, len(obs) - 1, n).astype(int)]


def env_render(states: np.ndarray) -> tuple[np.ndarray, float]:
    env = make_env(render_mode="rgb_array", width=SIZE, height=SIZE)
    env.reset(seed=0)
    u = env.unwrapped
    frames, t = [], 0.0
    for i, obs in enumerate(states):
        qpos, qvel = state_from_observation(obs)
        u.data.qpos[:], u.data.qvel[:] = qpos, qvel
        mujoco.mj_forward(u.model, u.data)
        t0 = time.perf_counter()
        frames.append(env.render())
        if i > 0:  # the first call builds the GL context
            t += time.perf_counter() - t0
    env.close()
    return np.stack(frames), t / (len(states) - 1)


TRIALS = 3  # this machine is noisy: each figure is the best of 3 runs


def best_time(fn) -> float:
    times = []
    for _ in range(TRIALS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours_one_process(states: np.ndarray, quality: str) -> tuple[np.ndarray, float]:
    with KitchenRenderer(SIZE, quality) as r:
        frames = r.render_many(states)  # also warms up
        return frames, best_time(lambda: r.render_many(states)) / len(states)


def ours_all_cores(states: np.ndarray, quality: str, repeat: int, workers: int) -> dict:
    many = np.concatenate([states] * repeat)
    t0 = time.perf_counter()
    with RenderPool(SIZE, quality, workers) as pool:
        pool.render(many[:workers], chunk=1)  # start-up and warm-up
        startup = time.perf_counter() - t0
        t = best_time(lambda: pool.render(many, chunk=8))
    return {"frames": len(many), "seconds": t, "startup_s": startup, "s_per_frame": t / len(many)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", type=int, default=20)
    ap.add_argument("--dataset", default=OFFLINE_DATASET_ID)
    ap.add_argument("--workers", type=int, default=default_workers())
    a = ap.parse_args()

    states = bench_states(a.dataset, a.states)
    ref, t_env = env_render(states)
    rows = [{"renderer": "env.render()", "processes": 1, "ms_per_frame": round(t_env * 1000, 1), "frames_per_s": round(1 / t_env, 2),
             "speedup_vs_env": 1.0, "psnr_vs_env_db": "-"}]
    results = {"machine": machine(), "size": SIZE, "states": a.states, "env_render_s_per_frame": t_env, "qualities": {}}
    for quality, repeat in (("fast", 10), ("faithful", 2)):
        frames, t1 = ours_one_process(states, quality)
        p = float(np.mean([psnr(r, f) for r, f in zip(ref, frames, strict=True)]))
        par = ours_all_cores(states, quality, repeat, a.workers)
        tn = par["s_per_frame"]
        results["qualities"][quality] = {"one_process_s_per_frame": t1, "all_cores": par, "workers": a.workers,
                                         "psnr_vs_env_db": p, "speedup_one_process": t_env / t1,
                                         "speedup_all_cores": t_env / tn, "all_cores_over_one": t1 / tn}
        rows.append({"renderer": quality, "processes": 1, "ms_per_frame": round(t1 * 1000, 1), "frames_per_s": round(1 / t1, 2),
                     "speedup_vs_env": round(t_env / t1, 1), "psnr_vs_env_db": round(p, 2)})
        rows.append({"renderer": quality, "processes": a.workers, "ms_per_frame": round(tn * 1000, 1),
                     "frames_per_s": round(1 / tn, 2), "speedup_vs_env": round(t_env / tn, 1), "psnr_vs_env_db": round(p, 2),
                     "x_one_process": round(t1 / tn, 2), "startup_s": round(par["startup_s"], 1)})
    print(f"Rendering {SIZE}x{SIZE}, {a.states} states, {machine()['cores']} cores (best of 3 runs; all-cores rows on warm workers)")
    print(table(rows, ["renderer", "processes", "ms_per_frame", "frames_per_s", "speedup_vs_env", "x_one_process", "psnr_vs_env_db", "startup_s"]))
    print("wrote", write_json("render.json", results))


if __name__ == "__main__":
    main()
