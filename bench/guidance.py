"""Classifier-free guidance on the actions: what each scale w buys in action-following, and costs.

    python bench/guidance.py [--checkpoint data/checkpoints/cpu-world/latest.pt] [--scales 1 1.5 2 3]
                             [--pairs 256] [--dataset ID] [--part ID] [--tag NAME] [--seed 0]

For each guidance scale w, on --pairs pairs spread over the test split (held-out episodes) of
the model's dataset (or --dataset's), one sample of the run's own sampler with guidance w: PSNR
on the full frame and on the moving pixels, each over copying the current frame; the same with
each pair's actions swapped for another pair's (kitchen_lib.data.examples.shuffled_actions);
ΔPSNR moving, true minus shuffled (how much the prediction follows the actions); seconds a frame
in batches of 64 and at batch 1 (how the drive demo predicts). The scores are `evaluate`'s.

w = 1 is the plain sampler and runs on any world model; w != 1 needs one trained with
--action_dropout. Guidance is adopted where it raises ΔPSNR moving by at least 1 dB for at most
0.3 dB of true-action PSNR, within 0.1 s a frame (docs/results.md). Prints a table, writes
bench/results/guidance-<run>.json (<run>: the checkpoint's folder).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, write_json  # noqa: E402
from samplers import seconds_per_frame  # noqa: E402

from kitchen_lib.base.errors import UserError  # noqa: E402
from kitchen_lib.base.paths import data_dir  # noqa: E402
from kitchen_lib.data.cache import PairsCache  # noqa: E402
from kitchen_lib.inference.evaluate import evaluate  # noqa: E402
from kitchen_lib.inference.predictor import Predictor, load_predictor, pairs_for  # noqa: E402
from kitchen_lib.training.runs import default_run_dir  # noqa: E402

COLUMNS = ["w", "passes", "psnr", "psnr_moving", "gain", "gain_moving", "shuffled_moving", "delta_moving",
           "s_per_frame", "s_per_frame_b1"]


def guidance_curve(predictor: Predictor, cache: PairsCache, scales: list[float], pairs: int | None,
                   seed: int = 0, batch1: bool = True, progress: bool = True, part: str | None = None) -> dict:
    """The scores at every guidance scale (the JSON's "scales", keyed by w as written) and copy's,
    on the test pairs of the cache (of its joined dataset `part` if given)."""
    from tqdm.auto import tqdm

    if not predictor.conditioning.actions:
        raise UserError("guidance is on the actions: give an action-conditioned model (e.g. cpu-world)")
    samplers = {f"{w:g}": replace(predictor.sampler, guidance=w) for w in scales}
    for s in samplers.values():  # every scale checked before the first is measured
        predictor.model.check_sampler(s)
    one = predictor.inputs(cache, cache.select("test", 1, dataset=part)) if batch1 else None
    out, copy = {}, None
    for key, s in tqdm(samplers.items(), desc="guidance scales", disable=not progress):
        ev = evaluate(predictor, cache, "test", s, max_pairs=pairs, seed=seed, mean_of=0, x0=False, shuffled=True,
                      progress=progress, part=part)
        m, shuffled, copy = (ev["methods"][k] for k in ("diffusion", "diffusion_shuffled_actions", "copy"))
        out[key] = {
            "guidance": s.guidance, "network_calls": ev["sampling_steps"], "label": s.label(predictor.model.diffusion.T),
            "psnr": m["psnr"], "psnr_moving": m["psnr_moving"], "sharpness_moving": m["sharpness_moving"],
            "gain": m["psnr"] - copy["psnr"], "gain_moving": m["psnr_moving"] - copy["psnr_moving"],
            "shuffled_psnr": shuffled["psnr"], "shuffled_psnr_moving": shuffled["psnr_moving"],
            "delta_psnr_moving": m["psnr_moving"] - shuffled["psnr_moving"],
            "seconds_per_frame": m["seconds_per_frame"],
            "seconds_per_frame_batch1": seconds_per_frame(predictor, one, s) if batch1 else None,
            "pairs": ev["pairs"], "dataset": ev["dataset"]}
    return {"scales": out, "copy": copy}


def rows(curve: dict) -> list[dict]:
    """The table's rows, one a scale."""
    r2 = lambda x: "" if x is None else round(x, 2)  # noqa: E731
    return [{"w": key, "passes": e["network_calls"], "psnr": r2(e["psnr"]), "psnr_moving": r2(e["psnr_moving"]),
             "gain": r2(e["gain"]), "gain_moving": r2(e["gain_moving"]), "shuffled_moving": r2(e["shuffled_psnr_moving"]),
             "delta_moving": r2(e["delta_psnr_moving"]), "s_per_frame": round(e["seconds_per_frame"], 4),
             "s_per_frame_b1": "" if e["seconds_per_frame_batch1"] is None else round(e["seconds_per_frame_batch1"], 4)}
            for key, e in curve["scales"].items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = default_run_dir("cpu-world", "diffusion", data_dir()) / "latest.pt"
    ap.add_argument("--checkpoint", default=str(default), help=f"default: the cpu-world run's, {default}")
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 1.5, 2, 3], help="guidance scales w")
    ap.add_argument("--pairs", type=int, default=256, help="test pairs, spread over the held-out episodes")
    ap.add_argument("--dataset", default=None, help="score on this dataset's test episodes (default: the model's)")
    ap.add_argument("--part", default=None, metavar="ID", help="only the test episodes of this one of joined datasets")
    ap.add_argument("--tag", default=None, help="writes guidance-TAG.json (default: the checkpoint's folder)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        pred = load_predictor(a.checkpoint)
        cache = pairs_for(pred, a.dataset)
        curve = guidance_curve(pred, cache, a.scales, a.pairs, a.seed, part=a.part)
    except UserError as e:
        sys.exit(f"error: {e}")
    first = next(iter(curve["scales"].values()))
    res = {"machine": machine(), "checkpoint": a.checkpoint, "dataset": first["dataset"], "split": "test",
           "pairs": first["pairs"], "sampler": pred.sampler.label(pred.model.diffusion.T),
           "action_dropout": pred.conditioning.action_dropout, **curve}
    print(f"\n{a.checkpoint}: {res['pairs']} test pairs of {res['dataset']}, {res['sampler']} with guidance w "
          f"(gain: over copying the current frame, dB; delta: true minus shuffled actions, moving pixels; "
          f"seconds a frame in batches of 64 and at batch 1). Copy: {curve['copy']['psnr']:.2f} / "
          f"{curve['copy']['psnr_moving']:.2f} dB")
    print(table(rows(curve), COLUMNS))
    name = a.tag or Path(a.checkpoint).resolve().parent.name
    print("wrote", write_json(f"guidance-{name}.json", res))


if __name__ == "__main__":
    main()
