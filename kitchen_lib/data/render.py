"""Render kitchen frames fast from recorded states, never by replaying actions.

The MuJoCo state of any step is restored from its 59-dim observation and drawn by one
reused offscreen `mujoco.Renderer`, straight at the target size, from the same free camera
as `env.render()`. On a CPU (software OpenGL) nearly all the cost is the four lights'
shadow passes, each re-drawing the 141k-face scene, hence two qualities:

- "faithful": shadows on, shadow map 1024 (env.render() uses 4096): looks like env.render().
- "fast": no shadows, no reflections, no multisampling: many times cheaper than env.render()
  on a CPU (bench/render.py measures it). The course's default; notebook 01 shows both side by side.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import mujoco
import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.kitchen import DEFAULT_CAMERA, state_from_observation

QUALITIES = ("fast", "faithful")
DEFAULT_QUALITY = "fast"
MIN_SIZE, MAX_SIZE = 8, 1024


def kitchen_model_path() -> Path:
    """FrankaKitchen-v1's own model file (found without importing gymnasium_robotics,
    whose import is slow and prints to stdout)."""
    import importlib.util

    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("gymnasium_robotics is not installed: pip install gymnasium-robotics")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "envs/assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml"


def check_render_args(size: int, quality: str) -> None:
    if quality not in QUALITIES:
        raise UserError(f"unknown render quality {quality!r}: choose one of {QUALITIES}")
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size {size!r}: unsupported frame size; use a square size from {MIN_SIZE} to {MAX_SIZE} pixels, "
                         f"e.g. 64 or 128")


class KitchenRenderer:
    """Draws (size, size, 3) uint8 frames of the kitchen from 59-dim observations."""

    def __init__(self, size: int = 128, quality: str = DEFAULT_QUALITY) -> None:
        check_render_args(size, quality)
        self.size, self.quality = int(size), quality
        self.model = mujoco.MjModel.from_xml_path(str(kitchen_model_path()))
        # The model asks for 2560x1920 offscreen buffers and a 4096^2 shadow map; software
        # OpenGL keeps them in system memory, so size them to what is actually drawn.
        self.model.vis.global_.offwidth = self.model.vis.global_.offheight = self.size
        if quality == "faithful":
            self.model.vis.quality.shadowsize = 1024
        else:
            self.model.vis.quality.offsamples = 0
            self.model.vis.quality.shadowsize = 16  # shadows are off: no map needed
        self.data = mujoco.MjData(self.model)
        try:
            self._renderer = mujoco.Renderer(self.model, height=self.size, width=self.size, max_geom=10_000)
        except Exception as e:
            raise RuntimeError(
                f"could not open an OpenGL context for MuJoCo (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {e}\n"
                "On a machine without a display, set MUJOCO_GL=egl (or osmesa) before Python starts, "
                "or import kitchen_lib before mujoco so it can choose one."
            ) from e
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.camera.distance = DEFAULT_CAMERA["distance"]
        self.camera.azimuth = DEFAULT_CAMERA["azimuth"]
        self.camera.elevation = DEFAULT_CAMERA["elevation"]
        self.camera.lookat[:] = DEFAULT_CAMERA["lookat"]

    def set_state(self, obs: np.ndarray) -> None:
        qpos, qvel = state_from_observation(obs)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)

    def render(self, obs: np.ndarray) -> np.ndarray:
        """One frame (size, size, 3) uint8 of the state in a 59-dim observation."""
        self.set_state(obs)
        self._renderer.update_scene(self.data, camera=self.camera)
        if self.quality == "fast":
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return self._renderer.render().copy()

    def render_many(self, observations: np.ndarray) -> np.ndarray:
        """(N, 59) observations -> (N, size, size, 3) uint8 frames."""
        out = np.empty((len(observations), self.size, self.size, 3), np.uint8)
        for i, obs in enumerate(observations):
            out[i] = self.render(obs)
        return out

    def close(self) -> None:
        # Closing explicitly avoids EGL errors from destructors at interpreter exit.
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> KitchenRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- all cores: worker processes, each with its own renderer ---------------------------

_worker_renderer: KitchenRenderer | None = None


def _init_worker(size: int, quality: str) -> None:
    global _worker_renderer  # one renderer per worker process, made once
    # Mesa's software rasteriser (llvmpipe) threads over every core by itself. "fast" is bound
    # by per-process geometry work and gains from one thread per worker; "faithful" is bound by
    # shadow rasterisation, which one process already spreads over the cores, and would lose
    # (bench/render.py). A user's own LP_NUM_THREADS wins.
    if quality == "fast":
        os.environ.setdefault("LP_NUM_THREADS", "1")
    import kitchen_lib  # noqa: F401  (chooses MUJOCO_GL in a fresh process)

    _worker_renderer = KitchenRenderer(size, quality)


def _render_chunk(job: tuple[object, np.ndarray]) -> tuple[object, np.ndarray]:
    key, observations = job
    assert _worker_renderer is not None
    return key, _worker_renderer.render_many(observations)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class RenderPool:
    """Worker processes, each with its own renderer, kept for as many calls as needed.

    With workers=1 it renders in this process. Use as a context manager.
    """

    def __init__(self, size: int, quality: str = DEFAULT_QUALITY, workers: int | None = None) -> None:
        check_render_args(size, quality)
        self.size, self.quality = size, quality
        self.workers = workers or default_workers()
        self._local: KitchenRenderer | None = None
        self._pool = None
        if self.workers == 1:
            self._local = KitchenRenderer(size, quality)
        else:
            # spawn: a forked child would inherit the parent's GL state.
            ctx = mp.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(size, quality))

    def imap(self, jobs: Iterable[tuple[object, np.ndarray]]) -> Iterator[tuple[object, np.ndarray]]:
        """Render (key, observations) jobs; yields (key, frames) in order, consuming jobs lazily."""
        if self._local is not None:
            for key, obs in jobs:
                yield key, self._local.render_many(obs)
        else:
            yield from self._pool.imap(_render_chunk, jobs, chunksize=1)

    def render(self, observations: np.ndarray, chunk: int = 32) -> np.ndarray:
        """(N, 59) -> (N, size, size, 3) uint8."""
        jobs = ((i, observations[i : i + chunk]) for i in range(0, len(observations), chunk))
        parts = [frames for _, frames in self.imap(jobs)]
        return np.concatenate(parts) if parts else np.empty((0, self.size, self.size, 3), np.uint8)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        if self._pool is not None:
            self._pool.close()
            self._pool.join()

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_chunks(
    jobs: Iterable[tuple[object, np.ndarray]], size: int, quality: str = DEFAULT_QUALITY, workers: int | None = None,
) -> Iterator[tuple[object, np.ndarray]]:
    """Render (key, observations) jobs on `workers` processes; yields (key, frames) in order."""
    with RenderPool(size, quality, workers) as pool:
        yield from pool.imap(jobs)


def render_frames(
    observations: np.ndarray, size: int, quality: str = DEFAULT_QUALITY, workers: int | None = None, chunk: int = 32,
) -> np.ndarray:
    """(N, 59) -> (N, size, size, 3) uint8, using every core."""
    with RenderPool(size, quality, workers) as pool:
        return pool.render(observations, chunk)
