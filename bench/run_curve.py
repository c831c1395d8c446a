"""Time to quality of a finished run, from the checkpoints it kept: no training, a minute of scoring.

    python bench/run_curve.py --run_dir data/checkpoints/cpu-world [--pairs 256] [--name cpu-world]

Each `epoch_NNNN.pt` and `latest.pt` of the run (EMA weights) is scored with the run's default
sampler on --pairs test pairs spread over the test episodes (the same pairs for every
checkpoint), beside copying the current frame; the minutes are the training time each
checkpoint records (`train_seconds`). The README's curve is quickstart's `cpu-world` run.
(bench/quality.py measures a denser curve by training in segments.)

Prints a table, writes bench/results/run_curve-<name>.json and time_to_quality-<name>-run.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_json  # noqa: E402

from kitchen_lib.base.paths import atomic_path  # noqa: E402
from kitchen_lib.inference.evaluate import evaluate, plot_time_to_quality  # noqa: E402
from kitchen_lib.inference.predictor import load_predictor, pairs_for  # noqa: E402
from kitchen_lib.training.checkpoint import load_checkpoint  # noqa: E402


def scores(ev: dict, method: str) -> dict:
    m = ev["methods"][method]
    return {"psnr": m["psnr"], "psnr_moving": m["psnr_moving"], "ssim": m["ssim"], "sharpness_moving": m["sharpness_moving"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run_dir", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--name", default=None, help="names the output files (default: the run's preset)")
    a = ap.parse_args()
    paths = sorted(a.run_dir.glob("epoch_*.pt")) + [a.run_dir / "latest.pt"]
    if not paths[-1].exists():
        sys.exit(f"no latest.pt in {a.run_dir}: give the folder of a trained run")
    curve, seen = [], set()
    for path in paths:
        state = load_checkpoint(path)
        if state["step"] in seen or "train_seconds" not in state:
            continue  # latest.pt written at an epoch's end, or a checkpoint from before they recorded their time
        seen.add(state["step"])
        pred = load_predictor(path)
        cache = pairs_for(pred)
        ev = evaluate(pred, cache, "test", None, max_pairs=a.pairs, progress=False, mean_of=0, x0=False, shuffled=False)
        curve.append({"checkpoint": path.name, "minutes": state["train_seconds"] / 60, "steps": int(state["step"]),
                      "model": scores(ev, "diffusion"), "copy": scores(ev, "copy")})
        print(f"{path.name}: {curve[-1]['minutes']:.1f} min, {curve[-1]['steps']} steps, "
              f"{curve[-1]['model']['psnr']:.2f} / {curve[-1]['model']['psnr_moving']:.2f} dB", flush=True)
    cfg = pred.config
    name = a.name or cfg.preset
    res = {"machine": machine(), "preset": cfg.preset, "run_dir": str(a.run_dir), "curve_pairs": ev["pairs"],
           "default_sampler": cfg.sampler.label(cfg.diffusion.timesteps), "config": cfg.to_dict(), "curve": curve}
    out = write_json(f"run_curve-{name}.json", res)
    with atomic_path(RESULTS / f"time_to_quality-{name}-run.png") as tmp:
        plot_time_to_quality(res).savefig(tmp, dpi=100, bbox_inches="tight")
    print(f"\n{ev['pairs']} test pairs, {res['default_sampler']}:")
    print(table([{"checkpoint": c["checkpoint"], "minutes": f"{c['minutes']:.1f}", "steps": c["steps"],
                  "over_copy": f"{c['model']['psnr'] - c['copy']['psnr']:+.2f}",
                  "over_copy_moving": f"{c['model']['psnr_moving'] - c['copy']['psnr_moving']:+.2f}"} for c in curve],
                ["checkpoint", "minutes", "steps", "over_copy", "over_copy_moving"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
