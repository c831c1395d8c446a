"""Who may write where: an OS lock per folder, temp names that say whose they are, and cleanup.

A run folder (checkpoints) or a pairs cache is written by one process at a time. The lock is
`fcntl.flock` on `<folder>/.lock`: the OS releases it when the holder exits, even on kill -9,
so a crashed run never leaves a folder locked. The lock file records the holder's pid and
command line, for the message a second process gets.

Temporary files and folders carry their owner's pid in the name (`.<name>.tmp<pid>.<8 random>`,
as `tempfile.mkstemp` makes them), and their owner holds an flock on them for their life
(`hold_temp`). `clean_stale` removes those whose pid is not alive here and whose lock it can
take, so what a killed run left behind is swept by the next run of the same kind, and a live
writer's temp files are never touched, even one in another pid namespace (another container
sharing the folder: its pid means nothing here, but its lock is on the same kernel's file).
On a network filesystem shared by several machines, flock is only as good as the filesystem
makes it (NFSv4 honours it; some others do not): do not share a data folder that way.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kitchen_lib.base.errors import DestinationError, UserError

LOCK_NAME = ".lock"
_OWNER = re.compile(r"\.tmp([0-9]+)\.[a-z0-9_]{8}")  # owner_tag() + mkstemp's 8 random characters
# Lock files this process holds: a forked child (a DataLoader worker) closes its copies, so a
# crashed run's lock is not kept alive by children that outlive it for a moment.
_HELD: set[int] = set()


def _forget_locks_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)  # the parent's lock stays: it is the parent's open file that holds it
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


class FolderBusy(UserError, RuntimeError):
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


def hold_temp(fd: int) -> int:
    """Lock the temp file or folder open as `fd` for its writer's life (closing `fd` lets go):
    the sign `clean_stale` trusts, in any pid namespace. Returns `fd`."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone: just made by mkstemp/mkdtemp
    _HELD.add(fd)
    return fd


def let_go(fd: int) -> None:
    """Close a temp's lock taken by `hold_temp`."""
    _HELD.discard(fd)
    os.close(fd)


def _remove_if_unheld(p: Path) -> bool:
    """Delete `p` unless some process holds its lock; whether it went."""
    if p.is_symlink():  # no data of anyone's: never followed
        p.unlink(missing_ok=True)
        return True
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # cannot tell whose it is: leave it
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live writer, whatever its pid says here
            return False
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def clean_stale(folder: str | Path) -> list[Path]:
    """Delete temp files/folders in `folder` (not below it) whose owner is gone; returns them.

    Gone: its pid is not alive here and nobody holds its lock (`hold_temp`). The pid alone would
    not do: a writer in another container sharing the folder has a pid that is dead here."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _OWNER.search(p.name)
        if not p.name.startswith(".") or m is None or _alive(int(m.group(1))):
            continue
        if _remove_if_unheld(p):
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
    lock_file = folder / name
    told = False
    while True:
        try:  # a read-only folder, a file in the way: the user's to fix, not a crash
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise DestinationError.of(e, folder, f"the folder for {what}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock_file)
            if not wait:
                os.close(fd)
                raise FolderBusy(f"{folder} is in use by {holder}: wait for it to finish, or choose another folder "
                                 f"for {what}. Nothing was written.") from None
            if on_wait is not None and not told:
                on_wait(holder)
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder we waited for may have removed the lock file: then ours locks nothing
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD.add(fd)
    try:
        info = {"pid": os.getpid(), "command": " ".join(sys.argv) or sys.executable,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing releases the lock


def claim_folder(folder: str | Path, what: str, setup: Callable[[], None]) -> ExitStack:
    """Lock `folder` for as long as the returned stack stays open, and run `setup` holding it.

    If `setup` fails, the lock is released and a folder made here is removed again: a run that
    never started leaves no folder behind."""
    folder = Path(folder)
    created = not folder.exists()
    held = ExitStack()
    held.enter_context(folder_lock(folder, what))
    try:
        setup()
    except BaseException:
        if created:  # unlinked while still ours
            (folder / LOCK_NAME).unlink(missing_ok=True)
        held.close()
        if created:
            try:
                folder.rmdir()
            except OSError:  # not empty after all: leave it
                pass
        raise
    return held


def _umask() -> int:
    try:  # read without changing it (Linux): os.umask can only be read by setting it, racing other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_file_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp's is 0600)."""
    return (0o777 if directory else 0o666) & ~_umask()
