"""How fast the kitchen can be driven: dream frames a second of `Drive.step` and of the DriveDemo widget.

    python bench/drive.py [--checkpoint data/checkpoints/cpu-drive/latest.pt] [--steps 40] [--warmup 3]

Loads a world model (default: the cpu-drive run in its default folder, the model notebook 09 drives) with
the sampler its run chose, and drives the real env and the dream from the env's start state (seed 0)
through a fixed cycle of hand commands, --steps steps after --warmup. Measures, per frame:

- the dream alone: the model's prediction inside `Drive.step` (what a GPU-less world model costs);
- the whole `Drive.step`: the controller, k env steps, rendering the real frame, the dream;
- the widget's round trip: `button.click()` on a DriveDemo headless, until its three images, the
  PSNR strip and the info line are updated (the PNG encoding included; a browser adds its own
  drawing and the websocket on top).

The target is at least 10 dream frames a second at 64x64 on the 2-core CPU. Prints a table (median and
mean ms, frames a second from the median), writes bench/results/drive.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.inference.drive import Drive  # noqa: E402
from kitchen_lib.inference.predictor import load_predictor  # noqa: E402
from kitchen_lib.training.config import preset  # noqa: E402

TARGET_FPS = 10.0
# Out and back along each axis, a turn and back, the gripper: the hand stays near its start.
CYCLE = ("x+", "x+", "x-", "x-", "y+", "y-", "z-", "z+", "rz+", "rz-", "close", "open")


def row(what: str, seconds: list[float]) -> dict:
    med, mean = float(np.median(seconds)), float(np.mean(seconds))
    return {"what": what, "frames": len(seconds), "ms_median": round(med * 1000, 1), "ms_mean": round(mean * 1000, 1),
            "frames_per_s": round(1 / med, 1), "meets_10_per_s": 1 / med >= TARGET_FPS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the cpu-drive run's latest.pt in its default folder")
    ap.add_argument("--steps", type=int, default=40, help="timed steps of each kind")
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    checkpoint = Path(a.checkpoint) if a.checkpoint else preset("cpu-drive").checkpoint_dir() / "latest.pt"
    if not checkpoint.is_file():
        sys.exit(f"no checkpoint at {checkpoint}: train it (`python -m kitchen_lib train --preset cpu-drive`, "
                 f"40 minutes), or pass --checkpoint (e.g. quickstart's cpu-world)")
    predictor = load_predictor(checkpoint)
    from kitchen_lib.frontend.drive_widget import DriveDemo

    commands = [CYCLE[i % len(CYCLE)] for i in range(a.warmup + a.steps)]
    with Drive(predictor, seed=0) as drive:
        steps = [drive.step(c) for c in commands][a.warmup :]
        dream = [s.dream_seconds for s in steps]
        whole = [s.seconds for s in steps]
        psnr = [s.psnr for s in steps]
        drive.reset(0)
        demo = DriveDemo(drive)
        clicks = []
        for i, c in enumerate(commands):
            t0 = time.perf_counter()
            demo.buttons[c].click()
            if i >= a.warmup:
                clicks.append(time.perf_counter() - t0)
        assert demo.drive.t == len(commands), "every click stepped the drive"
    size = predictor.config.data.size
    rows = [row("dream alone (the model, in Drive.step)", dream), row("Drive.step (controller, env, render, dream)", whole),
            row("DriveDemo click to updated images (headless)", clicks)]
    sampler = predictor.sampler.label(predictor.model.diffusion.T)
    print(f"\n{checkpoint}: {size}x{size}, {sampler}, {a.steps} steps after {a.warmup} warm-up, "
          f"target {TARGET_FPS:.0f} frames a second")
    print(table(rows, ["what", "frames", "ms_median", "ms_mean", "frames_per_s", "meets_10_per_s"]))
    print(f"dream vs real over the drive: PSNR {psnr[0]:.1f} dB at the first timed step, {psnr[-1]:.1f} at the last")
    res = {"machine": machine(), "checkpoint": str(checkpoint), "size": size, "sampler": sampler,
           "steps": a.steps, "warmup": a.warmup, "commands": list(CYCLE), "target_frames_per_s": TARGET_FPS,
           "rows": rows, "seconds": {"dream": dream, "step": whole, "widget": clicks}, "psnr": psnr}
    print("wrote", write_json("drive.json", res))


if __name__ == "__main__":
    main()
