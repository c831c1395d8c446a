"""The expert's hands: a task-space controller that turns end-effector waypoints into env actions.

A waypoint is a hand position, a hand orientation and a gripper command. The controller
moves the `end_effector` site towards it by damped least squares on the site's Jacobian,
and FrankaKitchen-v1's normalised joint-velocity action carries the step out.

Why the controller keeps its own joint command: the env builds each step's position target
on the current (noisy, gravity-sagging) joint reading, so a zero action lets the arm droop.
Accumulating the IK steps into our own command, computed from the *actual* hand pose,
acts as integral control in task space and removes the droop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

# One env step moves a joint at most 2 rad/s * 0.08 s.
MAX_JOINT_STEP = 0.16
ARM = slice(0, 7)
# A comfortable posture for the null space to pull towards (joint 2 off its lower limit).
HOME_Q = np.array([0.0, -1.2, 1.4, -2.4, 0.3, 1.4, 1.6])


def hand_frame(approach: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Rotation matrix of the end-effector site: columns (x, y=finger spread, z=approach)."""
    z = np.asarray(approach, float) / np.linalg.norm(approach)
    y = np.asarray(spread, float)
    y = y - z * (y @ z)
    y /= np.linalg.norm(y)
    return np.column_stack([np.cross(y, z), y, z])


# Named hand orientations (world axes: x right, y forward/away from the robot, z up).
FORWARD = hand_frame([0, 1, 0], [1, 0, 0])  # pointing forward, fingers side by side
FORWARD_ROLLED = hand_frame([0, 1, 0], [0, 0, 1])  # pointing forward, fingers stacked
KETTLE_HAND = hand_frame([0, 0.3, -1], [0, 1, 0.3])  # down, leaning back; fingers front and back


@dataclass
class ExpertConfig:
    """How the expert moves; the seed varies waypoints, speed and action noise."""

    max_speed: float = 0.03  # m per env step for the hand
    max_turn: float = 0.15  # rad per env step for the hand
    damping: float = 0.05  # damped least squares lambda
    null_gain: float = 0.05  # pull towards HOME_Q in the Jacobian's null space
    waypoint_jitter: float = 0.01  # m, uniform, per waypoint
    action_noise: float = 0.03  # std of gaussian noise added to arm actions
    speed_jitter: float = 0.2  # relative, per episode
    settle_steps: int = 3  # extra steps spent at each reached waypoint


@dataclass
class Waypoint:
    pos: np.ndarray
    rot: np.ndarray
    grip: float  # +1 open, -1 closed
    tol: float = 0.02
    max_steps: int = 60
    exact: bool = False  # no jitter (e.g. the grasp point itself)


@dataclass
class Controller:
    """Task-space DLS controller with its own (integrating) joint command."""

    model: mujoco.MjModel
    data: mujoco.MjData
    cfg: ExpertConfig
    rng: np.random.Generator
    q_cmd: np.ndarray = field(default_factory=lambda: np.zeros(7))
    speed: float = 1.0

    def __post_init__(self) -> None:
        self.site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
        self.lo = self.model.jnt_range[:7, 0] + 0.02
        self.hi = self.model.jnt_range[:7, 1] - 0.02
        self.jacp = np.zeros((3, self.model.nv))
        self.jacr = np.zeros((3, self.model.nv))

    def reset(self, robot_qpos: np.ndarray) -> None:
        self.q_cmd = np.array(robot_qpos[ARM], dtype=float)

    @property
    def hand_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.site].copy()

    @property
    def hand_rot(self) -> np.ndarray:
        return self.data.site_xmat[self.site].reshape(3, 3).copy()

    def action(self, wp: Waypoint, robot_qpos: np.ndarray) -> np.ndarray:
        """The env action (9,) that moves the hand one step towards `wp`."""
        e_pos = wp.pos - self.hand_pos
        n = np.linalg.norm(e_pos)
        vmax = self.cfg.max_speed * self.speed
        if n > vmax:
            e_pos *= vmax / n
        R = self.hand_rot
        e_rot = 0.5 * sum(np.cross(R[:, i], wp.rot[:, i]) for i in range(3))
        n = np.linalg.norm(e_rot)
        if n > self.cfg.max_turn:
            e_rot *= self.cfg.max_turn / n

        mujoco.mj_jacSite(self.model, self.data, self.jacp, self.jacr, self.site)
        J = np.vstack([self.jacp[:, ARM], self.jacr[:, ARM]])  # (6, 7)
        q = self.data.qpos[ARM]
        err = np.r_[e_pos, e_rot]  # (6,)
        # Joints pinned at a limit and pushed further into it stall DLS: drop them.
        push = J.T @ err
        free = ~(((q <= self.lo) & (push < 0)) | ((q >= self.hi) & (push > 0)))
        Jf = J * free
        J_pinv = Jf.T @ np.linalg.inv(Jf @ Jf.T + self.cfg.damping**2 * np.eye(6))  # (7, 6)
        dq = J_pinv @ err
        null = (np.eye(7) - J_pinv @ Jf) @ (self.cfg.null_gain * (HOME_Q - q))
        dq += null * free
        dq = np.clip(dq, -0.12, 0.12)

        self.q_cmd = np.clip(self.q_cmd + dq, self.lo, self.hi)
        # Anti-windup: the command never runs far ahead of the arm (contacts, limits).
        self.q_cmd = np.clip(self.q_cmd, robot_qpos[ARM] - 0.3, robot_qpos[ARM] + 0.3)
        act = np.zeros(9)
        act[ARM] = (self.q_cmd - robot_qpos[ARM]) / MAX_JOINT_STEP
        act[ARM] += self.rng.normal(0, self.cfg.action_noise, 7)
        act[7:] = wp.grip
        return np.clip(act, -1.0, 1.0)
