"""Exploration episodes: the arm driven through the expert's controller to random poses.

A world model learns what the arm's commands do only where its data has been. The scripted
expert (expert.py) repeats four task motions; a learner driving the arm (moves of a few
centimetres along x, y or z, turns, the gripper) soon leaves them. These episodes cover the
space around them, through the same `Controller` and the env's own action space, so every
frame is one a driver can reach. Nothing is set by hand: objects move only when the hand
pushes or pulls them.

An episode is a chain of targets until it has `max_steps` env steps. Each target is (shares of
all targets, `ExploreConfig`):

- far (50%): a hand position uniform in the box x in [-0.50, 0.10], y in [0.30, 0.60],
  z in [1.85, 2.35] m (world frame: the robot's base at (0, 0, 1.8), the counter and stove
  tops at z = 1.6, the cabinets' and the oven's fronts at y = 0.6-0.7, the microwave left of
  x = -0.6), never inside the kettle (within 0.15 m of it, below z = 2.0), in a random
  orientation (below). A first box, x to 0.30 and y from 0.20, reached 67% of these targets
  and swung the arm behind its base (y = -0.4) chasing the ones close to it or on its right;
  this one, 86% (3 seeds of 400 steps), the hand never behind its start (y = 0.12).
- near (30%): a move of 3-10 cm along each of one to three axes from where the hand is, and
  half the time a turn of up to 0.5 rad about a random axis: the drive widget's commands.
- touch (20%): one of the objects' sites, chosen uniformly (TOUCHES: the microwave handle, the
  kettle, the light switch, the slide cabinet's handle from either side, the four burner knobs,
  the hinge doors' handles): stand off 12 cm along the hand's axis, go in, close the gripper
  on it (or push with the closed hand), move it 2-30 cm (per site) in a direction that
  opens, slides or turns it, let go and back off.

Orientation of a far target: the hand's approach axis points forward (+y), tilted down by a
pitch uniform in [0, 90] degrees and swung sideways by a yaw uniform in [-35, 35] degrees, then
rolled about itself by an angle uniform in [-90, 90] degrees (0: fingers side by side along x).
This holds the expert's orientations (forward, forward rolled, the kettle's down-and-back).
Gripper: every far or near target opens or closes it, each with probability 1/2.
Speed: each target's hand speed is the controller's (3 cm a step) times U[0.5, 1.3], and the
hand dwells 0-6 steps where it arrives.

Never through the counter: targets stay above it, and between places more than 20 cm apart
(horizontally) the hand first rises to z = 2.15 in front of the cabinets (y <= 0.45), travels
there and then goes down, as expert.transit does between tasks.

Reach: a target the arm cannot reach is given up after its step limit (50 steps for a far or
near target). On 5 seeded episodes of 900 steps (`python bench/explore.py`,
bench/results/explore.json) the hand reached 69% of the far targets, 90% of the near ones and
73% of the travel points; 11 of 17 touches reached their stand-off, and the episodes moved the
light switch (2 of 5), the slide cabinet (1), the microwave door (2), the kettle (3) and two
knobs (1 each); the hinge doors' handles (z = 2.6) were never reached. The hand's positions
spanned 0.84 x 0.40 x 0.74 m (5th to 95th percentile per axis), the expert's 0.86 x 0.63 x 0.79 m
over the same seeds; the gripper opened 25 and closed 29 times (the expert's 15 and 15).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import mujoco
import numpy as np

from kitchen_lib.data.controller import FORWARD, FORWARD_ROLLED, KETTLE_HAND, Controller, ExpertConfig, Waypoint
from kitchen_lib.data.expert import EpisodeRecord, Scene, _Recorder, follow
from kitchen_lib.data.kitchen import state_from_observation


@dataclass(frozen=True)
class ExploreConfig:
    """Where and how the exploring hand goes (the module docstring gives the reasons)."""

    box_lo: tuple[float, float, float] = (-0.50, 0.30, 1.85)  # m, world frame
    box_hi: tuple[float, float, float] = (0.10, 0.60, 2.35)
    far_fraction: float = 0.5
    touch_fraction: float = 0.2  # the rest are near moves
    near_step: tuple[float, float] = (0.03, 0.10)  # m along each moved axis
    near_turn: float = 0.5  # rad, at most
    max_pitch: float = np.pi / 2  # 0: pointing forward, pi/2: down
    max_yaw: float = 0.6  # rad, left or right
    max_roll: float = np.pi / 2  # rad, about the hand's own axis
    safe_z: float = 2.15  # height of travel between far-apart places
    safe_y: float = 0.45  # and never further forward than this on the way
    travel_above: float = 0.2  # m: targets further apart than this (horizontally) are reached via safe_z
    kettle_clearance: float = 0.15  # m around the kettle, below z = 2.0, where no far target goes
    speed: tuple[float, float] = (0.5, 1.3)  # times the controller's max_speed, per target
    dwell: int = 6  # at most, steps at a reached target
    target_steps: int = 50  # a far or near target not reached in this many steps is given up
    arm: ExpertConfig = field(default_factory=ExpertConfig)  # the controller's gains and action noise


@dataclass(frozen=True)
class Touch:
    """How to touch one object site: the hand's orientation, where the contact is, what then."""

    site: str
    rot: np.ndarray  # hand orientation (controller.hand_frame)
    offset: tuple[float, float, float]  # contact point minus the site, m
    grasp: bool  # close the gripper on it; False: push with the closed hand
    moves: tuple[tuple[float, float, float], ...]  # directions that open, slide or turn it (one chosen)
    reach: tuple[float, float]  # how far to move it, m (uniform)
    turn: float = 0.0  # and a roll of the hand about its axis of up to this, rad (the knobs)


