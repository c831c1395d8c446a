"""Hand commands: the buttons that drive the hand (`COMMANDS`), and how one moves its target pose.

A command moves the hand's target (m, world axes), turns it (a rotation vector, rad) or sets the
gripper; `next_target` applies one to the target the controller (kitchen_lib.data.controller)
follows. kitchen_lib.inference.drive steps the real env and the dream with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOVE_M = 0.04  # a move command shifts the hand's target 4 cm: within one chunk's reach (k=5 at 3 cm a step)
TURN_RAD = 0.25  # a turn command turns it about 14 degrees (the controller turns up to 0.15 rad a step)
# How far the target may be ahead of the hand before a command adds to it (free, the hand ends a step
# within about 1 cm of it). A hand held back by its reach, a limit or an object would otherwise let
# presses pile up, and the opposite command would seem dead for as many presses.
MAX_LEAD = 0.05  # m
MAX_TURN_LEAD = 0.3  # rad


@dataclass(frozen=True)
class HandCommand:
    """One button: a move of the hand's target (m, world axes), a turn (a rotation vector in rad,
    world axes: one axis or several), and the gripper (+1 open, -1 closed, None: as it is)."""

    move: tuple[float, float, float] = (0.0, 0.0, 0.0)
    turn: tuple[float, float, float] = (0.0, 0.0, 0.0)
    grip: float | None = None
    label: str = ""


def _axis(i: int, size: float) -> tuple[float, float, float]:
    v = [0.0, 0.0, 0.0]
    v[i] = size
    return (v[0], v[1], v[2])


# World axes as the kitchen has them: x to the robot's right, y forward (away from the robot), z up.
# A hand pointing forward (the expert's FORWARD) rolls about y.
COMMANDS: dict[str, HandCommand] = {
    "x+": HandCommand(move=_axis(0, MOVE_M), label="right (+x)"),
    "x-": HandCommand(move=_axis(0, -MOVE_M), label="left (-x)"),
    "y+": HandCommand(move=_axis(1, MOVE_M), label="forward (+y)"),
    "y-": HandCommand(move=_axis(1, -MOVE_M), label="back (-y)"),
    "z+": HandCommand(move=_axis(2, MOVE_M), label="up (+z)"),
    "z-": HandCommand(move=_axis(2, -MOVE_M), label="down (-z)"),
    "rx+": HandCommand(turn=_axis(0, TURN_RAD), label="tilt about x (+)"),
    "rx-": HandCommand(turn=_axis(0, -TURN_RAD), label="tilt about x (-)"),
    "ry+": HandCommand(turn=_axis(1, TURN_RAD), label="roll about y (+)"),
    "ry-": HandCommand(turn=_axis(1, -TURN_RAD), label="roll about y (-)"),
    "rz+": HandCommand(turn=_axis(2, TURN_RAD), label="turn about z (+)"),
    "rz-": HandCommand(turn=_axis(2, -TURN_RAD), label="turn about z (-)"),
    "open": HandCommand(grip=1.0, label="open the gripper"),
    "close": HandCommand(grip=-1.0, label="close the gripper"),
}


def rotation(vector: np.ndarray) -> np.ndarray:
    """The 3x3 rotation about `vector`'s direction by its length in rad (Rodrigues)."""
    v = np.asarray(vector, float)
    angle = float(np.linalg.norm(v))
    if angle == 0.0:
        return np.eye(3)
    x, y, z = v / angle
    K = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """The inverse of `rotation` for turns under pi: the rotation vector (rad) of a 3x3 rotation."""
    angle = float(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)))
    skew = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return skew * (0.5 if angle < 1e-6 else angle / (2 * np.sin(angle)))


def next_target(command: HandCommand, target_pos: np.ndarray, target_rot: np.ndarray, hand_pos: np.ndarray,
                hand_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hand's target (position (3,), rotation (3, 3)) after `command`, given where the hand is.
    A target more than MAX_LEAD (MAX_TURN_LEAD) ahead of the hand is first pulled back to that far,
    so a held hand answers the opposite command at once. The gripper is the caller's."""
    lead = target_pos - hand_pos
    if np.linalg.norm(lead) > MAX_LEAD:  # held back: start the move from near where the hand is
        target_pos = hand_pos + lead * (MAX_LEAD / np.linalg.norm(lead))
    turn_lead = rotation_vector(target_rot @ hand_rot.T)
    if np.linalg.norm(turn_lead) > MAX_TURN_LEAD:
        target_rot = rotation(turn_lead * (MAX_TURN_LEAD / np.linalg.norm(turn_lead))) @ hand_rot
    return target_pos + np.asarray(command.move), rotation(command.turn) @ target_rot
