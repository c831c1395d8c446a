"""Ctrl-C and SIGTERM during training (docs/reliability.md): the run stops after an optimizer step,
saves latest.pt, prints the command that resumes it and exits 130 / 143; the resume continues
exactly as if never stopped; a second Ctrl-C stops at once. The signals are real ones, sent to a
real `python -m kitchen_lib train`; the tests wait on what the run writes, not on the clock."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kitchen_lib.training.checkpoint import load_checkpoint
from kitchen_lib.training.distributed import resume_command
from kitchen_lib.training.interrupt import stop_signals
from kitchen_lib.training.runlog import read_metrics

EPOCHS, STEPS = 3, 7  # optimizer steps an epoch on the small dataset with the smoke preset
SAFETY_S = 900  # only against a hung run: the tests wait on events, this never paces them


def train_args(dataset: str, folder: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "smoke", "--dataset", dataset, "--checkpoint_dir", str(folder),
            "--tensorboard_dir", str(folder / "tb"), "--no-log_images", "--epochs", str(EPOCHS),
            "--checkpoint_freq", "1", "--lr_decay_steps", "60", "--dropout", "0.1", *extra]


def steps_logged(folder: Path) -> int:
    """Optimizer steps the run has logged (a step is logged once it is done)."""
    path = folder / "metrics.jsonl"
    return sum('"loss":' in line for line in path.read_text().splitlines()) if path.exists() else 0


def as_at_a_terminal() -> None:
    """A job started in the background (nohup, `cmd &` in a script, some CI runners) inherits
    SIGINT ignored, and a run leaves an ignored SIGINT ignored; these tests stand for Ctrl-C typed
    at a terminal, where it is not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_steps(proc: subprocess.Popen, folder: Path, n: int) -> None:
    deadline = time.monotonic() + SAFETY_S
    while steps_logged(folder) < n:
        assert proc.poll() is None, "the run ended before it could be signalled"
        assert time.monotonic() < deadline, "no progress: the run hangs"
        time.sleep(0.01)


def train_losses(folder: Path) -> tuple[dict[int, float], list[float]]:
    m = read_metrics(folder)
    return {r["step"]: r["loss"] for r in m.train}, m.column("val_loss")


@pytest.fixture(scope="module")
def straight(small_pairs, small_dataset, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    folder = tmp_path_factory.mktemp("signals") / "straight"
    out = subprocess.run([sys.executable, "-m", "kitchen_lib", *train_args(small_dataset, folder)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return folder


@pytest.mark.parametrize(("signum", "code", "extra"), [(signal.SIGTERM, 143, ()), (signal.SIGINT, 130, ("--overwrite",))],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_latest_prints_the_resume_command_and_the_resume_continues_exactly(
        straight, small_dataset, tmp_path, signum, code, extra):
    folder = tmp_path / "signalled"
    args = train_args(small_dataset, folder, *extra)
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kitchen_lib", *args], stdout=out, stderr=err,
                                preexec_fn=as_at_a_terminal)
        seen = STEPS + 3  # inside the second epoch: the position inside an epoch must survive
        wait_for_steps(proc, folder, seen)
        proc.send_signal(signum)
        assert proc.wait(timeout=SAFETY_S) == code
    said = (tmp_path / "err.txt").read_text()
    state = load_checkpoint(folder / "latest.pt")
    assert seen <= state["step"] < EPOCHS * STEPS, state["step"]
    assert state["epoch"] * STEPS + state["batch_in_epoch"] == state["step"]
    assert steps_logged(folder) == state["step"]  # no step after the saved one was logged
    assert f"stopped by {signal.Signals(signum).name} at epoch {state['epoch']}, optimizer step {state['step']}" in said
    command = said.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    kept = [a for a in args if a != "--overwrite"]  # --overwrite would start it over
    assert command == "python -m kitchen_lib " + shlex.join([*kept, "--resume_from_checkpoint", "latest"]), command

    again = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    a, va = train_losses(straight)
    b, vb = train_losses(folder)
    assert sorted(b) == sorted(a) == list(range(1, EPOCHS * STEPS + 1))
    assert b == a and vb == va  # bit for bit
    ma, mb = load_checkpoint(straight / "latest.pt")["model"], load_checkpoint(folder / "latest.pt")["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_a_second_ctrl_c_stops_at_once_and_the_old_handlers_come_back():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (see as_at_a_terminal)
    try:
        before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        with pytest.raises(KeyboardInterrupt):
            with stop_signals() as stop:
                os.kill(os.getpid(), signal.SIGTERM)  # a signal to oneself is handled before the next line
                assert stop.signum == signal.SIGTERM  # noted, not acted on: the loop stops after its step
                os.kill(os.getpid(), signal.SIGINT)
                pytest.fail("a second signal did not stop at once")
        assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before
    finally:
        signal.signal(signal.SIGINT, outer)


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "3"],
    ["train", "--epochs", "3", "--resume_from_checkpoint", "best"],
    ["train", "--resume_from_checkpoint=latest", "--overwrite", "--epochs", "3"],
    ["train", "--resume", "latest", "--over", "--epochs", "3"],  # argparse's prefixes
])
def test_the_resume_command_resumes_latest_once_and_never_overwrites(argv):
    main = "/somewhere/kitchen_lib/__main__.py"
    want = "train --epochs 3 --resume_from_checkpoint latest"
    assert resume_command(1, [main, *argv]) == f"python -m kitchen_lib {want}"
    assert resume_command(2, [main, *argv]) == f"torchrun --nproc_per_node 2 -m kitchen_lib {want}"
    assert resume_command(1, ["notebook.py"]).count("--resume_from_checkpoint latest") == 1

