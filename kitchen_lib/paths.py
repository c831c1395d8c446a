"""Where generated files go."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """`$KITCHEN_DATA_DIR`, else the repository's `data/` in a source checkout, else `./data`."""
    env = os.environ.get("KITCHEN_DATA_DIR")
    if env:
        return Path(env)
    repo_data = Path(__file__).resolve().parents[1] / "data"
    return repo_data if repo_data.is_dir() else Path.cwd() / "data"
