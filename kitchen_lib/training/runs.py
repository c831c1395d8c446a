"""Where runs live: the folder rules for checkpoints, and which one a resume loads, in one place.

    <data dir>/checkpoints/<preset>                         a diffusion run of the CLI
    <data dir>/checkpoints/<preset>-regression              its regression baseline
    <data dir>/checkpoints/notebook[NN]-<preset>-<time>[...]  runs made by the notebooks

A run folder holds latest.pt (where to resume), best.pt (lowest validation loss),
epoch_NNNN.pt, and metrics.jsonl.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from kitchen_lib.base.paths import data_dir
from kitchen_lib.training.checkpoint import CheckpointError, load_checkpoint
from kitchen_lib.training.runlog import METRICS_FILE


def run_name(preset: str, objective: str = "diffusion") -> str:
    """The folder name of a preset's run: `cpu`, `cpu-regression`."""
    return preset if objective == "diffusion" else f"{preset}-{objective}"


def default_run_dir(preset: str, objective: str = "diffusion", root: Path | None = None) -> Path:
    return (root or data_dir()) / "checkpoints" / run_name(preset, objective)


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """'latest', 'best' or a path -> the checkpoint file."""
    if which in ("latest", "best"):
        return Path(run_dir) / f"{which}.pt"
    return Path(which)


def regression_beside(checkpoint: str | Path) -> Path | None:
    """data/checkpoints/cpu/best.pt -> data/checkpoints/cpu-regression/best.pt, if it exists."""
    p = Path(checkpoint)
    twin = p.parent.with_name(run_name(p.parent.name, "regression"))
    for name in (p.name, "best.pt", "latest.pt"):
        if (twin / name).is_file():
            return twin / name
    return None


def find_checkpoint(preset: str = "cpu", objective: str = "diffusion", root: Path | None = None) -> Path | None:
    """The newest best.pt of a preset's runs, by the CLI or the notebooks; None if there is none."""
    checkpoints = (root or data_dir()) / "checkpoints"
    notebook_run = re.compile(rf"notebook\d*-{re.escape(preset)}-\d{{8}}-\d{{6}}{re.escape(run_name('', objective))}")
    runs = [checkpoints / run_name(preset, objective)]
    runs += [p for p in checkpoints.glob("notebook*") if notebook_run.fullmatch(p.name)]
    found = [r / "best.pt" for r in runs if (r / "best.pt").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def saved_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a run folder holds (latest, best, epoch_*), in that order."""
    run_dir = Path(run_dir)
    named = [run_dir / n for n in ("latest.pt", "best.pt") if (run_dir / n).is_file()]
    return named + epoch_checkpoints(run_dir)


def epoch_checkpoints(run_dir: Path) -> list[Path]:
    """epoch_NNNN.pt files, oldest epoch first (a user's epoch_0003-keep.pt is not one)."""
    found = [p for p in Path(run_dir).glob("epoch_*.pt") if re.fullmatch(r"epoch_[0-9]+\.pt", p.name) and p.is_file()]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def resume_candidates(run_dir: Path) -> list[Path]:
    """Where "resume latest" looks, in order: latest.pt, the epoch_*.pt newest first, best.pt."""
    run_dir = Path(run_dir)
    return [p for p in [run_dir / "latest.pt", *reversed(epoch_checkpoints(run_dir)), run_dir / "best.pt"] if p.is_file()]


def checkpoints_to_replace(run_dir: Path, overwrite: bool) -> list[Path]:
    """The checkpoints a fresh run in `run_dir` would replace: refused unless `overwrite` (the
    caller deletes them only once its own run is ready to start)."""
    held = saved_checkpoints(run_dir)
    if held and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a run ({', '.join(p.name for p in held)}); resume it with "
            f"--resume_from_checkpoint latest, start over with --overwrite, or choose another --checkpoint_dir. "
            f"Nothing was overwritten.")
    return held


def make_room(run_dir: Path, held: list[Path], fresh: bool) -> None:
    """What a run does to its folder once it is ready to start: delete the checkpoints it replaces
    (`checkpoints_to_replace`, --overwrite) and, if fresh, keep an old run's (or a killed one's)
    metrics.jsonl aside as metrics-before-<time>.jsonl."""
    for p in held:
        p.unlink()
    metrics = Path(run_dir) / METRICS_FILE
    if fresh and metrics.exists():
        metrics.rename(Path(run_dir) / f"metrics-before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")


def load_resumable(run_dir: Path, resume: str) -> tuple[Path, dict]:
    """The checkpoint to resume, loaded: a path or "best" as asked; "latest" falls back to the
    newest epoch_*.pt, then best.pt, if latest.pt is missing or unreadable (and says so)."""
    if resume != "latest":
        path = resolve_checkpoint(run_dir, resume)
        return path, load_checkpoint(path)
    tried = []
    for path in resume_candidates(run_dir):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            tried.append(f"{path.name}: {str(e).split(':', 1)[-1].strip()[:120]}")
            continue
        if tried:
            print(f"resuming from {path.name}, the newest checkpoint that loads (skipped: {'; '.join(tried)})",
                  flush=True)
        return path, state
    raise CheckpointError(f"nothing to resume in {run_dir}: " + ("; ".join(tried) if tried else
                          "it holds no checkpoint. Train one first (without --resume_from_checkpoint)."))
