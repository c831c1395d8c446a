"""The main job in one call: our offline dataset (if missing), its frame pairs, a trained model,
and a grid of its predictions on held-out episodes. Steps already done are reused."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kitchen_lib.base.images import save_png
from kitchen_lib.data.cache_builder import build_pairs
from kitchen_lib.data.datasets import is_local
from kitchen_lib.data.generate import generate_dataset
from kitchen_lib.inference.baselines import copy_baseline
from kitchen_lib.inference.predictor import load_predictor, prediction_grid
from kitchen_lib.training.config import preset
from kitchen_lib.training.runs import resume_candidates, saved_checkpoints
from kitchen_lib.training.trainer import train


def format_pairs_summary(s: dict) -> str:
    p = s["pairs"]
    return (f"{s['dataset']}: k={s['k']}, {s['size']}px x{s['channels']}, pairs train/val/test "
            f"{p['train']}/{p['val']}/{p['test']}, cache {s['cache']} ({s['seconds']}s)")


def quickstart(preset_name: str = "cpu", log: Callable[[str], None] = print) -> Path:
    """Dataset, pairs, training (unless the preset's run folder already holds one), sample grid.
    Returns the grid's path."""
    cfg = preset(preset_name)
    dataset = cfg.data.dataset
    log(f"== 1/4 dataset {dataset}")
    if is_local(dataset):
        log("already in the Minari store")
    else:
        g = cfg.generate
        report = generate_dataset(dataset, episodes=g.episodes, seed=g.seed, max_steps=g.max_steps)
        log(f"wrote {dataset}: {report.episodes} episodes, {report.steps} steps in {report.seconds:.0f}s")
    log(f"== 2/4 frame pairs (k={cfg.data.k}, {cfg.data.size}px)")
    t0 = time.time()
    cache = build_pairs(cfg.data, root=cfg.root() / "pairs", progress=True)
    log(format_pairs_summary(cache.summary() | {"seconds": round(time.time() - t0, 2)}))
    base = copy_baseline(cache, "test")
    log(f"copy-the-current-frame baseline on the test episodes: PSNR {base['psnr']:.2f} dB, "
        f"{base['changed_fraction']:.1%} of pixels change by > 0.05")
    ckpt = cfg.checkpoint_dir()
    log(f"== 3/4 train (preset {preset_name}) into {ckpt}")
    if saved_checkpoints(ckpt):
        log(f"a run is already there: using it (resume it with `python -m kitchen_lib train --preset {preset_name} "
            f"--resume_from_checkpoint latest`, or delete the folder to start over)")
    else:
        r = train(cfg)
        log(f"{r.optimizer_steps} optimizer steps in {r.seconds / 60:.1f} min, validation loss {r.final_val_loss:.5f}; "
            f"TensorBoard: tensorboard --logdir {r.tensorboard_dir.parent}")
    log("== 4/4 sample predictions on the test episodes")
    predictor = load_predictor(ckpt / "best.pt" if (ckpt / "best.pt").exists() else resume_candidates(ckpt)[0])
    t0 = time.time()
    grid = prediction_grid(predictor, cache, "test", n=6, progress=True)
    out = save_png(grid, cfg.root() / "samples" / f"quickstart_{preset_name}.png", scale=2)
    label = predictor.sampler.label(predictor.model.diffusion.T)
    log(f"wrote {out}: rows of current | predicted ({label}) | actual ({(time.time() - t0) / 6:.2f}s per frame)")
    log("next, the course: jupyter lab notebooks/")
    return out
