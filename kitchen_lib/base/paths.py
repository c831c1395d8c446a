"""Where generated files go."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kitchen_lib.base.errors import DestinationError
from kitchen_lib.base.locks import hold_temp, let_go, owner_tag, user_file_mode


def data_dir() -> Path:
    """`$KITCHEN_DATA_DIR`, else the repository's `data/` in a source checkout, else `./data`."""
    env = os.environ.get("KITCHEN_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]  # kitchen_lib/base/paths.py -> the repository (a source checkout)
    is_checkout = (repo / "pyproject.toml").is_file() and (repo / "data").is_dir()
    return repo / "data" if is_checkout else Path.cwd() / "data"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    Readers never see a half-written file, and a failed write leaves the old file as it was.
    The file is fsynced before the rename and the folder after it, so a power cut leaves the old
    file or the new one, never an empty one under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The real suffix stays last: image and video writers choose the format by it.
    # The owner's pid in the name lets the next run sweep what a killed one left (locks.clean_stale).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{owner_tag()}", suffix=path.suffix, dir=path.parent)
    hold_temp(fd)  # held until renamed or deleted: no sweeper takes it, in any pid namespace
    try:
        yield Path(tmp)
        # mkstemp's 0600 would outlive the rename: keep the mode of the file replaced, else the umask's
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else user_file_mode())
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        let_go(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's bytes to the disk (the writer may have closed it already)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk. Some file systems
    refuse to fsync a folder: there the rename is as durable as they make it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _nearest(folder: Path) -> Path:
    """`folder`, or the nearest path above it that exists: where it would be made."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(folder: Path) -> None:
    """Create and delete a file in `folder`: the one test that read-only mounts, ACLs and
    permissions all answer truthfully (os.access does not, for root)."""
    fd, name = tempfile.mkstemp(prefix=f".probe{owner_tag()}", dir=folder)
    os.close(fd)
    os.unlink(name)


def check_destination(folder: str | Path, flag: str) -> Path:
    """Fail now, not after the work, if files cannot be written in `folder` (given by `flag`).

    Nothing is created: a missing folder is judged by the nearest one above it that exists,
    where it would be made. A DestinationError names the flag and the path."""
    folder = Path(folder)
    nearest = _nearest(folder)
    if not nearest.is_dir():
        where = "is a file" if nearest == folder else f"is under {nearest}, which is a file"
        raise DestinationError(f"{flag} {folder}: {where}, not a folder; choose a folder")
    try:
        _probe(nearest)
    except OSError as e:
        raise DestinationError.of(e, folder, flag) from None
    return folder
