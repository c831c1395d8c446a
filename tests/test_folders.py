"""Folders that cannot be written, user errors against bugs, and stale temps (docs/reliability.md):
a blocked destination is exit 2 naming the flag and the path before any work; a user's mistake is
one line and exit 2, a bug a traceback, a request to report it and exit 1; a temp file is swept only
when its owner is gone, whatever pid namespace the owner ran in."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kitchen_lib.base import paths
from kitchen_lib.base.errors import DestinationError, UserError
from kitchen_lib.base.locks import FolderBusy, clean_stale, folder_lock, hold_temp, let_go, owner_tag
from kitchen_lib.base.paths import atomic_path, data_dir
from kitchen_lib.data.cache import CacheError
from kitchen_lib.data.datasets import DatasetError, store_path
from kitchen_lib.data.pairs import PairsConfig
from kitchen_lib.frontend.cli import REPORT, main
from kitchen_lib.training.checkpoint import CheckpointError
from kitchen_lib.training.divergence import TrainingDiverged

CKPT = "no-such-folder/best.pt"  # the check must come before the checkpoint is even looked for


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def _tree(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in root.rglob("*"))


def _mount_read_only(folder: Path) -> bool:
    """Bind-mount `folder` read-only over itself; False where mounting is not permitted."""
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], check=True)
        ok = False
    return ok


@pytest.fixture
def blocked(request, tmp_path, monkeypatch):
    """A destination folder that cannot be written, of the kind asked: read-only, a file, under a file."""
    if request.param == "file":
        (tmp_path / "a-file").write_text("x")
        yield tmp_path / "a-file"
        return
    if request.param == "under a file":
        (tmp_path / "a-file").write_text("x")
        yield tmp_path / "a-file" / "sub"
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = _mount_read_only(ro)
    if not mounted:  # the same failure, injected at the same call: the write probe
        real = paths._probe

        def probe(folder: Path) -> None:
            if folder.resolve().is_relative_to(ro.resolve()):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
            real(folder)
        monkeypatch.setattr(paths, "_probe", probe)
    try:
        yield ro / "sub"
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)


# (argv with {} for the blocked destination and {tmp} for a free folder, the flag the message must name)
DESTINATIONS = [
    (["train", "--checkpoint_dir", "{}", "--tensorboard_dir", "{tmp}/tb"], "--checkpoint_dir"),
    (["train", "--checkpoint_dir", "{tmp}/ck", "--tensorboard_dir", "{}"], "--tensorboard_dir"),
    (["train", "--checkpoint_dir", "{tmp}/ck", "--tensorboard_log_dir", "{}"], "--tensorboard_dir"),
    (["train", "--dataset_dir", "{}"], "--dataset_dir"),
    (["pairs", "--dataset_dir", "{}"], "--dataset_dir"),
    (["generate", "--dataset", "kitchen-diffusion/blocked-v0", "--episodes", "1"], "MINARI_DATASETS_PATH"),
    (["render", "--out", "{}/frame.png"], "--out"),
    (["sample", "--checkpoint", CKPT, "--out", "{}/grid.png"], "--out"),
    (["evaluate", "--checkpoint", CKPT, "--json", "{}/scores.json"], "--json"),
    (["rollout", "--checkpoint", CKPT, "--out", "{}/roll.gif"], "--out"),
    (["rollout", "--checkpoint", CKPT, "--json", "{}/psnr.json"], "--json"),
]


@pytest.mark.parametrize("blocked", ["read-only", "file", "under a file"], indirect=True)
@pytest.mark.parametrize(("argv", "flag"), DESTINATIONS, ids=[" ".join(a[:2]) + f" {f}" for a, f in DESTINATIONS])
def test_a_blocked_destination_exits_2_naming_the_flag_and_the_path_before_any_work(argv, flag, blocked, tmp_path,
                                                                                    monkeypatch, capsys):
    if argv[0] == "generate":
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(blocked))
    argv = [a.replace("{}", str(blocked)).replace("{tmp}", str(tmp_path)) for a in argv]
    before = _tree(tmp_path, data_dir(), store_path())
    code, err = _run(argv, capsys)
    assert code == 2, (code, err)
    assert flag in err and str(blocked) in err and "Traceback" not in err, err
    assert _tree(tmp_path, data_dir(), store_path()) == before  # no folder made, nothing rendered or written


@pytest.mark.parametrize("blocked", ["read-only", "file", "under a file"], indirect=True)
def test_a_folder_lock_on_a_blocked_folder_is_a_user_error(blocked):
    with pytest.raises(DestinationError, match=f"this run {blocked}"), folder_lock(blocked, "this run"):
        pass


def test_user_errors_are_one_class_and_still_what_they_were():
    for cls in (DatasetError, CacheError, CheckpointError, TrainingDiverged, FolderBusy, DestinationError):
        assert issubclass(cls, UserError), cls
    assert issubclass(UserError, ValueError) and issubclass(CheckpointError, RuntimeError)
    with pytest.raises(UserError, match="--k"):
        PairsConfig(k=0).validate()


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    def bug(self):
        raise ValueError("an internal slip")
    monkeypatch.setattr(PairsConfig, "validate", bug)  # deep inside `pairs`, before any work
    code, err = _run(["pairs", "--k", "3"], capsys)
    assert code == 1, err
    assert "Traceback" in err and "an internal slip" in err and REPORT in err


def test_a_user_mistake_is_one_line_without_traceback(capsys):
    code, err = _run(["pairs", "--k", "-2"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "--k" in err, err
    assert REPORT not in err


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_a_temp_whose_owner_holds_its_lock_is_kept_whatever_its_pid_says(tmp_path):
    dead = _dead_pid()  # what a writer in another container looks like from here
    stale = tmp_path / f".best.pt.tmp{dead}.abcd1234.pt"
    stale.write_bytes(b"left by a killed run")
    held_dir = tmp_path / f".pairs-x.tmp{dead}.ef_5678a"
    held_dir.mkdir()
    fd = hold_temp(os.open(held_dir, os.O_RDONLY))
    try:
        with atomic_path(tmp_path / "latest.pt") as tmp:  # the real writer, its temp renamed to the foreign pid
            foreign = tmp.with_name(tmp.name.replace(owner_tag(), f".tmp{dead}."))
            tmp.rename(foreign)
            removed = clean_stale(tmp_path)
            assert foreign.exists() and held_dir.is_dir()
            foreign.rename(tmp)
    finally:
        let_go(fd)
    assert removed == [stale] and not stale.exists()
    assert clean_stale(tmp_path) == [held_dir]  # its owner let go: now it is stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_the_default_data_folder_is_the_repositorys_data_folder(monkeypatch):
    """In a source checkout the default is <repository>/data (git-ignored), never a folder inside
    the package (kitchen_lib/data is the data layer's code)."""
    monkeypatch.delenv("KITCHEN_DATA_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert (repo / "data").is_dir()  # data/README.md is committed
    assert data_dir() == repo / "data"
