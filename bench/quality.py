"""Quality on held-out episodes: time to quality, the trained model against copy, few-step samplers against DDPM-1000.

    python bench/quality.py [--minutes 20] [--points 1 2 4 7 10 15 20] [--run_dir DIR]

Issue 5's targets 1, 2 and 4, on the offline dataset's test episodes, k=5, 64x64 RGB:

1. Train the `cpu` preset (its defaults, unchanged) for --minutes of wall time, in segments that
   end at --points minutes; the Trainer resumes exactly, so the segments add up to one run.
   After each segment, score the EMA weights with the demo's default sampler on --curve_pairs
   test pairs spread over the test episodes (4: the time-to-quality curve, beside copy).
2. Score the final model on every test pair with the default sampler, against copy (target 1:
   at least +1 dB full frame and +3 dB on moving pixels).
3. On --sampler_pairs test pairs, score DDPM-1000 and DDIM with 50, 20, 10, 5 steps, and time
   each at batch 1 (target 2: <= 10 network calls within 0.5 dB of DDPM-1000, <= 0.2 s/frame,
   >= 50x faster than DDPM-1000).

Prints tables, writes bench/results/quality.json and bench/results/time_to_quality.png.
The run stays in --run_dir (default data/checkpoints/bench-quality-<time>) for inspection.
About 20 minutes of training plus 10 of evaluation here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, machine, table, write_json  # noqa: E402

from kitchen_lib.config import preset, with_overrides  # noqa: E402
from kitchen_lib.diffusion import SamplerConfig  # noqa: E402
from kitchen_lib.evaluate import evaluate, plot_time_to_quality  # noqa: E402
from kitchen_lib.inference import load_predictor  # noqa: E402
from kitchen_lib.pairs import build_pairs  # noqa: E402
from kitchen_lib.paths import atomic_path, data_dir  # noqa: E402
from kitchen_lib.train import Trainer  # noqa: E402

SAMPLERS = [SamplerConfig("ddpm"), SamplerConfig("ddim", 50), SamplerConfig("ddim", 20), SamplerConfig("ddim", 10),
            SamplerConfig("ddim", 5)]


def scores(result: dict, method: str) -> dict:
    m = result["methods"][method]
    return {"psnr": m["psnr"], "psnr_moving": m["psnr_moving"], "ssim": m["ssim"]}


def seconds_per_frame(predictor, frame: np.ndarray, sampler: SamplerConfig) -> float:
    """Batch of one, best of 3 (1 for DDPM), after a warm-up."""
    predictor.predict(frame, SamplerConfig("ddim", 2))
    best = float("inf")
    for i in range(1 if sampler.name == "ddpm" else 3):
        t0 = time.perf_counter()
        predictor.predict(frame, sampler, seed=i)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--points", type=float, nargs="+", default=[1, 2, 4, 7, 10, 15, 20], help="minutes at which to score")
    ap.add_argument("--curve_pairs", type=int, default=256)
    ap.add_argument("--sampler_pairs", type=int, default=64)
    ap.add_argument("--run_dir", default=None)
    a = ap.parse_args()
    points = sorted({p for p in a.points if p < a.minutes} | {a.minutes})
    run_dir = Path(a.run_dir or data_dir() / "checkpoints" / f"bench-quality-{time.strftime('%Y%m%d-%H%M%S')}")
    base = preset("cpu")
    sampler = base.sampler  # the preset's default
    label = sampler.label(base.diffusion.timesteps)
    cache = build_pairs(base.data)
    res = {"machine": machine(), "preset": "cpu", "config": base.to_dict(), "run_dir": str(run_dir),
           "default_sampler": label, "curve": [], "curve_pairs": a.curve_pairs}

    # 1. time to quality
    trained = 0.0
    for p in points:
        cfg = with_overrides(base, train={"checkpoint_dir": str(run_dir), "max_minutes": p - trained})
        r = Trainer(cfg, resume="latest" if trained else None).fit()
        trained += r.seconds / 60
        pred = load_predictor(run_dir / "latest.pt")
        ev = evaluate(pred, cache, "test", sampler, max_pairs=a.curve_pairs, progress=False)
        row = {"minutes": trained, "steps": r.optimizer_steps, "model": scores(ev, "diffusion"), "copy": scores(ev, "copy")}
        res["curve"].append(row)
        print(f"{trained:5.1f} min, {r.optimizer_steps:5d} optimizer steps: model {row['model']['psnr']:.2f} dB "
              f"(moving {row['model']['psnr_moving']:.2f}), copy {row['copy']['psnr']:.2f} ({row['copy']['psnr_moving']:.2f})",
              flush=True)
        if not r.stopped_early:
            break  # the preset's epochs ran out first
    res["training_minutes"], res["training_steps"] = trained, res["curve"][-1]["steps"]
    pred = load_predictor(run_dir / "latest.pt")

    # 2. the final model on every test pair
    full = evaluate(pred, cache, "test", sampler, progress=True)
    res["final"] = {"pairs": full["pairs"], "model": scores(full, "diffusion"), "copy": scores(full, "copy"),
                    "per_task": full["per_task"]}
    gain = {k: res["final"]["model"][k] - res["final"]["copy"][k] for k in ("psnr", "psnr_moving")}
    res["final"]["gain_db"] = gain
    res["target1_met"] = gain["psnr"] >= 1 and gain["psnr_moving"] >= 3

    # 3. samplers against DDPM-1000
    frame = np.asarray(cache.frames[cache.frame_indices("test")[0, 0]])
    res["samplers"] = {}
    for s in SAMPLERS:
        ev = evaluate(pred, cache, "test", s, max_pairs=a.sampler_pairs, progress=False)
        key = s.label(pred.model.diffusion.T).lower()
        res["samplers"][key] = scores(ev, "diffusion") | {"network_calls": pred.model.network_calls(s),
                                                            "seconds_per_frame": seconds_per_frame(pred, frame, s)}
        print(key, res["samplers"][key], flush=True)
    ddpm = res["samplers"]["ddpm-1000"]
    for r in res["samplers"].values():
        r["gap_to_ddpm_db"] = {k: r[k] - ddpm[k] for k in ("psnr", "psnr_moving")}
        r["speedup_vs_ddpm"] = ddpm["seconds_per_frame"] / r["seconds_per_frame"]
    res["target2_met_by"] = [k for k, r in res["samplers"].items() if r["network_calls"] <= 10
                             and min(r["gap_to_ddpm_db"].values()) >= -0.5 and r["seconds_per_frame"] <= 0.2
                             and r["speedup_vs_ddpm"] >= 50]

    with atomic_path(RESULTS / "time_to_quality.png") as tmp:
        plot_time_to_quality(res).savefig(tmp, dpi=80, bbox_inches="tight")

    print(f"\nTime to quality ({a.curve_pairs} test pairs, {label}):")
    print(table([{"minutes": round(c["minutes"], 1), "steps": c["steps"], "model_psnr": round(c["model"]["psnr"], 2),
                  "copy_psnr": round(c["copy"]["psnr"], 2), "model_moving": round(c["model"]["psnr_moving"], 2),
                  "copy_moving": round(c["copy"]["psnr_moving"], 2)} for c in res["curve"]],
                ["minutes", "steps", "model_psnr", "copy_psnr", "model_moving", "copy_moving"]))
    f = res["final"]
    print(f"\nTarget 1: all {f['pairs']} test pairs after {trained:.1f} min ({label}):")
    print(table([{"method": m, "psnr": round(f[m]["psnr"], 2), "psnr_moving": round(f[m]["psnr_moving"], 2),
                  "ssim": round(f[m]["ssim"], 3)} for m in ("model", "copy")]
                + [{"method": "gain (dB)", "psnr": round(gain["psnr"], 2), "psnr_moving": round(gain["psnr_moving"], 2)}],
                ["method", "psnr", "psnr_moving", "ssim"]))
    print("met" if res["target1_met"] else "NOT met", "(needs +1 dB and +3 dB moving)")
    print(f"\nTarget 2: samplers on {a.sampler_pairs} test pairs; time at batch 1:")
    print(table([{"sampler": k, "calls": r["network_calls"], "psnr": round(r["psnr"], 2),
                  "psnr_moving": round(r["psnr_moving"], 2), "gap_db": round(r["gap_to_ddpm_db"]["psnr"], 2),
                  "gap_moving_db": round(r["gap_to_ddpm_db"]["psnr_moving"], 2),
                  "s_per_frame": round(r["seconds_per_frame"], 3), "x_vs_ddpm": round(r["speedup_vs_ddpm"], 1)}
                 for k, r in res["samplers"].items()],
                ["sampler", "calls", "psnr", "psnr_moving", "gap_db", "gap_moving_db", "s_per_frame", "x_vs_ddpm"]))
    print("met by", res["target2_met_by"] if res["target2_met_by"] else "NOT met")
    print("wrote", write_json("quality.json", res), "and", RESULTS / "time_to_quality.png")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
