"""Where generated files go."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def data_dir() -> Path:
    """`$KITCHEN_DATA_DIR`, else the repository's `data/` in a source checkout, else `./data`."""
    env = os.environ.get("KITCHEN_DATA_DIR")
    if env:
        return Path(env)
    repo_data = Path(__file__).resolve().parents[1] / "data"
    return repo_data if repo_data.is_dir() else Path.cwd() / "data"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    Readers never see a half-written file, and a failed write leaves the old file as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The real suffix stays last: image and video writers choose the format by it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
