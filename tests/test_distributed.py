"""Training on several processes through torchrun, on this CPU with gloo (README: Scaling up).

Two ranks with batch b train the model one process trains with batch 2b; only rank 0 writes;
a kill -9 of the whole run is resumed exactly; a resume with another number of processes, a
busy folder, a spent time budget and a failed write end every rank together, with one clear error.
"""

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from kitchen_lib.base.global_batch import global_shape, own_rows
from kitchen_lib.base.locks import folder_lock
from kitchen_lib.training import distributed
from kitchen_lib.training.checkpoint import load_checkpoint
from kitchen_lib.training.config import build_model, preset, with_overrides
from kitchen_lib.training.distributed import World, rank_indices, rank_val_batches, world_from_env
from kitchen_lib.training.runlog import read_metrics

EPOCHS = 6  # of 7 optimizer steps at a global batch of 8 (the small dataset's 56-63 training pairs)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def train_args(dataset: str, folder: Path, *extra: str) -> list[str]:
    """`train` on the smoke preset into `folder`, its TensorBoard runs in folder/tb."""
    return ["-m", "kitchen_lib", "train", "--preset", "smoke", "--dataset", dataset, "--checkpoint_dir", str(folder),
            "--tensorboard_dir", str(folder / "tb"), "--checkpoint_freq", "1", "--lr_decay_steps", "60", *extra]


def torchrun(dataset: str, folder: Path, *extra: str) -> list[str]:
    """Two ranks with batch 4 each: a global batch of 8."""
    return TORCHRUN + train_args(dataset, folder, "--batch_size", "4", "--epochs", str(EPOCHS), *extra)


# One thread a process (torchrun's own default for its ranks): on a busy 2-core machine the
# single-process reference runs 3-4x faster so, and with the same kernels as each rank.
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def losses(folder: Path) -> tuple[dict[int, float], list[float]]:
    m = read_metrics(folder)
    return {r["step"]: r["loss"] for r in m.train}, m.column("val_loss")


def weights(path: Path, which: str = "ema") -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[which]


def snapshot(folder: Path, but: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in but}


