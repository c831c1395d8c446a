"""Several processes training one model: the process group that `torchrun` starts.

`torchrun --nproc_per_node N -m kitchen_lib train ...` runs N copies of the command, each with
RANK, WORLD_SIZE and LOCAL_RANK in its environment: the ranks of one `World`. Together they
train one model with DistributedDataParallel (NCCL on CUDA, gloo on the CPU). A plain process
(no WORLD_SIZE, or 1) is a world of one: no process group, and every helper here is a no-op.

A step of W ranks with batch b each is a step of one process with the global batch W*b: the
epoch's order is cut into global batches and rank r reads the r-th b of each (`rank_indices`),
and the noise is drawn for the whole global batch, each rank taking its rows (`FrameModel.loss`'s
`part`). So the per-rank batch and the world size together decide the run, and a resume must
keep both (`launch_command` says how).
"""

from __future__ import annotations

import os
import pickle
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kitchen_lib.base.device import pick_device
from kitchen_lib.base.errors import UserError

# How long a rank waits in a collective. Long enough for rank 0 to build a large pairs cache
# while the others wait for it (NCCL's own default is 10 minutes).
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the processes training one model."""

    rank: int = 0  # 0 .. size-1, across all machines
    size: int = 1
    local_rank: int = 0  # on this machine: which GPU it drives

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def part(self) -> tuple[int, int]:
        """(rank, size): which slice of a global batch is this rank's."""
        return self.rank, self.size


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The World torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; a plain process is World()."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE") or 1)
        world = World(int(env.get("RANK") or 0), size, int(env.get("LOCAL_RANK") or 0))
    except ValueError:
        raise UserError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (got {env.get('RANK')!r}, "
                         f"{env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r}); start the run with torchrun") from None
    if size < 1 or not 0 <= world.rank < size or world.local_rank < 0:
        raise UserError(f"RANK={world.rank}, WORLD_SIZE={size}, LOCAL_RANK={world.local_rank} is not a rank of a "
                         f"world; start the run with torchrun")
    return world


def device_for(world: World, name: str) -> torch.device:
    """The device a rank trains on: `name` for a single process; under torchrun, cuda:LOCAL_RANK or the CPU."""
    device = pick_device(name)
    if world.size == 1:
        return device
    if device.type == "mps":
        raise UserError("--device mps: training on several processes runs on CUDA (NCCL) or the CPU (gloo); "
                         "use --device cpu, or one process")
    if device.type != "cuda":
        return device
    if name not in ("auto", "cuda"):
        raise UserError(f"--device {name}: under torchrun each process drives cuda:LOCAL_RANK; use --device cuda")
    if world.local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {world.local_rank}, but this machine has {torch.cuda.device_count()} CUDA "
                         f"devices: start at most that many processes here (--nproc_per_node)")
    return torch.device("cuda", world.local_rank)


def init_process_group(world: World, device: torch.device) -> None:
    """Join the other ranks (NCCL for CUDA, gloo for the CPU); nothing for a world of one."""
    if world.size == 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                            timeout=TIMEOUT)


def shutdown(world: World) -> None:
    """Leave the process group (if this world has one)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """The process group for the block, however it ends."""
    init_process_group(world, device)
    try:
        yield
    finally:
        shutdown(world)


def wrap(net: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The network as training calls it: DDP averages the gradients over the ranks in backward.
    (Its buffers, a world model's vector statistics, are the same on every rank.)"""
    if world.size == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(world: World, values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (in float64); unchanged for a world of one."""
    if world.size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def agree(world: World, loss: float, stops: list[bool], device: torch.device,
          clock: float = 0.0) -> tuple[float, float, list[bool]]:
    """One collective a step: the mean loss over the ranks, rank 0's `clock` (its minutes of
    training, which set a decay over minutes), and for each stop flag (rank 0's clock, a signal)
    whether any rank raised it. Every rank gets the same answer, so every rank decides the same."""
    if world.size == 1:
        return loss, clock, list(stops)
    total, main_clock, *raised = all_sum(world, [loss, clock if world.is_main else 0.0, *map(float, stops)], device)
    return total / world.size, main_clock, [r > 0 for r in raised]


def barrier(world: World) -> None:
    """Wait until every rank is here."""
    if world.size > 1:
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def share_from_main(world: World, value: Any = None, failure: BaseException | None = None) -> Any:
    """Rank 0 sends `value` (or the error it hit, `failure`) to every rank. The others return
    that value, or raise that same error, so no rank waits for a rank 0 that gave up."""
    if world.size == 1:
        return value
    if world.is_main and failure is not None:
        try:
            pickle.dumps(failure)
        except Exception:  # an error that cannot travel goes as its text
            failure = RuntimeError(f"{type(failure).__name__}: {failure}")
    box = [(failure, value)] if world.is_main else [None]
    dist.broadcast_object_list(box, src=0, device=torch.device("cuda", torch.cuda.current_device())
                               if dist.get_backend() == "nccl" else None)
    failure, value = box[0]
    if failure is not None and not world.is_main:
        raise failure
    return value


# --- which samples and which noise each rank takes: pure functions -----------------------

def rank_indices(order: torch.Tensor, batch: int, world: World) -> list[int]:
    """This rank's sample indices for an epoch, batch after batch: the order is cut into global
    batches of batch * size (a partial last one is dropped) and rank r reads the r-th `batch` of
    each. A world of one reads order[: whole batches]."""
    step = batch * world.size
    steps = len(order) // step
    return order[: steps * step].view(steps, world.size, batch)[:, world.rank].reshape(-1).tolist()


def rank_val_batches(n: int, batch: int, world: World) -> list[tuple[int, list[int]]]:
    """(batch index, its sample indices) of the validation batches this rank scores: the split's
    n samples in order, in batches of `batch`; batch i is rank (i mod size)'s."""
    starts = range(0, n, batch)
    return [(i, list(range(s, min(s + batch, n)))) for i, s in enumerate(starts) if i % world.size == world.rank]


def launch_command(size: int, argv: list[str] | None = None) -> str:
    """This command line (sys.argv) run by `size` processes on one machine: what to type to resume."""
    argv = sys.argv if argv is None else argv
    args = shlex.join(argv[1:]) if _ours(argv) else "train ... --resume_from_checkpoint latest"
    if size == 1:
        return f"python -m kitchen_lib {args}"
    return f"torchrun --nproc_per_node {size} -m kitchen_lib {args}"


def resume_command(size: int, argv: list[str] | None = None) -> str:
    """`launch_command` continuing this run: `--resume_from_checkpoint latest` once, no `--overwrite`
    (which would start it over). argparse takes any unambiguous prefix of a flag, so those go too."""
    argv = list(sys.argv if argv is None else argv)
    if not _ours(argv):  # not run as `python -m kitchen_lib`: the generic command, which resumes
        return launch_command(size, argv)
    kept, i = argv[:1], 1
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if len(name) > 4 and "--resume_from_checkpoint".startswith(name):
            i += 1 if "=" in argv[i] else 2  # the flag and its value
            continue
        if len(name) > 4 and "--overwrite".startswith(name):
            i += 1
            continue
        kept.append(argv[i])
        i += 1
    return launch_command(size, kept + ["--resume_from_checkpoint", "latest"])


def _ours(argv: list[str]) -> bool:
    """Whether argv is `python -m kitchen_lib ...`'s (torchrun's ranks run it so too)."""
    return bool(argv) and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "kitchen_lib"
