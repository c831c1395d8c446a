"""Driving the real kitchen and a world model's dream with the same commands (kitchen_lib.inference.drive),
and the DriveDemo widget headless. A smoke-world model trained here on the small dataset; the real
FrankaKitchen-v1 and renderer."""

import re

import numpy as np
import pytest
import torch

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.images import png_bytes
from kitchen_lib.data.examples import Episode, gather
from kitchen_lib.inference.commands import COMMANDS, MAX_LEAD, MOVE_M, rotation, rotation_vector
from kitchen_lib.inference.drive import Drive
from kitchen_lib.inference.metrics import capped_psnr
from kitchen_lib.inference.predictor import Predictor, load_predictor
from kitchen_lib.training.config import build_model, preset, with_overrides
from kitchen_lib.training.trainer import train


@pytest.fixture(scope="module")
def predictor(small_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("drive-model")
    cfg = with_overrides(preset("smoke-world"), data={"dataset": small_dataset},
                         train={"checkpoint_dir": str(root / "run"), "tensorboard_dir": str(root / "tb"), "epochs": 1,
                                "log_images": False})
    train(cfg, progress=False)
    return load_predictor(root / "run" / "latest.pt", device="cpu")


@pytest.fixture(scope="module")
def drive(predictor):
    with Drive(predictor, seed=0) as d:
        yield d


def test_a_move_command_moves_the_real_hand_that_way_and_changes_the_frame(drive):
    for command, axis in (("x+", 0), ("z+", 2), ("y-", 1)):
        drive.reset(0)
        start, before = drive.real_frames[-1], drive.hand_pos
        s = drive.step(command)
        moved = drive.hand_pos - before
        sign = 1 if command.endswith("+") else -1
        assert sign * moved[axis] > 0.015, (command, moved)  # the command is 4 cm
        assert abs(moved[axis]) > 2 * np.delete(np.abs(moved), axis).max(), (command, moved)
        assert not np.array_equal(s.real, start)
        assert s.actions.shape == (drive.k, 9) and np.abs(s.actions).max() <= 1
        assert s.step == drive.t == 1 and s.command == command


def test_a_turn_command_turns_the_hand_about_its_axis(drive):
    drive.reset(0)
    before = drive.controller.hand_rot
    drive.step("rz+")
    turned = rotation_vector(drive.controller.hand_rot @ before.T)  # world axes, rad
    assert turned[2] > 0.1 and abs(turned[2]) > 2 * np.abs(turned[:2]).max(), turned
    v = np.array([0.3, -0.2, 0.5])
    R = rotation(v)
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1)
    assert np.allclose(R @ v, v) and np.allclose(rotation_vector(R), v)


def test_a_held_hand_answers_the_opposite_command_at_once(drive):
    drive.reset(0)
    for _ in range(15):  # 60 cm up: past the arm's reach
        drive.step("z+")
    assert np.linalg.norm(drive.target_pos - drive.hand_pos) <= MAX_LEAD + MOVE_M + 1e-9
    top = drive.hand_pos[2]
    for _ in range(3):
        drive.step("z-")
    assert drive.hand_pos[2] < top - 0.01


def test_the_dream_is_the_models_prediction_from_its_own_frames(drive, predictor):
    drive.reset(1)
    steps = [drive.step(c) for c in ("x+", "y+", "close", "z-")]
    k = drive.k
    # The same examples gathered the library's way, from an episode of the dream's frames (every k
    # env steps), the actions both were given and the real robot's joint readings.
    frames = np.zeros((len(steps) * k + 1, *steps[0].dream.shape), np.uint8)
    proprio = np.zeros((len(frames), 9), np.float32)
    for i, (frame, obs) in enumerate(zip(drive.dream_frames, drive.history.observations, strict=True)):
        frames[i * k], proprio[i * k] = frame, obs[:9]
    episode = Episode(frames, k, np.concatenate([s.actions for s in steps]).astype(np.float32), proprio)
    for j in (1, 3):  # step 1's context reaches before the start; step 3's is the dream's own steps 1 and 2
        example = gather(episode, np.array([[0, j * k]]), predictor.conditioning, target=False)
        assert steps[j].seed == drive.seed + j
        assert np.array_equal(predictor.predict(example, drive.sampler, seed=steps[j].seed)[0], steps[j].dream)
        assert steps[j].psnr == capped_psnr(steps[j].real, steps[j].dream)
    assert np.allclose(drive.psnrs, [s.psnr for s in steps])


def test_a_resync_hands_the_dream_the_real_frames(drive, predictor):
    drive.reset(2)
    for c in ("x+", "x+", "y+"):
        drive.step(c)
    chunk = np.zeros((drive.k, 9))
    dreamt = drive.dream_inputs(chunk)
    assert not np.array_equal(dreamt["current"][0], drive.real_frames[-1])  # the dream has its own frames
    drive.resync()
    synced = drive.dream_inputs(chunk)
    real = drive.real_frames
    assert np.array_equal(synced["current"][0], real[-1])
    assert np.array_equal(synced["context"][0], real[-3:-1])  # the earlier frames too, not only the current one
    assert np.array_equal(synced["vector"], dreamt["vector"])
    assert np.array_equal(drive.dream_frames[-1], real[-1]) and drive.history.resyncs == [3]
    s = drive.step(chunk)
    assert np.array_equal(s.dream, predictor.predict(synced, drive.sampler, seed=drive.seed + 3)[0])


def test_the_same_seed_and_commands_give_the_same_drive(drive):
    runs = []
    for _ in range(2):
        drive.reset(5)
        for c in ("x+", "close", "rz+"):
            drive.step(c)
        runs.append((drive.real_frames, drive.dream_frames, drive.psnrs))
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


