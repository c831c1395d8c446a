"""Peak memory of `python -m kitchen_lib evaluate --split all` against the size of the cache.

    python bench/memory.py [--frames 156000] [--fractions 0.125 0.25] [--size 64] [--code PATH]

Everything lives in a temporary folder (its own Minari store and data folder). A small real
dataset (3 expert episodes) is made and a smoke-world model (context frames, actions, joints:
every part of an example) is trained on its 64px pairs for one epoch: an untrained-grade model
predicts as slowly and holds as much as a good one. Then, for each fraction of `--frames` (D4RL
mixed-v2: about 156k frames), a cache of that many frames is written by repeating the real
episodes' frames and per-frame arrays (as if there were that many episodes; no rendering), put
where the model's pairs are looked for, and `evaluate --split all --mean_of 0 --sampling_steps 1`
runs on it in a subprocess whose peak resident memory the kernel reports (wait4's ru_maxrss),
and its pairs a second (the whole command's, loading included: a timing only on an idle machine).
`--code PATH` runs another checkout's kitchen_lib instead (the before of a change). Prints a
table, writes bench/results/memory.json (memory-<name>.json with --tag).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASET = "kitchen-diffusion/bench-memory-v0"


def tiled_cache(src, dst: Path, frames: int) -> dict:
    """Write at `dst` a cache of about `frames` frames: `src`'s episodes again and again (each
    copy a new episode in its source's split), its arrays and meta.json as build_pairs writes them."""
    from kitchen_lib.base.paths import fsync_dir
    from kitchen_lib.data.cache import FRAME_ARRAYS, file_digest
    from kitchen_lib.data.pairs import SPLITS, pair_steps

    source = sorted(src.meta["episodes"], key=lambda e: e["first_frame"])
    episodes, pairs, first, i = [], {s: [] for s in SPLITS}, 0, 0
    while first < frames or not episodes:
        e = source[i % len(source)]
        episodes.append({"index": i, "split": e["split"], "first_frame": first, "num_frames": e["num_frames"],
                         "source": e["index"]})
        pairs[e["split"]] += [[i, int(t)] for t in pair_steps(e["num_frames"] - 1, src.k)]
        first, i = first + e["num_frames"], i + 1
    dst.mkdir(parents=True)
    shape = (first, *src.frames.shape[1:])
    with open(dst / "frames.npy", "wb") as f:  # streamed: memory stays flat
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for e in episodes:
            f.write(np.ascontiguousarray(src.episode_frames(e["source"])).tobytes())
    for name in FRAME_ARRAYS:
        np.save(dst / f"{name}.npy", np.concatenate([src.array(name)[src.episode_rows(e["source"])] for e in episodes]),
                allow_pickle=False)
    checksums = {n: file_digest(dst / f"{n}.npy") for n in ("frames", *FRAME_ARRAYS)}
    meta = src.meta | {"frames_shape": list(shape), "episodes": [{k: v for k, v in e.items() if k != "source"}
                                                                   for e in episodes],
                       "splits": {s: [e["index"] for e in episodes if e["split"] == s] for s in SPLITS},
                       "pairs": pairs, "checksums": checksums}
    (dst / "meta.json").write_text(json.dumps(meta, separators=(",", ":")))
    fsync_dir(dst)
    return {"frames": first, "pairs": sum(len(v) for v in pairs.values()), "frames_file_gb": round(shape[0] * np.prod(
        shape[1:]) / 1e9, 3)}


def run_measured(cmd: list[str], env: dict, cwd: Path) -> tuple[int, float, str]:
    """Run cmd; its exit code, peak RSS in GB (the kernel's, for it and nothing else) and output."""
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return p.returncode, usage.ru_maxrss * 1024 / 1e9, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=156_000, help="the full size (D4RL mixed-v2: about 156k frames)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--code", default=str(REPO), help="the checkout whose kitchen_lib runs evaluate")
    ap.add_argument("--tag", default=None, help="results name: memory-<tag>.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        # Run from the temporary folder: `python -m` puts the working folder before PYTHONPATH.
        env = os.environ | {"MINARI_DATASETS_PATH": str(root / "minari"), "KITCHEN_DATA_DIR": str(root / "data"),
                            "PYTHONPATH": a.code}
        os.environ.update({k: env[k] for k in ("MINARI_DATASETS_PATH", "KITCHEN_DATA_DIR")})
        from kitchen_lib.data.cache_builder import build_pairs
        from kitchen_lib.data.generate import generate_dataset
        from kitchen_lib.training.config import preset, with_overrides
        from kitchen_lib.training.trainer import train

        generate_dataset(DATASET, episodes=3, seed=1, max_steps=60, progress=False)
        cfg = with_overrides(preset("smoke-world"), data={"dataset": DATASET, "size": a.size},
                             train={"checkpoint_dir": str(root / "run"), "tensorboard_dir": str(root / "tb"),
                                    "epochs": 1, "log_images": False})
        train(cfg, progress=False)
        small = build_pairs(cfg.data, progress=False)
        # Where the code measured looks for the model's pairs (its cache_dir_for: the fingerprint may differ).
        where = subprocess.run([sys.executable, "-c", "import sys; from kitchen_lib.inference.predictor import load_predictor;"
                                "from kitchen_lib.data.cache_builder import cache_dir_for;"
                                "p = load_predictor(sys.argv[1]); print(cache_dir_for(p.config.data, p.config.root() / 'pairs'))",
                                str(root / "run" / "latest.pt")], env=env, cwd=root, capture_output=True, text=True,
                               check=True)
        target = Path(where.stdout.strip().splitlines()[-1])
        rows = []
        for fraction in a.fractions:
            big = root / f"big-{fraction}"
            info = tiled_cache(small, big, int(a.frames * fraction))
            if target.exists():
                target.rename(root / f"aside-{time.time_ns()}")
            big.rename(target)
            cmd = [sys.executable, "-m", "kitchen_lib", "evaluate", "--checkpoint", str(root / "run" / "latest.pt"),
                   "--split", "all", "--mean_of", "0", "--sampling_steps", "1", "--json", str(root / "eval.json")]
            t0 = time.time()
            rc, peak, out = run_measured(cmd, env, cwd=root)
            seconds = time.time() - t0
            if rc != 0:
                raise SystemExit(f"evaluate failed ({rc}):\n{out[-3000:]}")
            evaluated = json.loads((root / "eval.json").read_text())["pairs"]
            rows.append({"fraction": fraction, **info, "pairs_evaluated": evaluated, "peak_rss_gb": round(peak, 3),
                         "minutes": round(seconds / 60, 1),
                         "pairs_per_second": round(evaluated / seconds, 1)})  # the whole command's: loading included
            print(table(rows[-1:], list(rows[-1])), flush=True)
            shutil.rmtree(target)
            # Written after each size: a long run stopped part way keeps what it measured.
            res = {"machine": machine(), "code": a.code, "pairs_folder": target.name, "size": a.size,
                   "full_frames": a.frames, "runs": rows,
                   "command": "python -m kitchen_lib evaluate --split all --mean_of 0 --sampling_steps 1 (smoke-world)"}
            out = write_json(f"memory-{a.tag}.json" if a.tag else "memory.json", res)
    print(table(rows, list(rows[0])))
    print("target: peak memory of evaluate under 2 GB at D4RL mixed-v2's size, not growing with the cache")
    print("wrote", out)


if __name__ == "__main__":
    main()
