"""Quality on held-out episodes: time to quality, the trained model against copy, few-step samplers against DDPM-1000.

    python bench/quality.py [--preset cpu|cpu-world] [--minutes 20] [--points 1 2 4 7 10 15 20]
                            [--regression] [--run_dir DIR]

On the offline dataset's test episodes, k=5, 64x64 RGB:

1. Train the preset (its defaults, unchanged) for --minutes of wall time, in segments that
   end at --points minutes; the Trainer resumes exactly, so the segments add up to one run.
   After each segment, score the EMA weights with the demo's default sampler on --curve_pairs
   test pairs spread over the test episodes (4: the time-to-quality curve, beside copy).
2. Score the final model on every test pair with the default sampler, against copy: one sample,
   the mean of 4, the one-step x0 estimate, and for a world model the same with shuffled actions
   (ΔPSNR); with --regression, also the same-budget regression U-Net with the same conditioning
   (trained after the diffusion run, in <run_dir>-regression). Targets: `cpu` +1 dB full frame
   and +3 dB moving; `cpu-world` +3 dB and +6 dB, ΔPSNR >= 2 dB moving, a sample within 1 dB of
   the regression on the moving pixels and sharper than it.
   A world model is also rolled out 10 steps (50 env steps) from --rollout_starts starts per test
   episode on the recorded actions, against holding the start frame.
3. On --sampler_pairs test pairs, score DDPM-1000 and DDIM with 50, 20, 10, 5 steps, and time
   each at batch 1 (target 2: <= 10 network calls within 0.5 dB of DDPM-1000, <= 0.2 s/frame,
   >= 50x faster than DDPM-1000).

Prints tables, writes bench/results/quality.json and time_to_quality.png (quality-<preset>.json
and time_to_quality-<preset>.png for other presets).
The run stays in --run_dir (default data/checkpoints/bench-quality-<time>) for inspection.
About 20 minutes of training plus 10 of evaluation here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS, machine, table, write_json  # noqa: E402

from kitchen_lib.base.paths import atomic_path, data_dir  # noqa: E402
from kitchen_lib.data.cache_builder import build_pairs  # noqa: E402
from kitchen_lib.inference.evaluate import evaluate, format_table, plot_time_to_quality  # noqa: E402
from kitchen_lib.inference.predictor import load_predictor  # noqa: E402
from kitchen_lib.inference.rollout import mean_rollouts  # noqa: E402
from kitchen_lib.model.samplers import SamplerConfig  # noqa: E402
from kitchen_lib.training.config import PRESETS, preset, with_overrides  # noqa: E402
from kitchen_lib.training.trainer import Trainer  # noqa: E402

SAMPLERS = [SamplerConfig("ddpm"), SamplerConfig("ddim", 50), SamplerConfig("ddim", 20), SamplerConfig("ddim", 10),
            SamplerConfig("ddim", 5)]


def scores(result: dict, method: str) -> dict:
    m = result["methods"][method]
    return {"psnr": m["psnr"], "psnr_moving": m["psnr_moving"], "ssim": m["ssim"]}


def seconds_per_frame(predictor, one: dict, sampler: SamplerConfig) -> float:
    """Batch of one (`one`: a pair's inputs), best of 3 (1 for DDPM), after a warm-up."""
    predictor.predict(one, SamplerConfig("ddim", 2))
    best = float("inf")
    for i in range(1 if sampler.name == "ddpm" else 3):
        t0 = time.perf_counter()
        predictor.predict(one, sampler, seed=i)
        best = min(best, time.perf_counter() - t0)
    return best


# The gains over copying each preset is held to (a preset without one is measured, not judged).
TARGETS = {"cpu": {"psnr": 1.0, "psnr_moving": 3.0}, "cpu-world": {"psnr": 3.0, "psnr_moving": 6.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--points", type=float, nargs="+", default=[1, 2, 4, 7, 10, 15, 20], help="minutes at which to score")
    ap.add_argument("--curve_pairs", type=int, default=256)
    ap.add_argument("--sampler_pairs", type=int, default=64)
    ap.add_argument("--rollout_starts", type=int, default=8, help="rollout starts per test episode (world models)")
    ap.add_argument("--regression", action="store_true", help="also train and score the same-budget regression U-Net")
    ap.add_argument("--run_dir", default=None)
    a = ap.parse_args()
    points = sorted({p for p in a.points if p < a.minutes} | {a.minutes})
    run_dir = Path(a.run_dir or data_dir() / "checkpoints" / f"bench-quality-{a.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = "" if a.preset == "cpu" else f"-{a.preset}"
    base = preset(a.preset)
    sampler = base.sampler  # the preset's default
    label = sampler.label(base.diffusion.timesteps)
    cache = build_pairs(base.data)
    res = {"machine": machine(), "preset": a.preset, "config": base.to_dict(), "run_dir": str(run_dir),
           "default_sampler": label, "curve": [], "curve_pairs": a.curve_pairs}

    # 1. time to quality
    trained = 0.0
    for p in points:
        cfg = with_overrides(base, train={"checkpoint_dir": str(run_dir), "max_minutes": p - trained})
        r = Trainer(cfg, resume="latest" if trained else None).fit()
        trained += r.seconds / 60
        pred = load_predictor(run_dir / "latest.pt")
        ev = evaluate(pred, cache, "test", sampler, max_pairs=a.curve_pairs, progress=False, mean_of=0, x0=False,
                      shuffled=False)
        row = {"minutes": trained, "steps": r.optimizer_steps, "model": scores(ev, "diffusion"), "copy": scores(ev, "copy")}
        res["curve"].append(row)
        print(f"{trained:5.1f} min, {r.optimizer_steps:5d} optimizer steps: model {row['model']['psnr']:.2f} dB "
              f"(moving {row['model']['psnr_moving']:.2f}), copy {row['copy']['psnr']:.2f} ({row['copy']['psnr_moving']:.2f})",
              flush=True)
        if not r.stopped_early:
            break  # the preset's epochs ran out first
    res["training_minutes"], res["training_steps"] = trained, res["curve"][-1]["steps"]
    pred = load_predictor(run_dir / "latest.pt")
    reg = None
    if a.regression:
        reg_dir = run_dir.with_name(run_dir.name + "-regression")
        rr = Trainer(with_overrides(base, train={"checkpoint_dir": str(reg_dir), "max_minutes": trained,
                                                 "objective": "regression"})).fit()
        res["regression"] = {"run_dir": str(reg_dir), "minutes": rr.seconds / 60, "steps": rr.optimizer_steps}
        reg = load_predictor(reg_dir / "latest.pt")

    # 2. the final model on every test pair
    full = evaluate(pred, cache, "test", sampler, regression=reg, progress=True, mean_of=0)
    res["final"] = {"pairs": full["pairs"], "methods": full["methods"], "model": scores(full, "diffusion"),
                    "copy": scores(full, "copy"), "per_task": full["per_task"]}
    gain = {k: res["final"]["model"][k] - res["final"]["copy"][k] for k in ("psnr", "psnr_moving")}
    res["final"]["gain_db"] = gain
    want = TARGETS.get(a.preset)
    res["target1_met"] = all(gain[k] >= want[k] for k in want) if want else None
    m = full["methods"]
    if "diffusion_shuffled_actions" in m:
        res["final"]["delta_psnr_moving"] = m["diffusion"]["psnr_moving"] - m["diffusion_shuffled_actions"]["psnr_moving"]
        res["delta_psnr_met"] = res["final"]["delta_psnr_moving"] >= 2
        res["rollout"] = mean_rollouts(pred, cache, "test", a.rollout_starts)
    # The mean of 4 samples costs 4 more: on the curve's pairs only.
    ev = evaluate(pred, cache, "test", sampler, max_pairs=a.curve_pairs, progress=False, mean_of=4, x0=False, shuffled=False)
    res["mean_of_4"] = {"pairs": ev["pairs"], "diffusion": ev["methods"]["diffusion"], "diffusion_mean": ev["methods"]["diffusion_mean"],
                        "copy": ev["methods"]["copy"]}
    write_json(f"quality{suffix}.json", res)  # what is measured so far, in case the sampler sweep is cut short
    if reg is not None:
        res["vs_regression_met"] = (m["diffusion"]["psnr_moving"] >= m["regression"]["psnr_moving"] - 1
                                    and abs(1 - m["diffusion"]["sharpness_moving"]) < abs(1 - m["regression"]["sharpness_moving"]))

    # 3. samplers against DDPM-1000
    one = pred.inputs(cache, cache.select("test", 1))
    res["samplers"] = {}
    for s in SAMPLERS:
        ev = evaluate(pred, cache, "test", s, max_pairs=a.sampler_pairs, progress=False, mean_of=0, x0=False, shuffled=False)
        key = s.label(pred.model.diffusion.T).lower()
        res["samplers"][key] = scores(ev, "diffusion") | {"network_calls": pred.model.network_calls(s),
                                                            "seconds_per_frame": seconds_per_frame(pred, one, s)}
        print(key, res["samplers"][key], flush=True)
    ddpm = res["samplers"]["ddpm-1000"]
    for r in res["samplers"].values():
        r["gap_to_ddpm_db"] = {k: r[k] - ddpm[k] for k in ("psnr", "psnr_moving")}
        r["speedup_vs_ddpm"] = ddpm["seconds_per_frame"] / r["seconds_per_frame"]
    res["target2_met_by"] = [k for k, r in res["samplers"].items() if r["network_calls"] <= 10
                             and min(r["gap_to_ddpm_db"].values()) >= -0.5 and r["seconds_per_frame"] <= 0.2
                             and r["speedup_vs_ddpm"] >= 50]

    with atomic_path(RESULTS / f"time_to_quality{suffix}.png") as tmp:
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
    if want:
        print("met" if res["target1_met"] else "NOT met", f"(needs +{want['psnr']:g} dB and +{want['psnr_moving']:g} dB moving)")
    else:
        print(f"(no target for the {a.preset} preset: measured only)")
    print(format_table(full))
    mo = res["mean_of_4"]
    print(f"on {mo['pairs']} of them, one sample against the mean of 4: PSNR {mo['diffusion']['psnr']:.2f} / "
          f"{mo['diffusion_mean']['psnr']:.2f}, moving {mo['diffusion']['psnr_moving']:.2f} / {mo['diffusion_mean']['psnr_moving']:.2f}, "
          f"sharpness {mo['diffusion']['sharpness_moving']:.2f} / {mo['diffusion_mean']['sharpness_moving']:.2f}")
    if "rollout" in res:
        ro = res["rollout"]
        print(f"ΔPSNR (true - shuffled actions, moving): {res['final']['delta_psnr_moving']:.2f} dB")
        print(f"\n{ro['rollouts']} rollouts of {ro['horizon']} steps on the recorded actions (mean PSNR per step):")
        print(table([{"step": i + 1, "model": round(p, 2), "hold_start": round(h, 2)}
                     for i, (p, h) in enumerate(zip(ro["psnr"], ro["hold_psnr"], strict=True))], ["step", "model", "hold_start"]))
        print("beats holding the start frame at every step:", ro["beats_hold_every_step"])
    print(f"\nTarget 2: samplers on {a.sampler_pairs} test pairs; time at batch 1:")
    print(table([{"sampler": k, "calls": r["network_calls"], "psnr": round(r["psnr"], 2),
                  "psnr_moving": round(r["psnr_moving"], 2), "gap_db": round(r["gap_to_ddpm_db"]["psnr"], 2),
                  "gap_moving_db": round(r["gap_to_ddpm_db"]["psnr_moving"], 2),
                  "s_per_frame": round(r["seconds_per_frame"], 3), "x_vs_ddpm": round(r["speedup_vs_ddpm"], 1)}
                 for k, r in res["samplers"].items()],
                ["sampler", "calls", "psnr", "psnr_moving", "gap_db", "gap_moving_db", "s_per_frame", "x_vs_ddpm"]))
    print("met by", res["target2_met_by"] if res["target2_met_by"] else "NOT met")
    if reg is not None:
        print("a sample within 1 dB of the regression on the moving pixels, and sharper:", res["vs_regression_met"])
    if "delta_psnr_met" in res:
        print("ΔPSNR >= 2 dB:", res["delta_psnr_met"], "| rollouts beat holding the start frame at every step:",
              res["rollout"]["beats_hold_every_step"])
    print("wrote", write_json(f"quality{suffix}.json", res), "and", RESULTS / f"time_to_quality{suffix}.png")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
