"""Which sampler a trained model should use by default: quality, sharpness and time per sampler.

    python bench/samplers.py --checkpoint data/checkpoints/cpu-world/latest.pt [--pairs 256]
                             [--steps 1 2 3 4 5 10] [--mean_of 4] [--rollout_starts 4]

On --pairs test pairs spread over the test episodes of the offline dataset, scores one sample of
DDIM with each number of --steps (DDIM-1 is the network's one-step estimate from pure noise),
the mean of --mean_of samples of the fastest sampler that is sharper than DDIM-1, and the
same-conditioning regression baseline when one is found beside the checkpoint, all beside
copy-the-current-frame. Each sampler is also timed at batch 1 (best of 3) and, with
--rollout_starts, rolled out 10 steps from that many starts per test episode against holding
the start frame. The quality targets ask for <= 10 network calls and <= 0.2 s a frame.

PSNR rewards the conditional mean (a blur); the sharpness ratio on the moving pixels (1 is as
sharp as reality) shows what that costs. Prints a table, writes bench/results/samplers-<run>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.data.cache_builder import build_pairs  # noqa: E402
from kitchen_lib.inference.evaluate import evaluate, load_with_regression  # noqa: E402
from kitchen_lib.inference.rollout import mean_rollouts  # noqa: E402
from kitchen_lib.model.samplers import SamplerConfig  # noqa: E402


def seconds_per_frame(predictor, one: dict, sampler: SamplerConfig) -> float:
    """Batch of one (`one`: a pair's inputs), best of 3, after a warm-up."""
    predictor.predict(one, sampler)
    best = float("inf")
    for i in range(3):
        t0 = time.perf_counter()
        predictor.predict(one, sampler, seed=i)
        best = min(best, time.perf_counter() - t0)
    return best


def row(name: str, calls: int, m: dict, copy: dict, seconds: float | None) -> dict:
    return {"method": name, "calls": calls, "psnr": round(m["psnr"], 2), "psnr_moving": round(m["psnr_moving"], 2),
            "gain": round(m["psnr"] - copy["psnr"], 2), "gain_moving": round(m["psnr_moving"] - copy["psnr_moving"], 2),
            "sharpness": round(m["sharpness_moving"], 3),
            "s_per_frame": "" if seconds is None else round(seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4, 5, 10])
    ap.add_argument("--mean_of", type=int, default=4)
    ap.add_argument("--rollout_starts", type=int, default=0, help="rollout starts per test episode (0: no rollouts)")
    a = ap.parse_args()
    pred, reg = load_with_regression(a.checkpoint)
    cache = build_pairs(pred.config.data)
    one = pred.inputs(cache, cache.select("test", 1))
    res = {"machine": machine(), "checkpoint": a.checkpoint, "pairs": a.pairs, "samplers": {}}
    rows = []
    copy = None
    for steps in a.steps:
        s = SamplerConfig("ddim", steps)
        ev = evaluate(pred, cache, "test", s, regression=reg if steps == a.steps[0] else None, max_pairs=a.pairs,
                      mean_of=0, x0=False, shuffled=pred.conditioning.actions, progress=False)
        copy = ev["methods"]["copy"]
        entry = ev["methods"]["diffusion"] | {"network_calls": steps, "seconds_per_frame_batch1": seconds_per_frame(pred, one, s)}
        if "diffusion_shuffled_actions" in ev["methods"]:
            entry["delta_psnr_moving"] = entry["psnr_moving"] - ev["methods"]["diffusion_shuffled_actions"]["psnr_moving"]
        if a.rollout_starts:
            entry["rollout"] = mean_rollouts(pred, cache, "test", a.rollout_starts, sampler=s, progress=False)
        res["samplers"][f"ddim-{steps}"] = entry
        rows.append(row(f"DDIM-{steps}", steps, entry, copy, entry["seconds_per_frame_batch1"])
                    | {"delta_moving": round(entry.get("delta_psnr_moving", float("nan")), 2)})
        if "regression" in ev["methods"]:
            res["regression"] = ev["methods"]["regression"]
            res["copy"] = copy
        print(rows[-1], flush=True)
    ref = res["samplers"][f"ddim-{a.steps[0]}"]["sharpness_moving"]
    sharper = [st for st in a.steps if res["samplers"][f"ddim-{st}"]["sharpness_moving"] > ref + 0.05] or a.steps[-1:]
    if a.mean_of > 1:
        s = SamplerConfig("ddim", sharper[0])
        ev = evaluate(pred, cache, "test", s, max_pairs=a.pairs, mean_of=a.mean_of, x0=False, shuffled=False, progress=False)
        m = ev["methods"]["diffusion_mean"]
        res["mean"] = m | {"sampler": f"ddim-{sharper[0]}", "of": a.mean_of}
        rows.append(row(f"mean of {a.mean_of} DDIM-{sharper[0]}", a.mean_of * sharper[0], m, copy, None))
    if reg is not None:
        rows.append(row("regression (same conditioning)", 1, res["regression"], copy, None))
    rows.append(row("copy the current frame", 0, res.get("copy", copy), copy, None))
    if a.rollout_starts:
        res["rollout_hold_psnr"] = res["samplers"][f"ddim-{a.steps[0]}"]["rollout"]["hold_psnr"]
    cols = ["method", "calls", "psnr", "psnr_moving", "gain", "gain_moving", "sharpness", "s_per_frame", "delta_moving"]
    print(f"\n{a.checkpoint}: {a.pairs} test pairs (gain: over copying the current frame, dB; sharpness: moving pixels, "
          f"1 = as sharp as the truth; delta: true minus shuffled actions, moving; time at batch 1)")
    print(table(rows, cols))
    if a.rollout_starts:
        print("\nrollouts on the recorded actions, mean PSNR per step (10 steps of k):")
        rr = [{"sampler": k, "rollouts": v["rollout"]["rollouts"], **{f"{i + 1}": round(p, 1) for i, p in enumerate(v["rollout"]["psnr"])},
               "beats_hold": v["rollout"]["beats_hold_every_step"]} for k, v in res["samplers"].items()]
        rr.append({"sampler": "hold start", **{f"{i + 1}": round(p, 1) for i, p in enumerate(res["rollout_hold_psnr"])}})
        print(table(rr, ["sampler", "rollouts", *[str(i + 1) for i in range(10)], "beats_hold"]))
    name = Path(a.checkpoint).resolve().parent.name
    print("wrote", write_json(f"samplers-{name}.json", res))


if __name__ == "__main__":
    main()
