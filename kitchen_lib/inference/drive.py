"""Drive the kitchen: the real simulator and a world model's dream, side by side, under the same commands.

A `Drive` holds a live FrankaKitchen-v1, the task-space controller (kitchen_lib.data.controller)
and a world model, started from the same state. Each `step` takes a hand command ("x+", "rz-",
"close", ...: kitchen_lib.inference.commands) or a raw (k, 9) action chunk. A hand command moves the
controller's target pose, and the controller turns it into the k actions; the real env takes them
and its frame is rendered as the model's training frames were; the dream predicts its next frame
from its *own* earlier frames, given the same actions. Both frames and the PSNR between them come back, so the
divergence can be watched as it grows, and `resync` hands the dream the truth again.

What the dream is told besides its own frames: the actions (what the learner commanded) and the
real robot's joint state at the start of the chunk. That is fair: a robot always knows its own
joints, so a model used to plan or to play would be given them too; what it must imagine is the
scene, the objects and the arm's look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.images import to_grayscale
from kitchen_lib.data.controller import Controller, ExpertConfig, Waypoint
from kitchen_lib.data.datasets import Episode as RecordedEpisode
from kitchen_lib.data.datasets import load_episode
from kitchen_lib.data.examples import ACTION_DIM
from kitchen_lib.data.kitchen import OBS_DIM, make_env, state_from_observation
from kitchen_lib.data.policies import recorded_policy
from kitchen_lib.data.render import KitchenRenderer
from kitchen_lib.inference.commands import COMMANDS, next_target
from kitchen_lib.inference.metrics import capped_psnr
from kitchen_lib.inference.predictor import Predictor, pairs_for
from kitchen_lib.model.samplers import SamplerConfig

MAX_EPISODE_STEPS = 100_000  # the env's time limit: a learner drives as long as they like


@dataclass
class DriveStep:
    """What one step of k env steps gave: the truth, the dream, and how far apart they are."""

    real: np.ndarray  # (H, W, C) uint8: the env's frame after the chunk
    dream: np.ndarray  # (H, W, C) uint8: the model's prediction of it
    psnr: float  # dB of the dream against the truth (capped: identical frames count as 60)
    actions: np.ndarray  # (k, 9) the actions both were given
    step: int  # steps since the last reset (env steps: step * k)
    command: str  # the hand command, or "raw" for an action chunk
    seed: int  # the sampler's seed for this frame
    dream_seconds: float  # the model's prediction alone
    seconds: float  # the whole step: controller, env, rendering and the dream


@dataclass
class _History:
    """Everything since the last reset, one entry per step (index 0: the start)."""

    real: list[np.ndarray] = field(default_factory=list)  # truth frames
    shown: list[np.ndarray] = field(default_factory=list)  # the dream's frames as predicted (what a plot shows)
    observations: list[np.ndarray] = field(default_factory=list)  # (59,) the env's observation at each step
    steps: list[DriveStep] = field(default_factory=list)  # from step 1
    resyncs: list[int] = field(default_factory=list)  # steps at which the dream was handed the truth


class Drive:
    """A live FrankaKitchen-v1 and a world model's dream of it, driven by the same commands.

    `predictor` must be a world model (conditioned on actions). Frames are rendered at the model's
    size and quality (and in grey if it was trained so). `sampler` defaults to the run's own; the
    sampler's seed at step t is `seed + t`, so a seed and a command sequence give the same frames.
    Close it (or use `with`) to release the env and the renderer.
    """

    def __init__(self, predictor: Predictor, seed: int = 0, sampler: SamplerConfig | None = None) -> None:
        if not predictor.conditioning.actions:
            raise UserError("driving needs a world model, one that is told the actions: this one predicts from frames "
                            "alone. Train the one made for driving with `python -m kitchen_lib train --preset cpu-drive` (40 "
                            "minutes; quickstart's cpu-world drives too, but has seen only the expert's motions)")
        self.predictor = predictor
        self.sampler = sampler or predictor.sampler
        self.k = predictor.k
        data = predictor.config.data
        self.env = make_env(max_episode_steps=MAX_EPISODE_STEPS)
        self.renderer = KitchenRenderer(data.size, data.quality)
        self._grayscale = data.grayscale
        u = self.env.unwrapped
        # No action noise: the hand goes where it is told.
        self.controller = Controller(u.model, u.data, ExpertConfig(action_noise=0.0), np.random.default_rng(0))
        self.seed = seed
        self.reset(seed)

    # --- state ------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Start again from the env's start state (the same pose for every seed: the seed sets the
        sensors' noise and the sampler's seeds), with `seed` (default: the last one)."""
        self.seed = self.seed if seed is None else int(seed)
        obs, _ = self.env.reset(seed=self.seed)
        self._start(obs["observation"])

    def reset_to(self, observation: np.ndarray) -> None:
        """Start again from a recorded 59-dim observation (any dataset's step): its full MuJoCo state is
        restored (kitchen_lib.data.kitchen.state_from_observation), as the pairs cache renders it."""
        obs = np.asarray(observation, dtype=np.float64)
        if obs.shape != (OBS_DIM,):
            raise UserError(f"reset_to takes one {OBS_DIM}-dim kitchen observation; got shape {obs.shape}")
        self.env.reset(seed=self.seed)  # the env's noise and bookkeeping start afresh
        robot = self.env.unwrapped.robot_env
        robot.set_state(*state_from_observation(obs))
        # The env builds each action's position target on its last joint reading: make it this step's.
        robot._last_robot_qpos = obs[:9].copy()
        self._start(obs)

    def reset_to_episode(self, episode: RecordedEpisode, step: int = 0) -> np.ndarray:
        """Start from a recorded episode's step; returns the episode's actions from there on (T - step, 9)."""
        if not 0 <= step < len(episode.actions):
            raise UserError(f"episode {episode.index} has steps 0..{len(episode.actions) - 1} with an action; asked for {step}")
        self.reset_to(episode.observations[step])
        return np.asarray(episode.actions[step:])

    def _start(self, observation: np.ndarray) -> None:
        self.observation = np.array(observation, dtype=np.float64)
        self.controller.reset(self.observation[:9])
        self.target_pos = self.controller.hand_pos
        self.target_rot = self.controller.hand_rot
        self.grip = 1.0 if self.observation[7] + self.observation[8] > 0.04 else -1.0  # fingers: 0 shut, 0.04 each open
        frame = self._render()
        self.history = _History(real=[frame], shown=[frame], observations=[self.observation.copy()])
        self._dream = [frame]  # the dream's own frames, what its context is made of

    def resync(self) -> None:
        """Hand the dream the truth: its current and earlier frames become the real ones (and the
        dream's frame now is shown as the real one; the step's PSNR stays what it was)."""
        self._dream = list(self.history.real)
        self.history.shown[-1] = self.history.real[-1]
        self.history.resyncs.append(self.t)

    @property
    def t(self) -> int:
        """Steps (of k env steps) since the last reset."""
        return len(self.history.real) - 1

    @property
    def hand_pos(self) -> np.ndarray:
        """(3,) the real hand's position (the `end_effector` site), m."""
        return self.controller.hand_pos

    # --- stepping ---------------------------------------------------------------------

    def step(self, command: str | np.ndarray) -> DriveStep:
        """One step of k env steps for both: a hand command (a key of COMMANDS) or a raw (k, 9) chunk."""
        t0 = time.perf_counter()
        if isinstance(command, str):
            actions = self._command(command)
            name = command
        else:
            actions = self._raw(command)
            name = "raw"
        real = self._render()
        inputs = self.dream_inputs(actions)
        seed = self.seed + self.t
        t1 = time.perf_counter()
        dream = self.predictor.predict(inputs, self.sampler, seed=seed)[0]
        dream_seconds = time.perf_counter() - t1
        self._dream.append(dream)
        h = self.history
        h.real.append(real)
        h.shown.append(dream)
        h.observations.append(self.observation.copy())
        out = DriveStep(real, dream, capped_psnr(real, dream), actions, self.t, name, seed, dream_seconds,
                        time.perf_counter() - t0)
        h.steps.append(out)
        return out

    def replay(self, actions: np.ndarray, max_steps: int | None = None) -> list[DriveStep]:
        """Step a recorded (n*k, 9) action sequence chunk by chunk (whole chunks only; at most
        `max_steps` of them), e.g. an episode's actions from its start state (`reset_to_episode`)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) < self.k:
            raise UserError(f"replay takes an (n*k, {ACTION_DIM}) action sequence with at least k={self.k} rows; "
                            f"got shape {actions.shape}")
        n = len(actions) // self.k if max_steps is None else min(len(actions) // self.k, max_steps)
        return [self.step(actions[i * self.k : (i + 1) * self.k]) for i in range(n)]

    def dream_inputs(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """The example (kitchen_lib.base.example, a batch of one) the dream is given for the next chunk:
        its own latest frame as "current", its own earlier frames k env steps apart as "context"
        (oldest first, the start frame repeated before the start, as `gather` does), and the
        actions with the real robot's joint state as "vector"."""
        n, j = self.predictor.conditioning.context_frames, len(self._dream) - 1
        out = {"current": self._dream[j][None]}
        if n:
            out["context"] = np.stack([self._dream[max(j - i, 0)] for i in range(n, 0, -1)])[None]  # (1, N, H, W, C)
        # The joint reading at the start of the chunk (the last step's), as the pairs cache keeps it.
        parts = {"actions": np.asarray(actions).reshape(-1), "proprio": self.history.observations[-1][:9]}
        layout = self.predictor.vector
        if layout.dim:
            out["vector"] = np.concatenate([parts[name] for name in layout.parts()]).astype(np.float32)[None]
        return out

    def _command(self, name: str) -> np.ndarray:
        if name not in COMMANDS:
            raise UserError(f"unknown hand command {name!r}: choose one of {', '.join(COMMANDS)}, or pass a ({self.k}, 9) "
                            f"action chunk")
        cmd = COMMANDS[name]
        self.target_pos, self.target_rot = next_target(cmd, self.target_pos, self.target_rot, self.controller.hand_pos,
                                                       self.controller.hand_rot)
        if cmd.grip is not None:
            self.grip = cmd.grip
        waypoint = Waypoint(self.target_pos, self.target_rot, self.grip)
        actions = np.empty((self.k, ACTION_DIM))
        for i in range(self.k):
            actions[i] = self.controller.action(waypoint, self.observation[:9])
            self._env_step(actions[i])
        return actions

    def _raw(self, chunk: np.ndarray) -> np.ndarray:
        actions = np.asarray(chunk, dtype=np.float64)
        if actions.shape != (self.k, ACTION_DIM):
            raise UserError(f"a raw action chunk is shaped (k, 9) = ({self.k}, {ACTION_DIM}): k actions of 7 arm joint "
                            f"velocities and 2 fingers, each in [-1, 1]; got shape {actions.shape}")
        if not np.isfinite(actions).all():
            raise UserError("the action chunk holds NaN or infinite values")
        for a in actions:
            self._env_step(a)
        # The next hand command starts from where the chunk left the hand.
        self.controller.reset(self.observation[:9])
        self.target_pos, self.target_rot = self.controller.hand_pos, self.controller.hand_rot
        self.grip = 1.0 if actions[-1, 7:].mean() >= 0 else -1.0
        return actions

    def _env_step(self, action: np.ndarray) -> None:
        obs, *_ = self.env.step(action)
        self.observation = np.array(obs["observation"], dtype=np.float64)  # a copy: the env may reuse its arrays

    def _render(self) -> np.ndarray:
        frame = self.renderer.render(self.observation)
        return to_grayscale(frame) if self._grayscale else frame

    # --- what a notebook plots --------------------------------------------------------

    @property
    def psnrs(self) -> np.ndarray:
        """(t,) dB of each step's dream against the truth since the last reset: the divergence."""
        return np.array([s.psnr for s in self.history.steps])

    @property
    def real_frames(self) -> np.ndarray:
        """(t + 1, H, W, C) uint8: the truth since the last reset, the start first."""
        return np.stack(self.history.real)

    @property
    def dream_frames(self) -> np.ndarray:
        """(t + 1, H, W, C) uint8: the dream's predictions since the last reset (the start frame first)."""
        return np.stack(self.history.shown)

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def __enter__(self) -> Drive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def held_out_episode(predictor: Predictor, which: int = 0, policy: str = "expert") -> RecordedEpisode:
    """A test-split episode of the model's own data (never trained on) recorded by `policy` (of a
    model trained on several datasets, one of the expert's for "replay the expert"), from its own
    dataset; any test episode if none is `policy`'s."""
    cache = pairs_for(predictor)
    own = cache.meta["config"]["dataset"]
    test = [e for e in cache.meta["episodes"] if e["split"] == "test"]
    mine = [e for e in test if recorded_policy(e.get("dataset", own)) == policy] or test
    e = mine[which % len(mine)]
    return load_episode(e.get("dataset", own), int(e.get("dataset_index", e["index"])))
