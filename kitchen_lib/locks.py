"""Who may write where: an OS lock per folder, temp names that say whose they are, and cleanup.

A run folder (checkpoints) or a pairs cache is written by one process at a time. The lock is
`fcntl.flock` on `<folder>/.lock`: the OS releases it when the holder exits, even on kill -9,
so a crashed run never leaves a folder locked. The lock file records the holder's pid and
command line, for the message a second process gets.

Temporary files and folders carry their owner's pid in the name (`.<name>.tmp<pid>.<random>`);
`clean_stale` removes those whose owner is gone, so what a killed run left behind is swept by
the next run of the same kind, and a live writer's temp files are never touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
_OWNER = re.compile(r"\.tmp(\d+)\.")


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


def owner_tag() -> str:
    """The part of a temp name that says which process made it: `.tmp<pid>.`"""
    return f".tmp{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(folder: str | Path) -> list[Path]:
    """Delete temp files/folders in `folder` (not below it) whose owner process is gone; returns them."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _OWNER.search(p.name)
        if not p.name.startswith(".") or m is None or _alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextmanager
def folder_lock(folder: str | Path, what: str, wait: bool = False, on_wait=None, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold `folder`'s lock (the file `name` in it) for the block; the folder is created if missing.

    wait=False: raise FolderBusy at once if a live process holds it (naming it and `what` it
    is doing). wait=True: block until it is free, calling on_wait(holder) once first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / name
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock_file)
            if not wait:
                raise FolderBusy(f"{folder} is in use by {holder}: wait for it to finish, or choose another folder "
                                 f"for {what}. Nothing was written.") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "command": " ".join(sys.argv) or sys.executable,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def user_file_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp's is 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask
