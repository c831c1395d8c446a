"""A scripted expert that solves kitchen tasks through FrankaKitchen-v1's own action space.

Each task is a short script of end-effector waypoints (`controller.Waypoint`), placed by
reading the scene; `controller.Controller` turns each one into joint commands. Nothing is set
by hand: every object moves because the simulated hand pushes, pulls or carries it. The
episodes are recorded in Minari's layout (`EpisodeRecord`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mujoco
import numpy as np

from kitchen_lib.data.controller import (
    FORWARD,
    FORWARD_ROLLED,
    KETTLE_HAND,
    Controller,
    ExpertConfig,
    Waypoint,
    hand_frame,
)
from kitchen_lib.data.kitchen import COMPLETE_TASKS

# A safe place for the hand between tasks: in front of the robot, above the counter.
TRANSIT_POS = np.array([-0.3, 0.3, 2.2])

# --- task scripts -------------------------------------------------------------------
# Each script is a generator of waypoints. It reads the scene (site positions, joint
# angles) to place them, and is told nothing else: the env decides success.

Script = Callable[["Scene"], Iterator[Waypoint]]


@dataclass
class Scene:
    model: mujoco.MjModel
    data: mujoco.MjData
    rng: np.random.Generator

    def site(self, name: str) -> np.ndarray:
        sid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, name)
        return self.data.site_xpos[sid].copy()

    def qpos(self, i: int) -> float:
        return float(self.data.qpos[i])

    def jitter(self, scale: float) -> np.ndarray:
        return self.rng.uniform(-scale, scale, 3)


def _p(*xyz: float) -> np.ndarray:
    return np.array(xyz, dtype=float)


def microwave(s: Scene, turn: float = 0.0, attempts: int = 2) -> Iterator[Waypoint]:
    """Grasp the vertical handle and pull the door open along its arc about the hinge.

    A vertical bar can turn inside a closed parallel grip, so the hand need not turn with
    the door: measured over 4 seeds, turning it with the door (turn=1) opened the door to
    -0.45..-0.58 rad before the handle slipped, turning it by half to -0.4, not turning it
    to -0.75. If the handle slips out early anyway, grasp it again where it is and pull on.
    """
    hinge_xy = np.array([-1.128, 0.455])
    for _ in range(attempts):
        if s.qpos(22) < -0.65:
            break
        handle = s.site("microhandle_site")
        a_now = np.arctan2(*(handle[:2] - hinge_xy)[::-1])
        r = np.linalg.norm(handle[:2] - hinge_xy)
        door = s.qpos(22)
        rot = hand_frame([-np.sin(turn * door), np.cos(turn * door), 0], [np.cos(turn * door), np.sin(turn * door), 0])
        approach = rot[:, 2]
        yield Waypoint(handle - 0.12 * approach, rot, +1, tol=0.02)
        yield Waypoint(handle - 0.01 * approach, rot, +1, tol=0.008, exact=True)
        yield Waypoint(handle - 0.01 * approach, rot, -1, max_steps=6, tol=0.0)
        for da in np.linspace(-0.1, -0.95 - door, 9):
            a = a_now + da
            p = np.r_[hinge_xy + r * np.array([np.cos(a), np.sin(a)]), handle[2]]
            d = door + da
            rot = hand_frame([-np.sin(turn * d), np.cos(turn * d), 0], [np.cos(turn * d), np.sin(turn * d), 0])
            yield Waypoint(p - 0.01 * rot[:, 2], rot, -1, tol=0.02, max_steps=12, exact=True)
        yield Waypoint(s.site("end_effector") - 0.06 * rot[:, 2], rot, +1, max_steps=10)


def kettle(s: Scene) -> Iterator[Waypoint]:
    """Grasp the handle from above, lift, carry it onto the back burner, set it down.

    The hand leans back towards the robot (KETTLE_HAND): at the back burner a vertical hand
    is at the arm's reach and cannot lift off the handle again. Approach and retreat run
    along the hand's own axis, as the open fingers clear the 6.4 cm handle by under a
    centimetre a side.
    """
    handle = s.site("kettle_site")
    axis = KETTLE_HAND[:, 2]
    yield Waypoint(handle - 0.18 * axis, KETTLE_HAND, +1, tol=0.02)
    yield Waypoint(handle - 0.10 * axis, KETTLE_HAND, +1, tol=0.004, max_steps=30, exact=True)
    yield Waypoint(handle + 0.01 * axis, KETTLE_HAND, +1, tol=0.008, exact=True)
    yield Waypoint(handle + 0.01 * axis, KETTLE_HAND, -1, max_steps=8, tol=0.0)
    # Past the threshold with margin, short of the reach limit (the goal is y = 0.75).
    goal = np.array([-0.23, 0.70 + s.rng.uniform(-0.015, 0.015), handle[2]])
    yield Waypoint(handle + _p(0, 0, 0.08), KETTLE_HAND, -1, tol=0.02, exact=True)
    yield Waypoint(goal + _p(0, 0, 0.08), KETTLE_HAND, -1, tol=0.02, max_steps=80, exact=True)
    yield Waypoint(goal + 0.01 * axis, KETTLE_HAND, -1, tol=0.015, max_steps=30, exact=True)
    yield Waypoint(goal + 0.01 * axis, KETTLE_HAND, +1, max_steps=6, tol=0.0)
    yield Waypoint(goal - 0.12 * axis, KETTLE_HAND, +1, tol=0.03, max_steps=20, exact=True)


def light_switch(s: Scene) -> Iterator[Waypoint]:
    """Closed, rolled hand beside the lever's tip, then push it to the left (-x)."""
    light = s.site("light_site")
    yield Waypoint(light + _p(0.08, -0.08, 0.0), FORWARD_ROLLED, -1, tol=0.02)
    yield Waypoint(light + _p(0.06, 0.0, -0.01), FORWARD_ROLLED, -1, tol=0.015)
    yield Waypoint(light + _p(-0.2, 0.0, -0.01), FORWARD_ROLLED, -1, tol=0.02, max_steps=50)
    yield Waypoint(light + _p(-0.15, -0.12, 0.0), FORWARD_ROLLED, -1, tol=0.03)


