"""The world model's inputs: context frames, action chunks, joint state, and the AdaGN blocks."""

import numpy as np
import pytest
import torch

from kitchen_lib.data.cache import load_cache
from kitchen_lib.data.conditioning import (
    ACTION_DIM,
    ConditionedPairs,
    ConditioningConfig,
    context_rows,
    frame_vectors,
    pair_inputs,
    shuffled_actions,
    step_inputs,
)
from kitchen_lib.data.datasets import load_episode
from kitchen_lib.model.unet import ConditionalUNet, ResBlock, UNetConfig
from kitchen_lib.training.config import build_model, preset, with_overrides

WORLD = ConditioningConfig(context_frames=3, actions=True, proprio=True)


def test_context_windows_never_cross_an_episode_start():
    # Frame rows 100.. belong to an episode starting at row 100; k = 5.
    rows = context_rows(np.array([100, 104, 105, 112, 130]), np.full(5, 100), n=3, k=5)
    assert rows.tolist() == [[100, 100, 100], [100, 100, 100], [100, 100, 100], [100, 102, 107], [115, 120, 125]]


def test_dataset_items_line_up_with_the_recorded_episode(small_pairs, small_dataset):
    ds = ConditionedPairs(small_pairs, "train", WORLD)
    k = small_pairs.meta["config"]["k"]
    (episode, step), = small_pairs.pairs("train")[7:8]
    ep = load_episode(small_dataset, int(episode))
    item = ds[7]
    assert item["current"].shape == (3, 32, 32) and item["context"].shape == (9, 32, 32)
    vec = item["vector"].numpy()
    assert vec.shape == (k * ACTION_DIM + 9,)
    np.testing.assert_allclose(vec[: k * ACTION_DIM].reshape(k, ACTION_DIM), ep.actions[step : step + k], rtol=1e-6)
    np.testing.assert_allclose(vec[k * ACTION_DIM :], ep.observations[step, :9], rtol=1e-6)
    frames = small_pairs.episode_frames(int(episode))
    oldest = frames[max(step - 3 * k, 0)]
    np.testing.assert_allclose(item["context"][:3].numpy(), oldest.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    # The same pair through the array path the evaluation uses.
    arrays = pair_inputs(small_pairs, "train", WORLD)
    assert arrays["rows"][7].tolist() == [episode, step]
    np.testing.assert_array_equal(arrays["context"][7, 0], oldest)
    np.testing.assert_allclose(arrays["vector"][7], vec)
    one = step_inputs(small_pairs, int(episode), int(step), WORLD)
    np.testing.assert_array_equal(one["context"], arrays["context"][7])
    np.testing.assert_allclose(one["vector"], vec)


def test_shuffled_actions_really_differ_and_keep_the_joint_state():
    vec = np.random.default_rng(0).normal(size=(50, 5 * ACTION_DIM + 9)).astype(np.float32)
    out = shuffled_actions(vec, WORLD, k=5, seed=3)
    n = 5 * ACTION_DIM
    assert not np.any(np.all(out[:, :n] == vec[:, :n], axis=1))  # nobody keeps their own actions
    np.testing.assert_array_equal(out[:, n:], vec[:, n:])
    assert sorted(map(tuple, out[:, :n])) == sorted(map(tuple, vec[:, :n]))  # a permutation
    np.testing.assert_array_equal(out, shuffled_actions(vec, WORLD, k=5, seed=3))  # fixed seed


def test_a_cache_built_before_actions_were_kept_still_loads(small_pairs, tmp_path):
    import shutil

    old = tmp_path / "old-cache"
    shutil.copytree(small_pairs.path, old, ignore=shutil.ignore_patterns("actions.npy", "proprio.npy"))
    cache = load_cache(old)
    assert not (old / "actions.npy").exists()
    actions, proprio = frame_vectors(cache)
    assert (old / "actions.npy").is_file() and actions.shape == (len(cache.frames), ACTION_DIM)
    np.testing.assert_array_equal(actions, frame_vectors(small_pairs)[0])
    np.testing.assert_array_equal(proprio, frame_vectors(small_pairs)[1])


def test_adagn_blocks_start_at_identity_and_the_vector_then_matters():
    torch.manual_seed(0)
    block = ResBlock(16, 16, 32, 0.0, 8, adagn=True)
    x = torch.randn(2, 16, 8, 8)
    a, b = block(x, torch.randn(2, 32)), block(x, torch.randn(2, 32))
    assert torch.equal(a, b)  # zero-initialised scale and shift: the embedding has no effect yet
    h = block.conv1(torch.nn.functional.silu(block.norm1(x)))
    expected = block.conv2(torch.nn.functional.silu(block.norm2(h))) + block.skip(x)
    assert torch.allclose(a, expected, atol=1e-6)  # x * (1 + 0) + 0: plain GroupNorm
    net = ConditionalUNet(UNetConfig(base_channels=16, channel_mults=(1, 2), adagn=True, zero_init=False, dropout=0.0), 32, 3,
                          context_frames=1, vector_dim=4)
    cur, ctx = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    t = torch.tensor([500])
    assert torch.equal(net(cur, t, cur, ctx, torch.zeros(1, 4)), net(cur, t, cur, ctx, torch.ones(1, 4)))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        (net(cur, t, cur, ctx, torch.ones(1, 4)) ** 2).mean().backward()
        opt.step()
    assert not torch.equal(net(cur, t, cur, ctx, torch.zeros(1, 4)), net(cur, t, cur, ctx, torch.ones(1, 4)))
    with pytest.raises(ValueError, match="conditioning vector"):
        net(cur, t, cur, ctx)
    with pytest.raises(ValueError, match="context frames"):
        net(cur, t, cur, None, torch.zeros(1, 4))


def test_world_preset_trains_predicts_and_evaluates_with_shuffled_actions(small_pairs, small_dataset, tmp_path):
    from kitchen_lib.data.conditioning import episode_vectors
    from kitchen_lib.inference.evaluate import evaluate
    from kitchen_lib.inference.predictor import load_predictor
    from kitchen_lib.inference.rollout import rollout
    from kitchen_lib.model.diffusion import SamplerConfig
    from kitchen_lib.training.trainer import train

    smoke = preset("smoke")
    cfg = with_overrides(smoke, data={"dataset": small_dataset}, conditioning={"context_frames": 2, "actions": True},
                         model={"adagn": True},
                         train={"checkpoint_dir": str(tmp_path / "run"), "tensorboard_dir": str(tmp_path / "tb"),
                                "epochs": 1, "log_images": False})
    assert build_model(cfg).net.inp.in_channels == 4 * 3
    train(cfg, progress=False)
    p = load_predictor(tmp_path / "run" / "best.pt")
    stats = p.model.net.vector_std
    assert stats.shape == (5 * ACTION_DIM,) and not torch.allclose(stats, torch.ones_like(stats))  # the training split's
    result = evaluate(p, small_pairs, "test", SamplerConfig("ddim", 2), progress=False, mean_of=2)
    assert {"diffusion", "diffusion_shuffled_actions", "diffusion_mean", "diffusion_x0", "copy"} == set(result["methods"])
    episode = small_pairs.meta["splits"]["test"][0]
    actions, proprio = episode_vectors(small_pairs, episode)
    r = rollout(p, small_pairs.episode_frames(episode), 4, 3, SamplerConfig("ddim", 2), actions=actions, proprio=proprio)
    assert r.predicted.shape[0] == 4 and r.hold_psnr[0] == r.psnr[0]
    with pytest.raises(ValueError, match="conditioned on actions"):
        rollout(p, small_pairs.episode_frames(episode), 4, 3)

    # The demo shows the action chunk it feeds the model, and can take another episode's.
    from kitchen_lib.frontend.widgets import PredictionDemo

    demo = PredictionDemo(p, small_pairs, SamplerConfig("ddim", 2), rollout_horizon=2)
    demo.slider.value = 5
    own = demo.actions_info.value
    assert own.startswith("actions") and own.count("|") == p.k - 1 and "PSNR" in demo.info.value
    other = next(o for _, o in demo.actions_from.options if o is not None and o != demo.episode.value)
    demo.actions_from.value = other
    assert demo.actions_info.value != own and "PSNR" in demo.info.value
    demo.run_rollout()
    assert demo.rollout_view.value and "PSNR" in demo.rollout_info.value
