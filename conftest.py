"""Every test, and every notebook nbval runs, uses a temporary Minari store and data folder,
so nothing in the user's ~/.minari or data/ is read or written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="kitchen-tests-"))
os.environ["MINARI_DATASETS_PATH"] = str(_SESSION_ROOT / "minari")
os.environ["KITCHEN_DATA_DIR"] = str(_SESSION_ROOT / "data")

import kitchen_lib  # noqa: E402,F401  (chooses a headless MUJOCO_GL before mujoco loads)

SMALL_ID = "kitchen-diffusion/test-small-v0"


@pytest.fixture(scope="session")
def small_dataset() -> str:
    """Three short real expert episodes (60 steps each) in the temporary store."""
    from kitchen_lib.data.datasets import is_local
    from kitchen_lib.data.generate import generate_dataset

    if not is_local(SMALL_ID):
        generate_dataset(SMALL_ID, episodes=3, seed=1, max_steps=60, progress=False)
    return SMALL_ID


@pytest.fixture(scope="session")
def small_pairs(small_dataset):
    from kitchen_lib.data.cache_builder import build_pairs
    from kitchen_lib.data.pairs import PairsConfig

    return build_pairs(PairsConfig(dataset=small_dataset, k=5, size=32), progress=False)


@pytest.fixture(scope="session")
def bench_module():
    """load(name): bench/<name>.py as a module (the scripts import their `_common` beside them)."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parent / "bench"
    sys.path.insert(0, str(bench))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # a dataclass in it looks its module up there
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def env():
    from kitchen_lib.data.kitchen import make_env

    e = make_env(render_mode="rgb_array", width=128, height=128)
    yield e
    e.close()


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--browser-screenshots", metavar="DIR", default=None,
                     help="also keep the browser test's screenshots in DIR (tests/test_browser.py)")
