"""One example, gathered from the cache: the current frame, what a world model sees besides it,
and the frame k steps ahead (the layout of an example: kitchen_lib.base.example).

One frame does not say how fast the arm moves or what it is told to do next, so a frame-only
model has to guess among several futures. The dataset stores what settles that:

    context_frames N   the frames at t-k, t-2k, ..., t-Nk (k steps apart, like the prediction, so a
                       rollout can feed its own predictions back as context), oldest first. A
                       context never reaches before its episode's start: there it repeats frame 0.
    actions            the k actions a_t .. a_{t+k-1} that lead from frame t to frame t+k
                       (k x 9 numbers), normalised by the network with the training split's statistics.
    proprio            the robot's 9 joint positions at t (observation[0:9]).
    context_noise      std of the Gaussian noise added to the context frames in training (as in
                       GameNGen), so a rollout, whose context is the model's own output, stays in
                       the distribution the model was trained on.
    action_dropout     the fraction of training pairs whose actions the network sees replaced by
                       a learned "no action" (the rest of the vector and the frames kept): the
                       model then also learns the future without the actions, which classifier-free
                       guidance on the actions samples against (kitchen_lib.model.guidance).

`gather` is the one function that builds examples, from any `FrameSource`: the pairs cache
(training, evaluation, the demo) or one `Episode` whose frames a rollout overwrites with its own
predictions. Adding a conditioning signal: a field of ConditioningConfig, a part of VectorLayout,
and the per-frame array the cache keeps for it (kitchen_lib.data.cache.FRAME_ARRAYS).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.example import to_tensors

ACTION_DIM = 9  # 7 arm joint velocities, 2 fingers, in [-1, 1]
PROPRIO_DIM = 9  # 7 arm joint positions, 2 fingers


@dataclass(frozen=True)
class ConditioningConfig:
    """What the model is given besides the current frame (all off: the frame-only model)."""

    context_frames: int = 0  # frames before the current one (k steps apart), stacked on the channel axis
    actions: bool = False  # the k actions from t to t+k-1, through scale-and-shift of every res block
    proprio: bool = False  # the robot's joint positions at t, likewise
    context_noise: float = 0.0  # std of noise on the context frames during training (in [-1, 1] units)
    action_dropout: float = 0.0  # fraction of training pairs whose actions become a learned "no action" (for --guidance)

    def validate(self) -> None:
        if self.context_frames < 0:
            raise UserError(f"--context_frames must be 0 or more (got {self.context_frames})")
        if self.context_noise < 0:
            raise UserError(f"--context_noise must be 0 or more (got {self.context_noise})")
        if not 0 <= self.action_dropout < 1:
            raise UserError(f"--action_dropout must be in [0, 1) (got {self.action_dropout}); 0.1 to 0.2 is usual")
        if self.action_dropout > 0 and not self.actions:
            raise UserError("--action_dropout drops the actions, which this model is not given: add --actions "
                            "(or train --preset cpu-world)")

    def vector(self, k: int) -> VectorLayout:
        """The layout of this config's conditioning vector for predictions k steps ahead."""
        return VectorLayout(k, self.actions, self.proprio)


@dataclass(frozen=True)
class VectorLayout:
    """The conditioning vector, defined once: its parts in order and where each sits."""

    k: int
    actions: bool
    proprio: bool

    def parts(self) -> dict[str, slice]:
        """Name -> the slice of the vector it fills, in order: the k actions, then the joint state."""
        sizes = [("actions", self.k * ACTION_DIM if self.actions else 0), ("proprio", PROPRIO_DIM if self.proprio else 0)]
        out, at = {}, 0
        for name, size in sizes:
            if size:
                out[name] = slice(at, at + size)
                at += size
        return out

    @property
    def dim(self) -> int:
        return sum(s.stop - s.start for s in self.parts().values())

    def build(self, source: FrameSource, current: np.ndarray) -> np.ndarray:
        """(B,) frame rows of the current frames -> (B, D) float32 raw vectors."""
        pieces = []
        for name in self.parts():
            if name == "actions":  # a_t .. a_{t+k-1}, flattened step by step
                pieces.append(_need(source.actions, name)[current[:, None] + np.arange(self.k)[None]].reshape(len(current), -1))
            else:
                pieces.append(_need(source.proprio, name)[current])
        return np.concatenate(pieces, axis=1).astype(np.float32) if pieces else np.zeros((len(current), 0), np.float32)

    def actions_of(self, vector: np.ndarray) -> np.ndarray:
        """The (..., k, 9) action chunk inside (..., D) vectors."""
        return vector[..., self.parts()["actions"]].reshape(*vector.shape[:-1], self.k, ACTION_DIM)


def _need(array: np.ndarray | None, name: str) -> np.ndarray:
    if array is None:
        raise UserError(f"this model is conditioned on {name}, which the frames it was given do not carry "
                        f"(open the cache with build_pairs, which adds them)")
    return array


