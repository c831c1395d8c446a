"""Where a model's error lies: on the moving pixels, beside them, or on the still kitchen.

    python bench/error_map.py [--checkpoints A.pt B.pt ...] [--pairs 256] [--part ID] [--near 4] [--tag NAME]

One sample of each model's default sampler on test pairs spread evenly over the split (the same
pairs and seeds for every model). Each pixel of each pair falls in one class, by how the true
frame changes over the k steps: "moving" (the largest channel change above evaluate's
threshold, 0.05 of the range), "changed a little" (above nothing, below the threshold),
"still, near motion" (unchanged, within --near pixels of a moving one) and "still, far"
(unchanged and further away). Per model (and copying the current frame) and class: the share of the pixels, the mean squared
error (on [0, 1] frames), its RMS in grey levels (0-255), and the share of the whole frame's
squared error it carries. Copying the current frame has no error on the still pixels, so what a
model loses there is what it costs the full-frame PSNR against copy. Prints a table and writes
bench/results/error_map[-TAG].json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.base.errors import UserError  # noqa: E402
from kitchen_lib.base.paths import data_dir  # noqa: E402
from kitchen_lib.inference.metrics import MOVING_THRESHOLD, moving_mask  # noqa: E402
from kitchen_lib.inference.predictor import Predictor, load_predictor, pairs_for  # noqa: E402
from kitchen_lib.training.runs import default_run_dir  # noqa: E402

CLASSES = ("moving", "changed a little", "still, near motion", "still, far")
COLUMNS = ["model", "pixels", "share of pixels", "mse", "rms (grey levels)", "share of the frame's error"]


def pixel_classes(current: np.ndarray, future: np.ndarray, near: int) -> dict[str, np.ndarray]:
    """(H, W) bool masks of one pair's pixels, one per class of CLASSES; together they cover the frame."""
    from scipy.ndimage import binary_dilation

    moving = moving_mask(current, future)
    still = np.all(current == future, axis=-1)
    beside = binary_dilation(moving, iterations=near) if near > 0 and moving.any() else np.zeros_like(moving)
    return {"moving": moving, "changed a little": ~moving & ~still, "still, near motion": still & beside,
            "still, far": still & ~beside}


def error_map(predictor: Predictor, pairs: int, part: str | None, near: int, batch: int = 64, copy: bool = False) -> dict:
    """Per class: pixels, mean squared error (frames on [0, 1]) and the share of all squared error
    (copy=True: of copying the current frame instead of the model's sample)."""
    cache = pairs_for(predictor)
    rows = cache.select("test", pairs, dataset=part)
    sums, counts = dict.fromkeys(CLASSES, 0.0), dict.fromkeys(CLASSES, 0)
    for i in range(0, len(rows), batch):
        inputs = predictor.inputs(cache, rows[i : i + batch])
        pred = (inputs["current"] if copy else predictor.predict(inputs, seed=i)).astype(np.float64) / 255
        future = inputs["future"].astype(np.float64) / 255
        err = ((pred - future) ** 2).mean(-1)  # (B, H, W)
        for j in range(len(pred)):
            for name, mask in pixel_classes(inputs["current"][j], inputs["future"][j], near).items():
                sums[name] += float(err[j][mask].sum())
                counts[name] += int(mask.sum())
    total, pixels = sum(sums.values()), sum(counts.values())
    return {"pairs": len(rows), "classes": {name: {"pixels": counts[name], "share_of_pixels": counts[name] / pixels,
                                                   "mse": sums[name] / max(counts[name], 1),
                                                   "share_of_error": sums[name] / total if total else 0.0}
                                            for name in CLASSES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = default_run_dir("cpu-world", "diffusion", data_dir()) / "latest.pt"
    ap.add_argument("--checkpoints", nargs="+", default=[str(default)], help=f"default: quickstart's cpu-world, {default}")
    ap.add_argument("--pairs", type=int, default=256, help="test pairs, evenly spread (default 256)")
    ap.add_argument("--part", default=None, help="only the test pairs of this one of the joined datasets")
    ap.add_argument("--near", type=int, default=4, help="pixels from a moving pixel that count as near it (default 4)")
    ap.add_argument("--tag", default=None, help="writes error_map-TAG.json")
    a = ap.parse_args()
    try:
        names = [Path(c).resolve().parent.name for c in a.checkpoints]
        preds = [load_predictor(c) for c in a.checkpoints]
        results = {name: error_map(p, a.pairs, a.part, a.near) for name, p in zip(names, preds, strict=True)}
        results["copy the frame"] = error_map(preds[0], a.pairs, a.part, a.near, copy=True)
    except (UserError, ValueError) as e:
        sys.exit(f"error: {e}")
    rows = [{"model": name, "pixels": cls, "share of pixels": f"{s['share_of_pixels']:.3f}", "mse": f"{s['mse']:.2e}",
             "rms (grey levels)": f"{np.sqrt(s['mse']) * 255:.2f}", "share of the frame's error": f"{s['share_of_error']:.3f}"}
            for name, r in results.items() for cls, s in r["classes"].items()]
    print(f"\none sample each on {next(iter(results.values()))['pairs']} test pairs; moving: change > {MOVING_THRESHOLD} "
          f"of the range, near: within {a.near} px of a moving pixel")
    print(table(rows, COLUMNS))
    name = f"error_map-{a.tag}" if a.tag else "error_map"
    print("wrote", write_json(f"{name}.json", {"machine": machine(), "checkpoints": a.checkpoints, "near": a.near,
                                                "part": a.part, "models": results}))


if __name__ == "__main__":
    main()
