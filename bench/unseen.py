"""Several world models scored on the same episodes, none of which any of them trained on.

    python bench/unseen.py --checkpoints A.pt B.pt ... --dataset ID1+ID2 --part ID2 --episodes 50 53 64 66
                           [--names a b ...] [--tag NAME]

Each exploration dataset is split into train/val/test on its own, so models trained on datasets
of different sizes (10, 40, 80, 160 episodes) hold out different episodes, and one model's test
episode may be another's training episode. This scores every model on chosen episodes of one
part of the joined `--dataset` (numbered within that part: `--episodes 50` is the part's episode
50), which the caller picks so that none of the models learnt from them (e.g. test episodes of the
largest dataset beyond the smaller ones' length). Each must be in the cache's test split. One
sample of each model's own sampler a pair through `kitchen_lib.inference.evaluate` (copy,
shuffled actions alike). Prints a table and writes bench/results/unseen[-TAG].json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.base.errors import UserError  # noqa: E402
from kitchen_lib.inference.evaluate import evaluate  # noqa: E402
from kitchen_lib.inference.predictor import load_predictor, pairs_for  # noqa: E402

COLUMNS = ["model", "pairs", "over_copy", "over_copy_moving", "delta_psnr_moving", "psnr", "psnr_moving"]


def episode_rows(cache, part: str, episodes: list[int]) -> np.ndarray:
    """(N, 2) test rows of the part's episodes `episodes` (numbered within the part)."""
    ours = set(cache.episodes_of(part))  # a part the cache does not hold is refused there
    index = {e["dataset_index"]: e["index"] for e in cache.meta["episodes"] if e["index"] in ours}
    missing = [e for e in episodes if e not in index]
    if missing:
        raise UserError(f"{part} has no episodes {missing} in this cache (it has 0..{max(index)})")
    test = cache.pairs("test")
    held = set(test[:, 0].tolist())
    not_test = [e for e in episodes if index[e] not in held]
    if not_test:
        raise UserError(f"episodes {not_test} of {part} are not in the cache's test split: choose held-out ones")
    return test[np.isin(test[:, 0], [index[e] for e in episodes])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--names", nargs="+", default=None, help="a name per checkpoint (default: its folder's)")
    ap.add_argument("--dataset", required=True, help="the joined datasets whose pairs cache holds the episodes")
    ap.add_argument("--part", required=True, help="the dataset of --dataset the episodes belong to")
    ap.add_argument("--episodes", nargs="+", type=int, required=True)
    ap.add_argument("--tag", default=None)
    a = ap.parse_args()
    names = a.names or [Path(c).parent.name for c in a.checkpoints]
    if len(names) != len(a.checkpoints):
        raise SystemExit("give one --names entry per checkpoint")
    results, rows_out = {}, []
    for name, ckpt in zip(names, a.checkpoints, strict=True):
        predictor = load_predictor(ckpt, device="cpu")
        cache = pairs_for(predictor, dataset=a.dataset)
        rows = episode_rows(cache, a.part, a.episodes)
        r = evaluate(predictor, cache, "test", mean_of=1, part=a.part, progress=False, rows=rows)
        m = r["methods"]
        d, c, s = m["diffusion"], m["copy"], m["diffusion_shuffled_actions"]
        rows_out.append({"model": name, "pairs": r["pairs"], "over_copy": f"{d['psnr'] - c['psnr']:+.2f}",
                         "over_copy_moving": f"{d['psnr_moving'] - c['psnr_moving']:+.2f}",
                         "delta_psnr_moving": f"{d['psnr_moving'] - s['psnr_moving']:.2f}",
                         "psnr": f"{d['psnr']:.2f}", "psnr_moving": f"{d['psnr_moving']:.2f}"})
        results[name] = {"checkpoint": str(ckpt), **r}
    print(f"{a.part}, episodes {a.episodes} (test split of {a.dataset}); copy "
          f"{m['copy']['psnr']:.2f} / {m['copy']['psnr_moving']:.2f} dB")
    print(table(rows_out, COLUMNS))
    out = write_json(f"unseen{'-' + a.tag if a.tag else ''}.json",
                     {"machine": machine(), "dataset": a.dataset, "part": a.part, "episodes": a.episodes,
                      "models": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