def test_reset_to_a_recorded_step_shows_its_frame_and_replay_follows_the_recording(drive, small_dataset, small_pairs):
    from kitchen_lib.data.datasets import load_episode

    index = small_pairs.meta["splits"]["test"][0]
    recorded = small_pairs.episode_frames(index)  # rendered by the cache builder, from the recorded states
    episode = load_episode(small_dataset, index)
    start, k = 10, drive.k
    drive.reset(0)
    fresh = drive.real_frames[0]
    actions = drive.reset_to_episode(episode, start)
    assert drive.t == 0 and np.array_equal(drive.dream_frames[0], drive.real_frames[0])
    assert capped_psnr(recorded[start], drive.real_frames[0]) >= 40
    assert capped_psnr(recorded[start], fresh) < capped_psnr(recorded[start], drive.real_frames[0])
    steps = drive.replay(actions, max_steps=3)
    assert len(steps) == 3 and drive.t == 3
    assert all(np.array_equal(s.actions, episode.actions[start + i * k : start + (i + 1) * k]) for i, s in enumerate(steps))
    later = recorded[start + 3 * k]
    assert not np.array_equal(later, recorded[start])  # the recording moved
    assert capped_psnr(later, drive.real_frames[-1]) > capped_psnr(later, recorded[start])  # and the replay with it


def test_bad_input_gets_a_clear_error(drive, small_dataset):
    drive.reset(0)
    with pytest.raises(UserError, match=r"shaped \(k, 9\) = \(5, 9\).*\(6, 9\)"):
        drive.step(np.zeros((6, 9)))
    with pytest.raises(UserError, match="unknown hand command 'jump'"):
        drive.step("jump")
    with pytest.raises(UserError, match="NaN"):
        drive.step(np.full((drive.k, 9), np.nan))
    with pytest.raises(UserError, match=r"replay takes an \(n\*k, 9\)"):
        drive.replay(np.zeros((3, 9)))
    assert drive.t == 0  # nothing was stepped
    cfg = with_overrides(preset("smoke"), data={"dataset": small_dataset})
    frame_only = Predictor(build_model(cfg).eval(), cfg, torch.device("cpu"))
    with pytest.raises(UserError, match="world model.*--preset cpu-drive"):
        Drive(frame_only)


def test_every_command_steps(drive):
    drive.reset(0)
    for name in COMMANDS:
        assert drive.step(name).command == name
    assert drive.t == len(COMMANDS) and len(drive.psnrs) == len(COMMANDS)


def test_the_widget_buttons_step_both_images_and_fill_the_strip(drive, small_dataset, small_pairs):
    from kitchen_lib.data.datasets import load_episode
    from kitchen_lib.frontend.drive_widget import DriveDemo

    drive.reset(0)
    episode = load_episode(small_dataset, small_pairs.meta["splits"]["test"][0])
    demo = DriveDemo(drive, scale=2, expert=episode, replay_steps=2)
    real, dream = demo.images[0].value, demo.images[1].value
    assert "press a command" in demo.divergence.value
    demo.buttons["x+"].click()
    assert demo.images[0].value != real and demo.images[1].value != dream
    assert demo.images[0].value == png_bytes(drive.real_frames[-1], 2)
    assert demo.images[1].value == png_bytes(drive.dream_frames[-1], 2)
    spark = demo.sparkline.value
    demo.buttons["z-"].click()
    numbers = re.findall(r"\d+\.\d", demo.divergence.value)
    assert [float(x) for x in numbers] == [round(p, 1) for p in drive.psnrs]
    assert demo.sparkline.value != spark and "ms a frame" in demo.info.value
    demo.resync_button.click()
    assert demo.images[1].value == demo.images[0].value
    assert demo.images[2].value == png_bytes(np.zeros_like(drive.real_frames[-1]), 2)  # no difference left
    demo.replay_button.click()
    assert drive.t == 2 and demo.info.value.startswith(f"replaying episode {episode.index}")
    demo.seed.value = 3
    demo.reset_button.click()
    assert drive.t == 0 and drive.seed == 3
    demo.press(np.zeros((4, 9)))  # a wrong chunk is shown, not raised
    assert "shaped (k, 9)" in demo.info.value and drive.t == 0


def test_replay_the_expert_picks_a_held_out_expert_episode_of_a_model_trained_on_joined_datasets(small_dataset):
    from types import SimpleNamespace

    from kitchen_lib.data.datasets import is_local, joined, load_episode
    from kitchen_lib.data.generate import generate_dataset
    from kitchen_lib.inference.drive import held_out_episode

    explore = "kitchen-diffusion/test-drive-explore-v0"
    if not is_local(explore):
        generate_dataset(explore, episodes=3, max_steps=20, progress=False, policy="explore")
    both = SimpleNamespace(config=with_overrides(preset("smoke-world"), data={"dataset": joined(explore, small_dataset)}))
    from kitchen_lib.inference.predictor import pairs_for

    cache = pairs_for(both)
    expert_test = [e for e in cache.meta["episodes"] if e["split"] == "test" and e["dataset"] == small_dataset]
    assert expert_test and cache.meta["episodes"][0]["dataset"] == explore  # exploration's episodes come first
    got = held_out_episode(both)
    want = load_episode(small_dataset, expert_test[0]["dataset_index"])
    assert np.array_equal(got.actions, want.actions) and len(got.actions) != 20
    assert len(held_out_episode(both, policy="explore").actions) == 20
    from kitchen_lib.data.policies import recorded_policy  # an unnamed id is known by its metadata

    assert (recorded_policy(explore), recorded_policy(small_dataset)) == ("explore", "expert")