_KNOB_MOVES = ((1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0))
_KETTLE_MOVES = ((1.0, 0.0, 0.2), (-1.0, 0.0, 0.2), (0.0, 1.0, 0.2), (0.0, -1.0, 0.2), (0.0, 0.0, 1.0))
TOUCHES: tuple[Touch, ...] = (
    # Grasp the handle and pull: the door swings towards the robot about its hinge on the left.
    Touch("microhandle_site", FORWARD, (0.0, -0.01, 0.0), True, ((-0.3, -1.0, 0.0),), (0.05, 0.15)),
    # Grasp the handle from above (the expert's hand) and slide or lift the kettle a little.
    Touch("kettle_site", KETTLE_HAND, tuple(0.01 * KETTLE_HAND[:, 2]), True, _KETTLE_MOVES, (0.03, 0.10)),
    # The closed, rolled hand right of the lever's tip, pushing it left (as the expert does).
    Touch("light_site", FORWARD_ROLLED, (0.06, 0.0, -0.01), False, ((-1.0, 0.0, 0.0),), (0.08, 0.26)),
    # The slide cabinet's handle pushed right from its left side, or left (shut) from its right.
    Touch("slide_site", FORWARD_ROLLED, (-0.07, -0.01, 0.0), False, ((1.0, 0.0, 0.0),), (0.10, 0.30)),
    Touch("slide_site", FORWARD_ROLLED, (0.07, -0.01, 0.0), False, ((-1.0, 0.0, 0.0),), (0.10, 0.30)),
    # A knob gripped at its tip and twisted (its axis points at the robot), nudged a little.
    *(Touch(f"knob{i}_site", FORWARD, (0.0, 0.01, 0.0), True, _KNOB_MOVES, (0.0, 0.02), turn=0.8) for i in range(1, 5)),
    # The hinge doors' handles gripped and pulled towards the robot (both doors open that way).
    Touch("hinge_site1", FORWARD, (0.0, -0.01, 0.0), True, ((0.0, -1.0, 0.0),), (0.05, 0.15)),
    Touch("hinge_site2", FORWARD, (0.0, -0.01, 0.0), True, ((0.0, -1.0, 0.0),), (0.05, 0.15)),
)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` rad about `axis` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * K @ K


def random_orientation(rng: np.random.Generator, cfg: ExploreConfig) -> np.ndarray:
    """A hand orientation (columns x, finger spread, approach) drawn as the module docstring says."""
    pitch = rng.uniform(0.0, cfg.max_pitch)
    yaw = rng.uniform(-cfg.max_yaw, cfg.max_yaw)
    approach = np.array([np.sin(yaw) * np.cos(pitch), np.cos(yaw) * np.cos(pitch), -np.sin(pitch)])
    spread = np.array([np.cos(yaw), -np.sin(yaw), 0.0])  # horizontal, square to the approach
    rot = np.column_stack([np.cross(spread, approach), spread, approach])
    return rotation(approach, rng.uniform(-cfg.max_roll, cfg.max_roll)) @ rot


def _plausible(rot: np.ndarray) -> bool:
    """A turned hand still points forward or down (not back at the robot, not up)."""
    return rot[1, 2] > -0.1 and rot[2, 2] < 0.3


@dataclass
class _Explorer:
    """Draws the targets of one episode, reading the scene as it goes (a generator of waypoints)."""

    scene: Scene
    ctrl: Controller
    cfg: ExploreConfig
    rng: np.random.Generator
    grip: float = 1.0  # the fingers start open

    def waypoints(self) -> Iterator[tuple[Waypoint, int, str]]:
        """(waypoint, steps to dwell once reached, kind) for ever; the episode stops taking them."""
        cfg = self.cfg
        while True:
            u = self.rng.random()
            if u < cfg.touch_fraction:
                yield from self._touch(TOUCHES[self.rng.integers(len(TOUCHES))])
                continue
            far = u < cfg.touch_fraction + cfg.far_fraction
            pos, rot = self._far() if far else self._near()
            self.grip = float(self.rng.choice([-1.0, 1.0]))
            self.ctrl.speed = self.rng.uniform(*cfg.speed)
            yield from self._travel(pos, rot)
            yield (Waypoint(pos, rot, self.grip, tol=0.02, max_steps=cfg.target_steps),
                   int(self.rng.integers(cfg.dwell + 1)), "far" if far else "near")

    def _far(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, kettle = self.cfg, self.scene.site("kettle_site")
        while True:
            pos = self.rng.uniform(cfg.box_lo, cfg.box_hi)
            if np.linalg.norm(pos[:2] - kettle[:2]) > cfg.kettle_clearance or pos[2] > 2.0:
                return pos, random_orientation(self.rng, cfg)

    def _near(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, hand, rot = self.cfg, self.ctrl.hand_pos, self.ctrl.hand_rot
        axes = self.rng.permutation(3)[: self.rng.integers(1, 4)]
        step = np.zeros(3)
        step[axes] = self.rng.uniform(*cfg.near_step, len(axes)) * self.rng.choice([-1.0, 1.0], len(axes))
        if self.rng.random() < 0.5:
            turned = rotation(self.rng.normal(size=3), self.rng.uniform(-cfg.near_turn, cfg.near_turn)) @ rot
            rot = turned if _plausible(turned) else rot
        return np.clip(hand + step, cfg.box_lo, cfg.box_hi), rot

    def _travel(self, pos: np.ndarray, rot: np.ndarray) -> Iterator[tuple[Waypoint, int, str]]:
        """Up to the travel height and over, when the target is far from the hand (horizontally)."""
        cfg, hand = self.cfg, self.ctrl.hand_pos
        if np.linalg.norm((pos - hand)[:2]) <= cfg.travel_above:
            return
        top = max(cfg.safe_z, cfg.box_hi[2])
        for where, turn in ((hand, self.ctrl.hand_rot), (pos, rot)):
            via = np.array([where[0], min(where[1], cfg.safe_y), np.clip(where[2], cfg.safe_z, top)])
            yield Waypoint(via, turn, self.grip, tol=0.04, max_steps=30), 0, "via"

    def _touch(self, t: Touch) -> Iterator[tuple[Waypoint, int, str]]:
        """Stand off, go in, (grasp,) move it, let go, back off; given up if the stand-off is out of reach."""
        self.ctrl.speed = 1.0
        contact = self.scene.site(t.site) + np.asarray(t.offset)
        axis = t.rot[:, 2]
        stand_off = contact - 0.12 * axis
        self.grip = 1.0 if t.grasp else -1.0
        yield from self._travel(stand_off, t.rot)
        yield Waypoint(stand_off, t.rot, self.grip, tol=0.02, max_steps=self.cfg.target_steps), 0, "touch"
        if np.linalg.norm(self.ctrl.hand_pos - stand_off) > 0.05:
            return  # out of reach from here: on to the next target
        yield Waypoint(contact, t.rot, self.grip, tol=0.01, max_steps=25), 0, "contact"
        if t.grasp:
            self.grip = -1.0
            yield Waypoint(contact, t.rot, self.grip, tol=0.0, max_steps=6), 0, "grasp"
        move = np.asarray(t.moves[self.rng.integers(len(t.moves))], float)
        move *= self.rng.uniform(*t.reach) / np.linalg.norm(move)
        rot = rotation(axis, self.rng.uniform(-t.turn, t.turn)) @ t.rot if t.turn else t.rot
        yield Waypoint(contact + move, rot, self.grip, tol=0.02, max_steps=40), 0, "move"
        self.grip = 1.0
        yield Waypoint(contact + move, rot, self.grip, tol=0.0, max_steps=5), 0, "release"
        yield Waypoint(self.ctrl.hand_pos - 0.12 * rot[:, 2], rot, self.grip, tol=0.03, max_steps=20), 0, "back off"


def explore_episode(env, seed: int, max_steps: int = 900, cfg: ExploreConfig | None = None,
                    log: list[dict] | None = None) -> EpisodeRecord:
    """One seeded exploration episode of exactly `max_steps` steps in `env` (a FrankaKitchen-v1
    from make_env), recorded in Minari's layout. `log`, if given, gets one dict per target:
    its kind, whether the hand got within its tolerance, and the steps it took."""
    cfg = cfg or ExploreConfig()
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    ctrl = Controller(u.model, u.data, cfg.arm, rng)
    ctrl.reset(obs["observation"][:9])
    rec = _Recorder(env, obs)
    explorer = _Explorer(Scene(u.model, u.data, rng), ctrl, cfg, rng)
    for wp, dwell, kind in explorer.waypoints():
        n0 = len(rec)
        obs = follow(env, ctrl, rec, wp, obs, dwell, max_steps)
        if log is not None:
            log.append({"kind": kind, "reached": bool(np.linalg.norm(wp.pos - ctrl.hand_pos) < max(wp.tol, 0.02)),
                        "steps": len(rec) - n0})
        if len(rec) >= max_steps:
            return rec.finish((), seed)
    raise AssertionError("unreachable: the explorer's targets never end")


def hand_positions(env, observations: np.ndarray) -> np.ndarray:
    """(T, 59) recorded observations -> (T, 3) the `end_effector` site's world position at each,
    by forward kinematics in `env`'s model (its state is overwritten: reset it afterwards)."""
    u = env.unwrapped
    site = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
    out = np.zeros((len(observations), 3))
    for i, obs in enumerate(observations):
        qpos, _ = state_from_observation(obs)
        u.data.qpos[:] = qpos
        mujoco.mj_kinematics(u.model, u.data)
        out[i] = u.data.site_xpos[site]
    return out
