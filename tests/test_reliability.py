"""What the project promises a hostile but honest user (docs/reliability.md): every mistake gets a
clear message and exit code 2 before any work, nothing on disk changes when it does, one run per
checkpoint folder, divergence never saved, and a kill -9 at any moment is recovered from by the
next run with no manual cleanup."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kitchen_lib.base.locks import clean_stale, folder_lock
from kitchen_lib.base.paths import data_dir
from kitchen_lib.data.cache import CacheError, load_cache
from kitchen_lib.data.cache_builder import _build, _used_lengths, cache_dir_for
from kitchen_lib.data.datasets import store_path
from kitchen_lib.data.pairs import PairsConfig
from kitchen_lib.frontend.cli import main
from kitchen_lib.inference.predictor import load_predictor
from kitchen_lib.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from kitchen_lib.training.config import preset, with_overrides
from kitchen_lib.training.divergence import TrainingDiverged
from kitchen_lib.training.runs import resume_candidates
from kitchen_lib.training.trainer import Trainer, train


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under the roots: size and content hash (folders: -1, '')."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            out[str(p)] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else (-1, "")
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str, float]:
    """main() in this process: (exit code, stderr, seconds); argparse's own errors exit through SystemExit."""
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err, time.perf_counter() - t0


def smoke_cfg(small_dataset, ckpt_dir, **train_fields):
    return with_overrides(preset("smoke"), data={"dataset": small_dataset},
                          train={"checkpoint_dir": str(ckpt_dir), "tensorboard_dir": str(ckpt_dir / "tb"),
                                 "log_images": False, **train_fields})


def cli_train(small_dataset, ckpt_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "kitchen_lib", "train", "--preset", "smoke", "--dataset", small_dataset,
            "--checkpoint_dir", str(ckpt_dir), "--tensorboard_dir", str(ckpt_dir / "tb"), "--no-log_images", *extra]