@pytest.fixture(scope="module")
def two_ranks(small_pairs, small_dataset, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of EPOCHS epochs."""
    folder = tmp_path_factory.mktemp("ddp") / "two"
    t0 = time.perf_counter()
    out = run(torchrun(small_dataset, folder))
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"2-rank gloo run of {EPOCHS} epochs: {time.perf_counter() - t0:.1f} s wall")
    return folder


# --- pure arithmetic -----------------------------------------------------------------------

def test_ranks_read_disjoint_shares_of_every_global_batch_in_the_epochs_order():
    order = torch.randperm(23, generator=torch.Generator().manual_seed(5))
    assert rank_indices(order, 4, World()) == order[:20].tolist()  # one process: whole batches, in order
    for size, batch in ((2, 4), (3, 2), (4, 1)):
        shares = [rank_indices(order, batch, World(r, size)) for r in range(size)]
        steps = len(order) // (batch * size)
        assert all(len(s) == steps * batch for s in shares)
        for i in range(steps):  # step i of all ranks together is global batch i of one process
            together = [x for s in shares for x in s[i * batch:(i + 1) * batch]]
            assert together == order[i * batch * size:(i + 1) * batch * size].tolist()
    val = [rank_val_batches(70, 32, World(r, 2)) for r in range(2)]
    assert [i for i, _ in val[0]] == [0, 2] and [i for i, _ in val[1]] == [1]
    assert sorted(x for v in val for _, items in v for x in items) == list(range(70))


def test_a_ranks_rows_of_a_global_draw_and_the_world_from_torchruns_environment():
    full = torch.arange(12.0).view(6, 2)
    assert torch.equal(own_rows(full, (0, 1)), full)
    assert torch.equal(own_rows(full, (1, 3)), full[2:4])
    assert global_shape((2, 3, 8, 8), (1, 3)) == (6, 3, 8, 8)
    with pytest.raises(ValueError, match="rank"):
        global_shape((2, 3), (2, 2))
    assert world_from_env({}) == World(0, 1, 0)
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main, w.part) == (3, 4, 1, False, (3, 4))
    with pytest.raises(ValueError, match="torchrun"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    argv = ["/x/kitchen_lib/__main__.py", "train", "--preset", "smoke", "--dataset_dir", "my data"]
    assert distributed.launch_command(2, argv) == "torchrun --nproc_per_node 2 -m kitchen_lib train --preset smoke --dataset_dir 'my data'"
    assert distributed.launch_command(1, argv).startswith("python -m kitchen_lib train --preset smoke")


def _world_model_batch(n: int, action_dropout: float = 0.0) -> tuple[object, dict[str, torch.Tensor]]:
    cfg = with_overrides(preset("smoke-world"), conditioning={"context_noise": 0.1, "action_dropout": action_dropout},
                         diffusion={"timestep_power": 0.5})
    model = build_model(cfg)
    g = torch.Generator().manual_seed(3)
    c, s = cfg.data.channels, cfg.data.size
    batch = {"current": torch.rand(n, c, s, s, generator=g) * 2 - 1, "future": torch.rand(n, c, s, s, generator=g) * 2 - 1,
             "context": torch.rand(n, 2 * c, s, s, generator=g) * 2 - 1,
             "vector": torch.randn(n, model.net.vector_dim, generator=g)}
    return model, batch


def test_the_default_part_is_the_loss_as_it_was_and_ranks_parts_make_the_global_batchs_loss():
    model, batch = _world_model_batch(6)
    d = model.diffusion
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        got = model.loss(batch, g)  # part=(0, 1)
        # The loss written out as before `part` existed: context noise, then t, then the noise.
        h = torch.Generator().manual_seed(7)
        context = batch["context"] + 0.1 * torch.randn(batch["context"].shape, generator=h)
        x0 = batch["future"] - batch["current"]
        t = ((torch.rand(6, generator=h) ** 0.5) * d.T).long().clamp(max=d.T - 1)
        noise = torch.randn(x0.shape, generator=h)
        out = model.net(d.q_sample(x0, t, noise), t, {"current": batch["current"], "context": context, "vector": batch["vector"]})
        assert torch.equal(got, torch.mean((out.float() - x0) ** 2))
        assert torch.equal(g.get_state(), h.get_state())
        # Three ranks with two samples each: their mean is the loss of the six, and every rank's
        # generator ends where one process's does.
        parts, states = [], []
        for r in range(3):
            gr = torch.Generator().manual_seed(7)
            parts.append(model.loss({k: v[2 * r:2 * r + 2] for k, v in batch.items()}, gr, part=(r, 3)))
            states.append(gr.get_state())
        assert torch.allclose(torch.stack(parts).mean(), got, rtol=1e-5)
        assert all(torch.equal(s, g.get_state()) for s in states)
        assert not torch.allclose(parts[0], parts[1])  # the parts are different samples and noise


def test_action_dropout_is_drawn_for_the_global_batch_so_ranks_parts_make_its_loss():
    from kitchen_lib.base.example import NULL_ACTIONS

    model, batch = _world_model_batch(12, action_dropout=0.5)
    masks = []
    model.net.register_forward_pre_hook(lambda module, args: masks.append(args[2][NULL_ACTIONS].clone()))
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        got = model.loss(batch, g)
        parts, states = [], []
        for r in range(3):
            gr = torch.Generator().manual_seed(7)
            parts.append(model.loss({k: v[4 * r:4 * r + 4] for k, v in batch.items()}, gr, part=(r, 3)))
            states.append(gr.get_state())
    assert torch.allclose(torch.stack(parts).mean(), got, rtol=1e-5)
    assert all(torch.equal(s, g.get_state()) for s in states)
    whole = masks[0]
    assert whole.any() and not whole.all()  # some pairs dropped, some kept
    assert torch.equal(torch.cat(masks[1:]), whole)  # each rank dropped its rows of the one global draw


# --- real torchrun runs (gloo) -------------------------------------------------------------

def test_two_ranks_train_the_model_one_process_trains_with_the_global_batch(two_ranks, small_dataset, tmp_path):
    one = tmp_path / "one"
    out = run([sys.executable, *train_args(small_dataset, one, "--batch_size", "8", "--epochs", "3")])
    assert out.returncode == 0, out.stderr[-3000:]
    a, va = losses(two_ranks)
    b, vb = losses(one)
    assert sorted(b) == list(range(1, 3 * 7 + 1)) and sorted(a) == list(range(1, EPOCHS * 7 + 1))
    for step in b:  # (here they agree to 2e-7)
        assert a[step] == pytest.approx(b[step], rel=1e-4), f"step {step}"
    assert va[:3] == pytest.approx(vb, rel=1e-4)
    ddp, single = weights(two_ranks / "epoch_0003.pt"), weights(one / "latest.pt")
    assert ddp.keys() == single.keys()  # the raw network's names: no DDP "module." inside
    assert not any(k.startswith("module.") for k in weights(two_ranks / "epoch_0003.pt", "model"))
    assert all(torch.allclose(ddp[k].float(), single[k].float(), atol=1e-5) for k in ddp)
    assert not torch.allclose(ddp["module.inp.weight"], weights(two_ranks / "epoch_0001.pt")["module.inp.weight"])
    config = load_checkpoint(two_ranks / "latest.pt")["config"]["train"]
    assert (config["batch_size"], config["world_size"]) == (4, 2)


def test_only_rank_0_writes(two_ranks):
    lock = json.loads((two_ranks / ".lock").read_text())  # the last holder: rank 0
    files = {str(p.relative_to(two_ranks)) for p in two_ranks.rglob("*") if p.is_file()}
    tb_runs = [p for p in (two_ranks / "tb").iterdir()]
    assert len(tb_runs) == 1 and tb_runs[0].is_dir()
    events = {f for f in files if f.startswith("tb/")}
    assert events and all(Path(f).parent == Path("tb", tb_runs[0].name) and ".tfevents." in f for f in events)
    assert {int(Path(f).name.split(".")[-2]) for f in events} == {lock["pid"]}  # every event file is rank 0's
    checkpoints = {"latest.pt", "best.pt", *(f"epoch_{e:04d}.pt" for e in range(1, EPOCHS + 1))}
    assert files - events == checkpoints | {"metrics.jsonl", ".lock"}  # nothing else: no temp files, no second log
    rows = read_metrics(two_ranks)
    assert [r["step"] for r in rows.train] == list(range(1, EPOCHS * 7 + 1))  # each step once
    assert len(rows.val) == EPOCHS


def _kill_everything(proc: subprocess.Popen) -> None:
    """kill -9 torchrun and its workers at once (torchrun starts each worker in a session of its
    own, so killing torchrun's process group alone would leave them training)."""
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(procs) == 3, procs  # the agent and two ranks
    for p in reversed(procs):
        p.send_signal(signal.SIGKILL)
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive
    proc.wait()


def test_kill_9_of_the_whole_run_then_resume_continues_exactly(two_ranks, small_dataset, tmp_path):
    folder = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(small_dataset, folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    at = 2 * 7 + random.Random(2).randint(1, 6)  # a step inside the third epoch, by what the run has logged
    deadline = time.monotonic() + 900  # only against a hung run
    while not (folder / "metrics.jsonl").exists() or (folder / "metrics.jsonl").read_text().count('"loss":') < at:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _kill_everything(proc)
    stopped_at = load_checkpoint(folder / "latest.pt")["epoch"]
    assert 2 <= stopped_at < EPOCHS, stopped_at  # epoch 2's checkpoints come before step 15 is logged
    out = run(torchrun(small_dataset, folder, "--resume_from_checkpoint", "latest"))
    assert out.returncode == 0, out.stderr[-3000:]
    a, va = losses(two_ranks)
    b, vb = losses(folder)
    assert sorted(b) == sorted(a) == list(range(1, EPOCHS * 7 + 1))
    assert b == a and vb == va  # exactly: the same ranks, data, noise and arithmetic
    for which in ("model", "ema"):
        x, y = weights(two_ranks / "latest.pt", which), weights(folder / "latest.pt", which)
        assert all(torch.equal(x[k], y[k]) for k in x), which
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_resuming_with_another_number_of_processes_is_refused_with_the_command_to_use(two_ranks, small_dataset, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(two_ranks, folder)
    before = snapshot(folder, but=(".lock",))  # the lock file names its last holder: the refused run
    args = train_args(small_dataset, folder, "--batch_size", "4", "--epochs", str(EPOCHS + 1),
                      "--resume_from_checkpoint", "latest")
    out = run([sys.executable, *args])
    assert out.returncode == 2, out.stderr[-3000:]
    assert "trained by 2 processes with batch 4 per process (global batch 8); this run has 1 process (global batch 4)" \
        in out.stderr, out.stderr
    command = next(line.strip() for line in out.stderr.splitlines() if line.strip().startswith("torchrun"))
    assert command == "torchrun --nproc_per_node 2 -m kitchen_lib " + shlex.join(args[2:])
    assert snapshot(folder, but=(".lock",)) == before  # nothing changed
    # The command it gives continues the run.
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", *shlex.split(command)[1:]])
    assert out.returncode == 0, out.stderr[-3000:]
    assert load_checkpoint(folder / "latest.pt")["epoch"] == EPOCHS + 1


def test_a_busy_folder_stops_every_rank_with_the_same_error(small_pairs, small_dataset, tmp_path):
    folder = tmp_path / "busy"
    with folder_lock(folder, "a test"):  # as a first run holds it
        before = snapshot(folder)
        out = run(torchrun(small_dataset, folder), timeout=120)
    assert out.returncode != 0
    # The two ranks write to one stderr at the same moment: their lines may run together.
    said = sorted(re.findall(rf"(rank 1: )?error: \S+ is in use by pid {os.getpid()} ", out.stderr))
    assert said == ["", "rank 1: "], out.stderr[-3000:]
    assert snapshot(folder) == before


def test_a_spent_time_budget_stops_every_rank_after_the_same_step(small_pairs, small_dataset, tmp_path):
    out = run(torchrun(small_dataset, tmp_path / "budget", "--max_minutes", "0.00001"))
    assert out.returncode == 0, out.stderr[-3000:]
    s = load_checkpoint(tmp_path / "budget" / "latest.pt")
    assert (s["epoch"], s["batch_in_epoch"], s["step"]) == (0, 1, 1)
    assert out.stdout.count("stopped after") == 1  # rank 0 says it
    assert [r["step"] for r in read_metrics(tmp_path / "budget").train] == [1]


def test_when_one_rank_fails_torchrun_ends_the_others(small_pairs, small_dataset, tmp_path):
    folder = tmp_path / "fails"
    (folder / "latest.pt").mkdir(parents=True)  # rank 0's first latest.pt write fails; rank 1 trains on
    (folder / "latest.pt" / "x").write_text("x")
    proc = subprocess.Popen(torchrun(small_dataset, folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    workers = []
    while proc.poll() is None and len(workers) < 2:
        workers = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.05)
    # Left alone, rank 1 would wait 30 minutes (distributed.TIMEOUT) for a rank 0 that is gone.
    out, err = proc.communicate(timeout=900)
    assert len(workers) == 2 and proc.returncode != 0
    assert "error: could not write" in err and "latest.pt" in err, err[-3000:]
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]  # none left behind


def test_sigterm_to_torchrun_stops_every_rank_after_one_step_and_the_printed_command_resumes_exactly(
        two_ranks, small_dataset, tmp_path):
    folder = tmp_path / "signalled"
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(torchrun(small_dataset, folder), stdout=out, stderr=subprocess.STDOUT, env=ENV)
        seen = 7 + 3  # inside the second epoch
        deadline = time.monotonic() + 900  # only against a hung run: the test waits on the steps logged
        while not (folder / "metrics.jsonl").exists() or \
                (folder / "metrics.jsonl").read_text().count('"loss":') < seen:
            assert proc.poll() is None, "the run ended before it could be signalled"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks
        assert proc.wait(timeout=900) != 0
    said = (tmp_path / "out.txt").read_text()
    state = load_checkpoint(folder / "latest.pt")
    assert seen <= state["step"] < EPOCHS * 7, state["step"]
    assert [r["step"] for r in read_metrics(folder).train] == list(range(1, state["step"] + 1))
    assert said.count(f"stopped by SIGTERM at epoch {state['epoch']}, optimizer step {state['step']}") == 1, said[-3000:]
    command = said.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    assert command.startswith("torchrun --nproc_per_node 2 -m kitchen_lib train ") and \
        command.endswith(" --resume_from_checkpoint latest") and command.count("--resume_from_checkpoint") == 1
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", *shlex.split(command)[1:]])
    assert out.returncode == 0, out.stderr[-3000:]
    a, va = losses(two_ranks)
    b, vb = losses(folder)
    assert b == a and vb == va  # exactly
    for which in ("model", "ema"):
        x, y = weights(two_ranks / "latest.pt", which), weights(folder / "latest.pt", which)
        assert all(torch.equal(x[k], y[k]) for k in x), which