def slide_cabinet(s: Scene) -> Iterator[Waypoint]:
    """Closed hand left of the handle, then push the door to the right (+x)."""
    slide = s.site("slide_site")
    yield Waypoint(slide + _p(-0.1, -0.12, 0.0), FORWARD_ROLLED, -1, tol=0.02)
    yield Waypoint(slide + _p(-0.07, -0.01, 0.0), FORWARD_ROLLED, -1, tol=0.015)
    yield Waypoint(slide + _p(0.38, -0.01, 0.0), FORWARD_ROLLED, -1, tol=0.02, max_steps=60)
    yield Waypoint(slide + _p(0.3, -0.12, 0.0), FORWARD_ROLLED, -1, tol=0.03)


TASK_SCRIPTS: dict[str, Script] = {
    "microwave": microwave,
    "kettle": kettle,
    "light switch": light_switch,
    "slide cabinet": slide_cabinet,
}


def transit(s: Scene) -> Iterator[Waypoint]:
    """Back off to a safe pose between tasks, so the hand never sweeps through the scene."""
    yield Waypoint(TRANSIT_POS, FORWARD, +1, tol=0.05, max_steps=40)


@dataclass
class EpisodeRecord:
    """One episode, in Minari's layout: observations has one more row than actions."""

    observations: np.ndarray  # (T+1, 59)
    actions: np.ndarray  # (T, 9)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,)
    truncations: np.ndarray  # (T,)
    achieved_goal: dict[str, np.ndarray]  # task -> (T+1, d)
    desired_goal: dict[str, np.ndarray]  # task -> (T+1, d)
    tasks: tuple[str, ...]  # in the order attempted
    completed: list[str]  # in the order the env reported them
    seed: int