ESCAPE = "kitchen-diffusion/../../../escape-v0"
CKPT = "no-such-folder/best.pt"  # argument errors must come before the checkpoint is even looked for
BAD_VALUES = [
    (["train", "--batch_size", "0"], "--batch_size"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--max_minutes", "-1"], "--max_minutes"),
    (["train", "--learning_rate", "-0.1"], "--learning_rate"),
    (["train", "--img_resolution", "63"], "--size"),
    (["train", "--img_resolution", "0"], "--size"),
    (["train", "--max_episodes", "0"], "--max_episodes"),
    (["train", "--max_episodes", "-1"], "--max_episodes"),
    (["train", "--k", "0"], "--k"),
    (["train", "--sampling_steps", "0"], "--sampling_steps"),
    (["train", "--timestep_power", "0"], "--timestep_power"),
    (["train", "--model_channel_mults", "a,b"], "--channel_mults"),
    (["train", "--device", "foo"], "--device"),
    (["train", "--device", "cuda:99"], "--device cuda:99"),
    (["train", "--dataset", ESCAPE], "not a Minari dataset id"),
    (["train", "--overwrite", "--resume_from_checkpoint", "latest"], "--overwrite"),
    (["pairs", "--k", "-2"], "--k"),
    (["generate", "--dataset", ESCAPE], "not a Minari dataset id"),
    (["generate", "--dataset", "/tmp/abs-v0"], "not a Minari dataset id"),
    (["generate", "--dataset", "D4RL/kitchen/complete-v2"], "reserved"),
    (["generate", "--episodes", "0"], "--episodes"),
    (["generate", "--max_steps", "0"], "--max_steps"),
    (["render", "--size", "0"], "--size"),
    (["render", "--out", "frame.jpg"], "--out"),
    (["render", "--episode", "-1"], "--episode"),
    (["sample", "--checkpoint", CKPT, "--n", "0"], "--n"),
    (["sample", "--checkpoint", CKPT, "--scale", "0"], "--scale"),
    (["sample", "--checkpoint", CKPT, "--out", "grid.txt"], "--out"),
    (["sample", "--checkpoint", CKPT, "--device", "foo"], "--device"),
    (["sample", "--checkpoint", CKPT, "--steps", "0"], "--sampling_steps"),
    (["sample", "--checkpoint", CKPT, "--out", f"{__file__}/grid.png"], "--out"),  # a folder that is a file
    (["evaluate", "--checkpoint", CKPT, "--max_pairs", "0"], "--max_pairs"),
    (["evaluate", "--checkpoint", CKPT, "--mean_of", "-1"], "--mean_of"),
    (["evaluate", "--checkpoint", CKPT, "--json", "scores.txt"], "--json"),
    (["rollout", "--checkpoint", CKPT, "--fps", "0"], "--fps"),
    (["rollout", "--checkpoint", CKPT, "--horizon", "0"], "--horizon"),
    (["rollout", "--checkpoint", CKPT, "--out", "roll.png"], "--out"),
    (["rollout", "--checkpoint", CKPT, "--episode", "-3"], "--episode"),
    (["evaluate", "--checkpoint", CKPT], "no checkpoint at"),
]


@pytest.mark.parametrize(("argv", "names"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_exit_2_naming_the_flag_and_change_nothing(argv, names, small_pairs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(data_dir(), store_path().parent)
    code, err, seconds = run_cli(argv, capsys)
    assert code == 2, (code, err)
    assert names in err and "Traceback" not in err, err
    assert seconds < 5, f"{seconds:.1f} s before the error"
    assert snapshot(data_dir(), store_path().parent) == before  # nothing written, nothing outside the store
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(capsys, monkeypatch):
    code, err, _ = run_cli(["train", "--batch_size", "0", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "--batch_size" in err
    monkeypatch.setenv("KITCHEN_DEBUG", "1")
    code, err, _ = run_cli(["train", "--epochs", "0"], capsys)
    assert code == 2 and "Traceback" in err


@pytest.fixture(scope="module")
def smoke_run(small_dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("smoke-run")
    train(smoke_cfg(small_dataset, folder, epochs=2), progress=False)
    return folder


def test_rollout_of_a_missing_episode_is_a_message(smoke_run, capsys, tmp_path):
    code, err, _ = run_cli(["rollout", "--checkpoint", str(smoke_run / "latest.pt"), "--episode", "999",
                            "--out", str(tmp_path / "r.gif")], capsys)
    assert code == 2 and "episode 999 is not in this cache" in err
    assert not (tmp_path / "r.gif").exists()


def test_damaged_checkpoints_are_refused_with_a_message(smoke_run, tmp_path):
    state = load_checkpoint(smoke_run / "latest.pt")
    for name, broken in (("no-config.pt", state | {"config": {}}), ("no-ema.pt", {k: v for k, v in state.items() if k != "ema"})):
        save_checkpoint(broken, tmp_path / name)
        with pytest.raises(CheckpointError, match="config cannot be read|no EMA weights"):
            load_predictor(tmp_path / name)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(state | {"config": {}}, run / "latest.pt")
    with pytest.raises(CheckpointError, match="config cannot be read"):
        Trainer(smoke_cfg(state["config"]["data"]["dataset"], run), resume=str(run / "latest.pt"), progress=False)


SAFETY_S = 900  # only against a hung process: the tests below wait on what runs write, never on the clock


def steps_logged(folder: Path) -> int:
    """Optimizer steps a run has logged in metrics.jsonl (a step is logged once it is done)."""
    path = folder / "metrics.jsonl"
    return sum('"loss":' in line for line in path.read_text().splitlines()) if path.exists() else 0


def wait_until(done, proc: subprocess.Popen, what: str) -> None:
    """Poll `done()` while `proc` runs; fail if it ends first (or, as a safety net, hangs)."""
    deadline = time.monotonic() + SAFETY_S
    while not done():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {SAFETY_S} s: the run hangs"
        time.sleep(0.01)


def test_a_second_training_into_a_busy_folder_is_refused_at_once(small_pairs, small_dataset, tmp_path):
    folder = tmp_path / "run"
    # Far more epochs than it will run: the test stops it once the others have been refused.
    first = subprocess.Popen(cli_train(small_dataset, folder, "--epochs", "1000"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_until(lambda: (folder / ".lock").exists() and '"pid"' in (folder / ".lock").read_text(), first, "the lock")
    second = subprocess.run(cli_train(small_dataset, folder, "--epochs", "60"), capture_output=True, text=True,
                            timeout=SAFETY_S)
    resumed = subprocess.run(cli_train(small_dataset, folder, "--epochs", "60", "--resume_from_checkpoint", "latest"),
                             capture_output=True, text=True, timeout=SAFETY_S)
    assert first.poll() is None, "the first run ended before the others were refused: the test proves nothing"
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr, second.stderr
    assert resumed.returncode == 2 and "in use by pid" in resumed.stderr  # resuming a live run is refused too
    wait_until(lambda: steps_logged(folder) >= 1, first, "a step")  # it trains on, undisturbed
    first.send_signal(signal.SIGTERM)  # stops after a step and saves it
    assert first.wait(timeout=SAFETY_S) == 143
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, len(steps) + 1))  # one run's metrics, each step once
    assert load_checkpoint(folder / "latest.pt")["step"] == len(steps)


def test_a_folder_with_any_checkpoint_is_not_started_over_and_resume_falls_back(small_pairs, small_dataset, tmp_path, capsys):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=2)
    train(cfg, progress=False)
    (tmp_path / "latest.pt").unlink()  # as a kill -9 during the first latest.pt write leaves it
    best = load_checkpoint(tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="already holds a run.*best.pt"):
        Trainer(cfg, progress=False)
    assert load_checkpoint(tmp_path / "best.pt")["step"] == best["step"]
    data = (tmp_path / "epoch_0002.pt").read_bytes()
    (tmp_path / "epoch_0002.pt").write_bytes(data[: len(data) // 3])  # and the newest epoch file is cut short
    trainer = Trainer(with_overrides(cfg, train={"epochs": 3}), resume="latest", progress=False)
    assert "resuming from epoch_0001.pt" in capsys.readouterr().out
    assert trainer.epoch == 1
    trainer.fit()
    assert load_checkpoint(tmp_path / "latest.pt")["epoch"] == 3
    # --overwrite starts over, and only then are the old checkpoints gone
    r = train(with_overrides(cfg, train={"epochs": 1}), progress=False, overwrite=True)
    assert r.epochs_done == 1 and not (tmp_path / "epoch_0003.pt").exists()


def test_divergence_is_caught_and_never_saved(small_pairs, small_dataset, tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(TrainingDiverged, match="diverged.*No checkpoint had been saved"):
        train(smoke_cfg(small_dataset, fresh, epochs=2, learning_rate=1e10), progress=False)
    assert not list(fresh.glob("*.pt"))

    run = tmp_path / "run"
    cfg = smoke_cfg(small_dataset, run, epochs=1)
    train(cfg, progress=False)
    saved = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.glob("*.pt")}
    steps = len((run / "metrics.jsonl").read_text().splitlines())
    with pytest.raises(TrainingDiverged, match=r"--learning_rate 1e\+29"):
        train(with_overrides(cfg, train={"epochs": 3, "learning_rate": 1e30}), resume="latest", progress=False)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.glob("*.pt")} == saved
    assert len((run / "metrics.jsonl").read_text().splitlines()) == steps  # the diverged steps' rows are dropped
    # Resuming with a lower learning rate is allowed, and uses it.
    r = train(with_overrides(cfg, train={"epochs": 2, "learning_rate": 1e-4}), resume="latest", progress=False)
    assert r.epochs_done == 2
    assert load_checkpoint(run / "latest.pt")["optimizer"]["param_groups"][0]["initial_lr"] == 1e-4


def test_a_failed_checkpoint_write_is_a_clear_error(small_pairs, small_dataset, tmp_path):
    (tmp_path / "latest.pt").mkdir()  # a real OS error on the rename: a folder is in the way
    (tmp_path / "latest.pt" / "x").write_text("x")
    with pytest.raises(CheckpointError, match="could not write .*latest.pt"):
        train(smoke_cfg(small_dataset, tmp_path, epochs=1), progress=False)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # its temp file is gone too


def _kill_when(cmd: list[str], moment) -> bool:
    """Start cmd and kill -9 it once `moment()` is true; whether it was still running then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SAFETY_S
    while not moment() and proc.poll() is None:
        assert time.monotonic() < deadline, "the moment never came: the run hangs"
        time.sleep(0.005)
    running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL) if running else None
    proc.wait()
    return running


def _temp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name] if folder.exists() else []


def test_kill_9_during_training_at_random_moments_then_the_next_run_recovers(small_pairs, small_dataset, tmp_path):
    rng = random.Random(11)
    # Moments placed by what the run has written (7 steps an epoch, 8 epochs): a step before the
    # first checkpoint, the moment an epoch file appears (latest.pt is written next), steps after.
    moments = [("step", rng.randint(1, 6)), ("file", "epoch_0001.pt"), ("step", rng.randint(8, 27)),
               ("file", f"epoch_{rng.randint(2, 5):04d}.pt"), ("step", rng.randint(29, 55))]
    killed, resumed = 0, 0
    for i, (kind, at) in enumerate(moments):
        folder = tmp_path / f"run{i}"
        args = cli_train(small_dataset, folder, "--epochs", "8")
        killed += _kill_when(args, lambda f=folder, kind=kind, at=at: steps_logged(f) >= at if kind == "step"
                             else (f / at).exists())
        # a kill during the first save leaves only a temp file (".latest.pt.tmp<pid>.<8>.pt"): not a checkpoint
        resume = ["--resume_from_checkpoint", "latest"] if resume_candidates(folder) else []
        resumed += bool(resume)
        out = subprocess.run(args + resume, capture_output=True, text=True, timeout=SAFETY_S)
        assert out.returncode == 0, (i, resume, out.stderr[-2000:])
        assert load_checkpoint(folder / "latest.pt")["epoch"] == 8
        assert _temp_leftovers(folder) == []
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss" in r]
        assert steps == list(range(1, len(steps) + 1)), i
    assert (killed, resumed) == (5, 4), (killed, resumed)  # every kill landed in a run, four after a checkpoint


def test_kill_9_while_building_pairs_then_the_next_build_recovers(small_dataset, tmp_path):
    root = tmp_path / "data"
    cmd = [sys.executable, "-m", "kitchen_lib", "pairs", "--dataset", small_dataset, "--size", "40", "--k", "3",
           "--dataset_dir", str(root), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _temp_leftovers(root / "pairs"), proc, "its temporary folder")  # killed while rendering into it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _temp_leftovers(root / "pairs")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _temp_leftovers(root / "pairs") == []
    load_cache(Path(json.loads(out.stdout)["cache"]))


def test_a_second_pairs_build_waits_for_the_first_and_reuses_it(small_dataset, tmp_path):
    cfg = PairsConfig(dataset=small_dataset, size=24, k=2)
    root = tmp_path / "data"
    path = cache_dir_for(cfg, root / "pairs")
    with folder_lock(path.parent, "test", name=f".{path.name}.lock"):  # as a first builder holds it
        proc = subprocess.Popen([sys.executable, "-m", "kitchen_lib", "pairs", "--dataset", small_dataset, "--size", "24",
                                 "--k", "2", "--dataset_dir", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        line = proc.stdout.readline()  # blocks until the second process says it waits
        assert "waiting for pid" in line, line
        _build(cfg, path, _used_lengths(cfg), None, False)  # what that first builder does under its lock
        built = path.stat().st_mtime_ns
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert path.stat().st_mtime_ns == built  # it loaded the first build, it did not rebuild


def test_kill_9_while_generating_then_the_next_run_recovers(tmp_path, monkeypatch):
    store = tmp_path / "store"
    env = os.environ | {"MINARI_DATASETS_PATH": str(store)}
    cmd = [sys.executable, "-m", "kitchen_lib", "generate", "--dataset", "kitchen-diffusion/killed-v0", "--episodes", "2",
           "--max_steps", "30"]
    for _attempt in range(3):  # the window between the temporary store's creation and its move is short
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + SAFETY_S  # only against a hung process
        while not _temp_leftovers(store) and proc.poll() is None:  # killed while writing
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        proc.wait()
        if _temp_leftovers(store):
            break
        shutil.rmtree(store, ignore_errors=True)  # it finished first: try again
    assert _temp_leftovers(store), "never killed while writing"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _temp_leftovers(store) == []
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    from kitchen_lib.data.datasets import open_dataset

    assert open_dataset("kitchen-diffusion/killed-v0").total_episodes == 2


def test_stale_temp_files_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".latest.pt.tmp{dead_pid}.abcd1234.pt").write_bytes(b"x")
    (tmp_path / f".pairs-x.tmp{dead_pid}.ef_5678a").mkdir()
    live = tmp_path / f".best.pt.tmp{os.getpid()}.ghij9012.pt"
    live.write_bytes(b"y")
    users = [tmp_path / "notes.tmp1.abcdefgh.txt", tmp_path / f".notes.tmp{dead_pid}.bak"]  # not ours
    for p in users:
        p.write_text("a user's file")
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".latest.pt.tmp{dead_pid}.abcd1234.pt", f".pairs-x.tmp{dead_pid}.ef_5678a"])
    assert live.exists() and all(p.exists() for p in users)


def test_files_keep_the_users_umask(small_pairs, small_dataset, tmp_path):
    old = os.umask(0o022)
    try:
        train(smoke_cfg(small_dataset, tmp_path, epochs=1), progress=False)
    finally:
        os.umask(old)
    for name in ("latest.pt", "best.pt", "epoch_0001.pt", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_a_cache_whose_episode_boundaries_were_edited_is_refused(small_pairs, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(small_pairs.path, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["episodes"][1]["first_frame"] -= 5  # overlaps the first episode
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="inconsistent"):
        load_cache(copy)
    meta = json.loads((small_pairs.path / "meta.json").read_text())
    val = meta["splits"]["val"][0]
    meta["splits"]["test"].append(val)  # a validation episode scored as test
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="inconsistent"):
        load_cache(copy)


def test_a_checkpoint_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o640
    os.chmod(tmp_path / "c.pt", 0o600)  # the user made it private: a rewrite keeps it so
    save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, tmp_path / "c.pt")
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o600
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["w"], torch.zeros(2))


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from kitchen_lib.base import paths

    synced, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst):
        synced.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(paths.os, "fsync", fsync)
    monkeypatch.setattr(paths.os, "replace", replace)
    save_checkpoint({"model": {}, "config": {}}, tmp_path / "latest.pt")
    assert len(synced) == 3, synced
    assert Path(synced[0]).parent == tmp_path and synced[0] != str(tmp_path)  # the temporary file, then
    assert synced[1:] == [("rename", str(tmp_path / "latest.pt")), str(tmp_path)]  # the rename, then the folder