class FrameSource(Protocol):
    """Frames and per-frame arrays, indexed by one frame row (a pairs cache, or one episode)."""

    frames: np.ndarray  # (F, H, W, C) uint8
    k: int

    @property
    def actions(self) -> np.ndarray | None: ...  # (F, 9): the action taken at each frame

    @property
    def proprio(self) -> np.ndarray | None: ...  # (F, 9): the joint positions at each frame

    def first_frames(self, episodes: np.ndarray) -> np.ndarray: ...  # (B,) row of each episode's frame 0

    def num_frames(self, episodes: np.ndarray) -> np.ndarray: ...  # (B,) frames of each episode (T+1)


@dataclass
class Episode:
    """One episode as a FrameSource: its frames from 0, and its per-step arrays. A rollout writes
    its predictions into a copy's frames, so its context is its own past (`dreaming`)."""

    frames: np.ndarray  # (T+1, H, W, C) uint8
    k: int
    actions: np.ndarray | None = None  # (T, 9) or more
    proprio: np.ndarray | None = None  # (T+1, 9)

    def first_frames(self, episodes: np.ndarray) -> np.ndarray:
        return np.zeros(len(episodes), np.int64)

    def num_frames(self, episodes: np.ndarray) -> np.ndarray:
        return np.full(len(episodes), len(self.frames), np.int64)

    def with_actions(self, actions: np.ndarray) -> Episode:
        """The same episode driven by other actions (another episode's, same steps: "what if")."""
        return replace(self, actions=actions)

    def dreaming(self) -> Episode:
        """A copy whose frames can be overwritten by predictions, the recorded ones untouched."""
        return replace(self, frames=np.array(self.frames))


def context_rows(current: np.ndarray, first_frame: np.ndarray, n: int, k: int) -> np.ndarray:
    """(B,) current-frame rows -> (B, n) rows of the frames n*k, ..., 2k, k steps before each
    (oldest first), clamped to the episode's first frame."""
    offsets = -k * np.arange(n, 0, -1)
    return np.maximum(current[:, None] + offsets[None], first_frame[:, None])


def gather(source: FrameSource, rows: np.ndarray, cfg: ConditioningConfig, target: bool = True) -> dict[str, np.ndarray]:
    """(B, 2) (episode, step) rows -> the examples' arrays (kitchen_lib.base.example): "current",
    "context" and "vector" as `cfg` asks, and "future" when `target`."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    layout = cfg.vector(source.k)
    _check_steps(source, rows, source.k if target or "actions" in layout.parts() else 0)
    first = source.first_frames(rows[:, 0])
    current = first + rows[:, 1]
    out = {"current": np.asarray(source.frames[current])}
    if cfg.context_frames:
        ctx = context_rows(current, first, cfg.context_frames, source.k)  # (B, N)
        out["context"] = np.asarray(source.frames[ctx.ravel()]).reshape(*ctx.shape, *source.frames.shape[1:])
    if layout.dim:
        out["vector"] = layout.build(source, current)
    if target:
        out["future"] = np.asarray(source.frames[current + source.k])
    return out


def _check_steps(source: FrameSource, rows: np.ndarray, ahead: int) -> None:
    """Every step has its frame, and `ahead` frames after it, inside its own episode: the cache
    keeps episodes end to end, so a step past one's end would read the next one's frames."""
    last = source.num_frames(rows[:, 0]) - 1  # T, the last step of each row's episode
    bad = (rows[:, 1] < 0) | (rows[:, 1] + ahead > last)
    if bad.any():
        (episode, step), t = rows[bad][0], int(last[bad][0])
        raise UserError(f"episode {episode} has no step {step} with a frame {ahead} steps after it "
                        f"(steps 0..{t - ahead} do; {int(bad.sum())} such rows)")


class ExampleSet(Dataset):
    """The examples of (episode, step) rows as the network's tensors, read a batch at a time:
    `dataset[[i, j, ...]]` gathers rows i, j, ... in one go (use it with a BatchSampler and
    batch_size=None in a DataLoader)."""

    def __init__(self, source: FrameSource, rows: np.ndarray, cfg: ConditioningConfig) -> None:
        self.source, self.rows, self.cfg = source, np.asarray(rows, dtype=np.int64).reshape(-1, 2), cfg

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        return to_tensors(gather(self.source, self.rows[np.asarray(idx).reshape(-1)], self.cfg))

    def vector_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (floored) of the conditioning vectors over these rows."""
        first = self.source.first_frames(self.rows[:, 0])
        v = self.cfg.vector(self.source.k).build(self.source, first + self.rows[:, 1])
        return v.mean(0).astype(np.float32), np.maximum(v.std(0), 1e-3).astype(np.float32)


def shuffled_actions(vector: np.ndarray, layout: VectorLayout, seed: int = 0) -> np.ndarray:
    """The same vectors with each pair's actions replaced by another pair's (a fixed-seed
    permutation with no pair kept), the rest left alone: does the model use the actions?"""
    if "actions" not in layout.parts() or len(vector) < 2:
        raise UserError("shuffling actions needs an action-conditioned model and at least 2 pairs")
    order = np.random.default_rng(seed).permutation(len(vector))
    perm = np.empty_like(order)
    perm[order] = np.roll(order, -1)  # one cycle through a random order: nobody keeps their own
    out = vector.copy()
    part = layout.parts()["actions"]
    out[:, part] = vector[perm, part]
    return out