class _Recorder:
    """Collects one episode's steps in Minari's layout."""

    def __init__(self, env, obs: dict) -> None:
        self.goal_keys = list(env.unwrapped.goal)
        self.observations = [obs["observation"].copy()]
        self.achieved = {t: [obs["achieved_goal"][t].copy()] for t in self.goal_keys}
        self.desired = {t: [obs["desired_goal"][t].copy()] for t in self.goal_keys}
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terms: list[bool] = []
        self.truncs: list[bool] = []
        self.completed: list[str] = []

    def add(self, action: np.ndarray, obs: dict, reward: float, term: bool, trunc: bool, info: dict) -> None:
        self.observations.append(obs["observation"].copy())
        for t in self.goal_keys:
            self.achieved[t].append(obs["achieved_goal"][t].copy())
            self.desired[t].append(obs["desired_goal"][t].copy())
        self.actions.append(action)
        self.rewards.append(reward)
        self.terms.append(term)
        self.truncs.append(trunc)
        self.completed += [t for t in info["step_task_completions"] if t not in self.completed]

    def __len__(self) -> int:
        return len(self.actions)

    def finish(self, tasks: tuple[str, ...], seed: int) -> EpisodeRecord:
        self.truncs[-1] = True  # the episode ends here whatever the env said
        return EpisodeRecord(
            observations=np.asarray(self.observations),
            actions=np.asarray(self.actions, dtype=np.float32),
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminations=np.asarray(self.terms, dtype=bool),
            truncations=np.asarray(self.truncs, dtype=bool),
            achieved_goal={t: np.asarray(v) for t, v in self.achieved.items()},
            desired_goal={t: np.asarray(v) for t, v in self.desired.items()},
            tasks=tuple(tasks),
            completed=self.completed,
            seed=seed,
        )


def follow(env, ctrl: Controller, rec: _Recorder, wp: Waypoint, obs: dict, settle: int, max_steps: int) -> dict:
    """Step `env` towards `wp` with `ctrl`, recording each step in `rec`, until the hand has been
    within `wp.tol` of it on more than `settle` steps, `wp.max_steps` steps have passed, or the
    episode has `max_steps` steps. `obs` is the env's latest observation; returns the new latest."""
    within = 0
    for _ in range(wp.max_steps):
        a = ctrl.action(wp, obs["observation"][:9])
        obs, r, term, trunc, info = env.step(a)
        rec.add(a, obs, r, term, trunc, info)
        if len(rec) >= max_steps:
            break
        if np.linalg.norm(wp.pos - ctrl.hand_pos) < wp.tol:
            within += 1
            if within > settle:
                break
    return obs


def run_episode(
    env, seed: int, tasks: tuple[str, ...] = COMPLETE_TASKS, shuffle: bool = True,
    max_steps: int = 900, cfg: ExpertConfig | None = None, debug: bool = False,
) -> EpisodeRecord:
    """Run the expert for one seeded episode in `env` (a FrankaKitchen-v1 from make_env).

    The seed fixes the task order (when shuffled), the hand's speed, waypoint jitter and
    action noise, so every seed gives a different episode.
    """
    cfg = cfg or ExpertConfig()
    rng = np.random.default_rng(seed)
    order = list(tasks)
    if shuffle:
        rng.shuffle(order)
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    ctrl = Controller(u.model, u.data, cfg, rng)
    ctrl.speed = 1.0 + rng.uniform(-cfg.speed_jitter, cfg.speed_jitter)
    ctrl.reset(obs["observation"][:9])
    scene = Scene(u.model, u.data, rng)
    rec = _Recorder(env, obs)

    def waypoints() -> Iterator[Waypoint]:
        for task in order:
            yield from transit(scene)
            yield from TASK_SCRIPTS[task](scene)
        yield from transit(scene)

    for wp in waypoints():
        if not wp.exact:
            wp.pos = wp.pos + scene.jitter(cfg.waypoint_jitter)
        n0 = len(rec)
        obs = follow(env, ctrl, rec, wp, obs, cfg.settle_steps, max_steps)
        if debug:
            q = u.data.qpos
            print(f"  {len(rec) - n0:3d}/{wp.max_steps:3d} steps, wp {wp.pos.round(3)} hand {ctrl.hand_pos.round(3)} "
                  f"microwave {q[22]:.2f} kettle {q[23:26].round(3)} fingers {q[7:9].round(3)}")
        if len(rec) >= max_steps:
            break
    return rec.finish(tuple(order), seed)


def random_episode(env, seed: int, max_steps: int = 250) -> EpisodeRecord:
    """Smoothly varying random actions (a random walk in action space), for scale tests."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rec = _Recorder(env, obs)
    a = np.zeros(9)
    while len(rec) < max_steps:
        a = np.clip(0.9 * a + 0.3 * rng.normal(size=9), -1, 1)
        obs, r, term, trunc, info = env.step(a)
        rec.add(a.astype(np.float32), obs, r, term, trunc, info)
    return rec.finish((), seed)
