"""Which recipe learns fastest on a CPU: short training runs of the `cpu` preset, one change at a time.

    python bench/ablation.py [VARIANT ...] [--minutes 5] [--pairs 192]

Each variant trains the cpu preset for --minutes of wall time from scratch (same data, same
seed), then scores its EMA weights with DDIM-10 and DDIM-3 (and its raw weights with DDIM-10) on
--pairs test pairs spread over the test episodes, beside copy-the-current-frame. Results are merged into
bench/results/ablation.json (one entry per variant, so variants can be run a few at a time)
and the whole table is printed. With no VARIANT, runs them all (about 6 minutes each here).
The cpu preset's diffusion defaults were chosen from this table; notebook 03 shows it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_json  # noqa: E402

from kitchen_lib.config import preset, with_overrides  # noqa: E402
from kitchen_lib.diffusion import SamplerConfig  # noqa: E402
from kitchen_lib.evaluate import evaluate  # noqa: E402
from kitchen_lib.inference import load_predictor  # noqa: E402
from kitchen_lib.pairs import build_pairs  # noqa: E402
from kitchen_lib.train import Trainer  # noqa: E402

ORIGINAL = {"prediction": "eps", "schedule": "linear", "residual": False, "loss_weighting": "none"}
RESIDUAL_X0 = {"prediction": "x0", "schedule": "cosine", "residual": True, "loss_weighting": "none"}
# name -> (diffusion, model, train) overrides of the cpu preset
VARIANTS: dict[str, tuple[dict, dict, dict]] = {
    "original (eps, linear)": (ORIGINAL, {"zero_init": False}, {}),
    "residual, v, cosine, min-SNR": (RESIDUAL_X0 | {"prediction": "v", "loss_weighting": "min_snr"}, {"zero_init": False}, {}),
    "residual, x0, cosine": (RESIDUAL_X0, {"zero_init": False}, {}),
    "residual, x0, cosine, min-SNR": (RESIDUAL_X0 | {"loss_weighting": "min_snr"}, {"zero_init": False}, {}),
    "residual, x0, cosine, zero-init": (RESIDUAL_X0, {"zero_init": True}, {}),
    "  + lr 1e-3": (RESIDUAL_X0, {"zero_init": True}, {"learning_rate": 1e-3}),
    "  + batch 16": (RESIDUAL_X0, {"zero_init": True}, {"batch_size": 16}),
    "  + no dropout": (RESIDUAL_X0, {"zero_init": True, "dropout": 0.0}, {}),
    "  + EMA 0.998": (RESIDUAL_X0, {"zero_init": True}, {"ema_decay": 0.998}),
}


def psnrs(result: dict, method: str) -> dict:
    return {k: result["methods"][method][k] for k in ("psnr", "psnr_moving")}


def run(name: str, minutes: float, pairs: int) -> dict:
    diffusion, model, train = VARIANTS[name]
    ckpt = Path(tempfile.mkdtemp(prefix="ablation-"))
    try:
        cfg = with_overrides(preset("cpu"), diffusion=diffusion, model=model,
                             train={"max_minutes": minutes, "checkpoint_dir": str(ckpt), "log_images": False,
                                    "tensorboard_dir": str(ckpt / "tb"), **train})
        r = Trainer(cfg, progress=False).fit()
        pred = load_predictor(ckpt / "latest.pt")
        cache = build_pairs(cfg.data, progress=False)
        out = {"minutes": minutes, "steps": r.optimizer_steps, "samples_per_s": r.samples_per_second,
               "overrides": {"diffusion": diffusion, "model": model, "train": train}}
        for steps in (10, 3):
            ev = evaluate(pred, cache, "test", SamplerConfig("ddim", steps), max_pairs=pairs, progress=False)
            out[f"ddim{steps}"] = psnrs(ev, "diffusion")
        out["copy"] = psnrs(ev, "copy")
        # The raw (non-EMA) weights too: in a short run the EMA may still lag behind them.
        ev = evaluate(load_predictor(ckpt / "latest.pt", ema=False), cache, "test", SamplerConfig("ddim", 10), max_pairs=pairs,
                      progress=False)
        out["raw_ddim10"] = psnrs(ev, "diffusion")
        return out
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", help=f"any of: {', '.join(repr(v) for v in VARIANTS)}")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--pairs", type=int, default=192)
    a = ap.parse_args()
    unknown = [v for v in a.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    path = RESULTS / "ablation.json"
    res = json.loads(path.read_text()) if path.exists() else {"variants": {}}
    res["machine"] = machine()
    for name in a.variants or VARIANTS:
        res["variants"][name] = run(name, a.minutes, a.pairs)
        write_json("ablation.json", res)  # after each variant: an interrupted sweep keeps what it measured
        print(name, json.dumps(res["variants"][name]), flush=True)
    rows = [{"variant": n, "steps": v["steps"], "samples_per_s": round(v["samples_per_s"], 1),
             "ddim10_psnr": round(v["ddim10"]["psnr"], 2), "ddim10_moving": round(v["ddim10"]["psnr_moving"], 2),
             "ddim3_psnr": round(v["ddim3"]["psnr"], 2), "ddim3_moving": round(v["ddim3"]["psnr_moving"], 2),
             "raw_ddim10_psnr": round(v["raw_ddim10"]["psnr"], 2) if "raw_ddim10" in v else "",
             "raw_ddim10_moving": round(v["raw_ddim10"]["psnr_moving"], 2) if "raw_ddim10" in v else "",
             "copy_psnr": round(v["copy"]["psnr"], 2), "copy_moving": round(v["copy"]["psnr_moving"], 2)}
            for n, v in res["variants"].items()]
    print(table(rows, list(rows[0])))
    print("wrote", path)


if __name__ == "__main__":
    main()
