"""Whether a saved run can be resumed with today's config: what a resume may change (its budget,
its logging), and what makes it another run (the architecture, the data, the number of processes)."""

from __future__ import annotations

from pathlib import Path

from kitchen_lib.training.checkpoint import CheckpointError, config_differences
from kitchen_lib.training.config import RunConfig
from kitchen_lib.training.distributed import launch_command

# Fields a resumed run may change; any other difference means a different run.
RESUMABLE_CHANGES = {"epochs", "max_minutes", "learning_rate", "num_workers", "device", "log_freq", "log_images", "log_image_every",
                     "checkpoint_freq", "tensorboard_dir", "checkpoint_dir", "amp", "cpu_bf16"}


def check_resumable(path: Path, saved: dict, now: RunConfig) -> None:
    """Raise CheckpointError, naming the fields, unless `now` continues the run saved at `path`."""
    now_d = RunConfig.from_dict(now.to_dict()).to_dict()
    try:
        saved = RunConfig.from_dict(saved).to_dict()  # read an older layout the way it is read today
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: its config cannot be read ({type(e).__name__}: {e}); it was not written by "
                              f"this project's training, or is damaged. Resume from another checkpoint.") from e
    arch = [d for part in ("model", "diffusion", "conditioning")
            for d in config_differences(saved[part], now_d[part], f"{part}.")]
    if arch:
        raise CheckpointError(f"{path} was trained with a different architecture; differing fields:\n  " + "\n  ".join(arch)
                              + "\nUse the same model flags (or --preset) as that run, or start a new run in another "
                              "--checkpoint_dir.")
    _check_world_size(path, saved["train"], now_d["train"])
    other = config_differences(saved["data"], now_d["data"], "data.") + [
        d for d in config_differences(saved["train"], now_d["train"], "train.")
        if d.split(":")[0].split(".")[1] not in RESUMABLE_CHANGES]
    if other:
        raise CheckpointError(f"{path} belongs to a run with other settings; resuming would not continue it:\n  "
                              + "\n  ".join(other))


def _check_world_size(path: Path, saved: dict, now: dict) -> None:
    """A run continues exactly only on as many processes as it started with: they split its data
    order and noise (kitchen_lib.training.distributed)."""
    was, now_size = saved["world_size"], now["world_size"]
    if was == now_size:
        return
    raise CheckpointError(
        f"{path} was trained by {_processes(was)} with batch {saved['batch_size']} per process (global batch "
        f"{saved['batch_size'] * was}); this run has {_processes(now_size)} (global batch {now['batch_size'] * now_size}). "
        f"Each step's samples and noise are split by the number of processes, so resume it with {_processes(was)}:\n  "
        f"{launch_command(was)}\n(on several machines: --nnodes times --nproc_per_node = {was}). Nothing was changed.")


def _processes(n: int) -> str:
    return f"{n} process{'es' if n > 1 else ''}"
