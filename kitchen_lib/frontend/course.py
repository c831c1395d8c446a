"""What the notebooks share: smoke mode, and the trained model a notebook shows."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kitchen_lib.data.generate import ensure_dataset
from kitchen_lib.training.checkpoint import load_checkpoint
from kitchen_lib.training.config import preset, with_overrides
from kitchen_lib.training.runs import find_checkpoint, regression_beside
from kitchen_lib.training.trainer import train


def smoke_mode() -> bool:
    """`KITCHEN_SMOKE=1` makes every notebook run in about a minute (tiny data)."""
    return os.environ.get("KITCHEN_SMOKE", "").strip().lower() not in ("", "0", "false", "no")


def ensure_trained(preset_name: str, smoke: bool, objectives: tuple[str, ...] = ("diffusion",),
                   checkpoint: str | Path | None = None) -> Path:
    """The model a notebook shows: `checkpoint` if given, else the newest run of the preset, at
    its last weights (latest.pt: a run stopped by its time budget trains on after its best.pt).

    In smoke mode a missing model is trained on the spot (seconds), with a regression twin if
    asked for; otherwise a missing model is an error that says how to train one."""
    if checkpoint is not None:
        return Path(checkpoint)
    found = find_checkpoint(preset_name)
    if found is not None:  # a run of an older recipe in the preset's folder is not shown as today's
        from kitchen_lib.frontend.quickstart import same_recipe

        same_recipe(preset(preset_name), found, load_checkpoint(found)["config"])
    twins = found is not None and all(o == "diffusion" or regression_beside(found) for o in objectives)
    if twins or (found is not None and not smoke):  # outside smoke mode a missing twin is shown as missing
        return last_weights(found)
    if not smoke:
        raise FileNotFoundError(f"no trained {preset_name} model yet: {train_command(preset_name)}")
    cfg = preset(preset_name)
    ensure_dataset(cfg.data.dataset, cfg.generate, progress=False)
    run = cfg.root() / "checkpoints" / f"notebook-{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for objective in objectives:
        folder = run if objective == "diffusion" else run.with_name(f"{run.name}-{objective}")
        train(with_overrides(cfg, train={"checkpoint_dir": str(folder), "objective": objective, "log_images": False}),
              progress=False)
    return last_weights(run / "best.pt")


def train_command(preset_name: str) -> str:
    """What trains the preset's model the notebooks look for."""
    from kitchen_lib.frontend.quickstart import PRESETS as QUICKSTART

    if preset_name in QUICKSTART:
        return (f"run `python -m kitchen_lib quickstart` (it trains {' and '.join(QUICKSTART)}), or only this one with "
                f"`python -m kitchen_lib train --preset {preset_name}`")
    return f"run `python -m kitchen_lib train --preset {preset_name}`"


def last_weights(checkpoint: Path) -> Path:
    """A run's latest.pt beside `checkpoint` if there is one, else `checkpoint`."""
    latest = checkpoint.parent / "latest.pt"
    return latest if latest.is_file() else checkpoint
