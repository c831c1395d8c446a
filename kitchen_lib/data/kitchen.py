"""Franka Kitchen facts in one place: observation layout, tasks, and the environment.

The 59-dim observation of `FrankaKitchen-v1` (and of D4RL's kitchen datasets) is
    [0:9]   robot qpos (7 arm joints, 2 fingers)
    [9:18]  robot qvel
    [18:39] object qpos  (= data.qpos[9:30])
    [39:59] object qvel  (= data.qvel[9:29])
so the full MuJoCo state of any recorded step can be restored without replaying actions.
"""

from __future__ import annotations

import numpy as np

OBS_DIM = 59

# The four tasks of D4RL's complete-v2, in the order its demonstrations perform them.
COMPLETE_TASKS: tuple[str, ...] = ("microwave", "kettle", "light switch", "slide cabinet")

# Indices into qpos and the goals the env uses (gymnasium_robotics kitchen_env.py).
TASK_QPOS_INDICES: dict[str, np.ndarray] = {
    "bottom burner": np.array([11, 12]),
    "top burner": np.array([15, 16]),
    "light switch": np.array([17, 18]),
    "slide cabinet": np.array([19]),
    "hinge cabinet": np.array([20, 21]),
    "microwave": np.array([22]),
    "kettle": np.array([23, 24, 25, 26, 27, 28, 29]),
}
TASK_GOALS: dict[str, np.ndarray] = {
    "bottom burner": np.array([-0.88, -0.01]),
    "top burner": np.array([-0.92, -0.01]),
    "light switch": np.array([-0.69, -0.05]),
    "slide cabinet": np.array([0.37]),
    "hinge cabinet": np.array([0.0, 1.45]),
    "microwave": np.array([-0.75]),
    "kettle": np.array([-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),
}
BONUS_THRESH = 0.3

# Object joints worth plotting, by name -> qpos index.
OBJECT_JOINTS: dict[str, int] = {
    "light switch": 17,
    "slide cabinet": 19,
    "microwave door": 22,
    "kettle x": 23,
    "kettle y": 24,
    "kettle z": 25,
}

# env.render()'s default free camera for FrankaKitchen-v1.
DEFAULT_CAMERA = {"distance": 2.2, "azimuth": 70.0, "elevation": -35.0, "lookat": (-0.2, 0.5, 2.0)}


def state_from_observation(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 59-dim observation into MuJoCo (qpos[30], qvel[29]).

    The kettle's free-joint quaternion (qpos[26:30]) is renormalised: recorded values
    carry observation noise and MuJoCo expects a unit quaternion.
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape[-1] != OBS_DIM:
        raise ValueError(f"expected a {OBS_DIM}-dim kitchen observation, got shape {obs.shape}")
    qpos = np.concatenate([obs[0:9], obs[18:39]])
    qvel = np.concatenate([obs[9:18], obs[39:59]])
    quat = qpos[26:30]
    norm = np.linalg.norm(quat)
    qpos[26:30] = quat / norm if norm > 0 else np.array([1.0, 0.0, 0.0, 0.0])
    return qpos, qvel


def task_distance(qpos: np.ndarray, task: str) -> float:
    """Distance of a task's joints from its goal; the env counts < BONUS_THRESH as done."""
    return float(np.linalg.norm(qpos[TASK_QPOS_INDICES[task]] - TASK_GOALS[task]))


def completed_tasks(obs: np.ndarray, tasks: tuple[str, ...] = COMPLETE_TASKS) -> list[str]:
    """Tasks whose goal is met in a 59-dim observation (same test as the env's)."""
    qpos, _ = state_from_observation(obs)
    return [t for t in tasks if task_distance(qpos, t) < BONUS_THRESH]


def make_env(tasks: tuple[str, ...] = COMPLETE_TASKS, max_episode_steps: int = 600, **kwargs):
    """A `FrankaKitchen-v1` env. Imports gymnasium lazily: it is slow to import."""
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    return gym.make(
        "FrankaKitchen-v1",
        tasks_to_complete=list(tasks),
        max_episode_steps=max_episode_steps,
        terminate_on_tasks_completed=False,
        **kwargs,
    )
