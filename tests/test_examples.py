"""One example: the model's inputs gathered once for training, evaluation, the demo and rollouts;
context frames, action chunks, joint state, and the AdaGN blocks."""

import numpy as np
import pytest
import torch

from kitchen_lib.base.example import inputs_of
from kitchen_lib.data.cache import FRAME_ARRAYS
from kitchen_lib.data.cache_builder import build_pairs
from kitchen_lib.data.datasets import load_episode
from kitchen_lib.data.examples import (
    ACTION_DIM,
    ConditioningConfig,
    ExampleSet,
    context_rows,
    gather,
    shuffled_actions,
)
from kitchen_lib.model.unet import ConditionalUNet, ResBlock, UNetConfig
from kitchen_lib.training.config import build_model, preset, with_overrides

WORLD = ConditioningConfig(context_frames=3, actions=True, proprio=True)


def test_context_windows_never_cross_an_episode_start():
    # Frame rows 100.. belong to an episode starting at row 100; k = 5.
    rows = context_rows(np.array([100, 104, 105, 112, 130]), np.full(5, 100), n=3, k=5)
    assert rows.tolist() == [[100, 100, 100], [100, 100, 100], [100, 100, 100], [100, 102, 107], [115, 120, 125]]


def test_the_vector_layout_is_defined_once():
    layout = WORLD.vector(5)
    assert layout.parts() == {"actions": slice(0, 45), "proprio": slice(45, 54)} and layout.dim == 54
    assert ConditioningConfig(proprio=True).vector(5).parts() == {"proprio": slice(0, 9)}
    assert ConditioningConfig().vector(5).dim == 0
    v = np.arange(54, dtype=np.float32)[None]
    assert layout.actions_of(v).shape == (1, 5, 9) and layout.actions_of(v)[0, 1, 0] == 9


def test_examples_line_up_with_the_recorded_episode(small_pairs, small_dataset):
    k = small_pairs.k
    (episode, step), = small_pairs.pairs("train")[7:8]
    ep = load_episode(small_dataset, int(episode))
    item = ExampleSet(small_pairs, small_pairs.pairs("train"), WORLD)[[7]]
    assert item["current"].shape == (1, 3, 32, 32) and item["context"].shape == (1, 9, 32, 32)
    vec = item["vector"][0].numpy()
    assert vec.shape == (k * ACTION_DIM + 9,)
    np.testing.assert_allclose(vec[: k * ACTION_DIM].reshape(k, ACTION_DIM), ep.actions[step : step + k], rtol=1e-6)
    np.testing.assert_allclose(vec[k * ACTION_DIM :], ep.observations[step, :9], rtol=1e-6)
    frames = small_pairs.episode_frames(int(episode))
    oldest = frames[max(step - 3 * k, 0)]
    np.testing.assert_allclose(item["context"][0, :3].numpy(), oldest.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(item["future"][0].numpy(), frames[step + k].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    # The same pair gathered from the episode alone (as a rollout and the demo do).
    one = gather(small_pairs.episode(int(episode)), np.array([[0, step]]), WORLD)
    np.testing.assert_array_equal(one["context"][0, 0], oldest)
    np.testing.assert_allclose(one["vector"][0], vec)


class _Spy(torch.nn.Module):
    """The network, recording the inputs of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x_t, t, inputs):
        self.seen.append({key: v.clone() for key, v in inputs.items()})
        return self.net(x_t, t, inputs)


def _spy(model):
    model.net = _Spy(model.net)
    return model.net.seen


def test_training_evaluation_the_demo_and_a_rollout_give_the_model_the_same_tensors(small_pairs, small_dataset):
    """Nothing is trained: an untrained world model, and one test pair seen through every path."""
    from kitchen_lib.frontend.widgets import PredictionDemo
    from kitchen_lib.inference.evaluate import evaluate
    from kitchen_lib.inference.predictor import Predictor
    from kitchen_lib.inference.rollout import rollout_episode
    from kitchen_lib.model.samplers import SamplerConfig

    cfg = with_overrides(preset("smoke-world"), data={"dataset": small_dataset}, conditioning={"context_frames": 2})
    model = build_model(cfg).eval()
    model.net.set_vector_stats(torch.full((model.net.vector_dim,), 0.5), torch.full((model.net.vector_dim,), 2.0))
    p = Predictor(model, cfg, torch.device("cpu"))
    rows = small_pairs.pairs("test")
    i = 7  # a pair whose context reaches back past the episode's start: step 7, k = 5
    episode, step = (int(x) for x in rows[i])
    assert step < 2 * small_pairs.k

    training = inputs_of(ExampleSet(small_pairs, rows, cfg.conditioning)[[i]])
    seen = _spy(model)
    evaluate(p, small_pairs, "test", SamplerConfig("ddim", 1), progress=False, mean_of=1, x0=False, shuffled=False,
             batch=len(rows))  # one batch: the first network call sees every test pair
    evaluation = {key: v[i : i + 1] for key, v in seen[0].items()}
    demo = PredictionDemo(p, small_pairs, SamplerConfig("ddim", 1), rollout_horizon=1)
    demo.episode.value = episode
    seen.clear()
    demo.slider.value = step
    shown = seen[0]
    seen.clear()
    rollout_episode(p, small_pairs, episode, step, 1, SamplerConfig("ddim", 1))
    first_step = seen[0]
    for name, got in (("evaluation", evaluation), ("demo", shown), ("rollout", first_step)):
        assert set(got) == set(training) == {"current", "context", "vector"}, name
        for key in training:
            assert torch.equal(got[key], training[key]), f"{name}: {key} differs from the training batch's"


def test_shuffled_actions_really_differ_and_keep_the_joint_state():
    vec = np.random.default_rng(0).normal(size=(50, 5 * ACTION_DIM + 9)).astype(np.float32)
    out = shuffled_actions(vec, WORLD.vector(5), seed=3)
    n = 5 * ACTION_DIM
    assert not np.any(np.all(out[:, :n] == vec[:, :n], axis=1))  # nobody keeps their own actions
    np.testing.assert_array_equal(out[:, n:], vec[:, n:])
    assert sorted(map(tuple, out[:, :n])) == sorted(map(tuple, vec[:, :n]))  # a permutation
    np.testing.assert_array_equal(out, shuffled_actions(vec, WORLD.vector(5), seed=3))  # fixed seed


def test_a_cache_built_before_its_per_frame_arrays_gets_them_from_its_one_writer(small_pairs, tmp_path):
    import shutil

    from kitchen_lib.data.cache import CacheError, load_cache

    root = tmp_path / "pairs"
    old = root / small_pairs.path.name
    shutil.copytree(small_pairs.path, old, ignore=shutil.ignore_patterns(*(f"{n}.npy" for n in FRAME_ARRAYS)))
    with pytest.raises(CacheError, match="build_pairs"):
        gather(load_cache(old), small_pairs.pairs("train")[:2], WORLD)
    cache = build_pairs(small_pairs.config, root=root, progress=False)  # takes the lock, adds the arrays
    assert cache.path == old and all((old / f"{n}.npy").is_file() for n in FRAME_ARRAYS)
    for name in FRAME_ARRAYS:
        np.testing.assert_array_equal(cache.array(name), small_pairs.array(name))
    assert not list(root.glob(".*tmp*"))  # nothing half-written left behind


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
    def inputs(vector=None, context=ctx):
        return {"current": cur} | ({} if context is None else {"context": context}) | \
            ({} if vector is None else {"vector": vector})

    assert torch.equal(net(cur, t, inputs(torch.zeros(1, 4))), net(cur, t, inputs(torch.ones(1, 4))))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        (net(cur, t, inputs(torch.ones(1, 4))) ** 2).mean().backward()
        opt.step()
    assert not torch.equal(net(cur, t, inputs(torch.zeros(1, 4))), net(cur, t, inputs(torch.ones(1, 4))))
    with pytest.raises(ValueError, match="conditioning vector"):
        net(cur, t, inputs())
    with pytest.raises(ValueError, match="context frames"):
        net(cur, t, inputs(torch.zeros(1, 4), context=None))


def test_world_preset_trains_predicts_and_evaluates_with_shuffled_actions(small_pairs, small_dataset, tmp_path):
    from kitchen_lib.data.examples import Episode
    from kitchen_lib.inference.evaluate import evaluate
    from kitchen_lib.inference.predictor import load_predictor
    from kitchen_lib.inference.rollout import rollout
    from kitchen_lib.model.samplers import SamplerConfig
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
    r = rollout(p, small_pairs.episode(episode), 4, 3, SamplerConfig("ddim", 2))
    assert r.predicted.shape[0] == 4 and r.hold_psnr[0] == r.psnr[0]
    with pytest.raises(ValueError, match="conditioned on actions"):
        rollout(p, Episode(small_pairs.episode_frames(episode), p.k), 4, 3)

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


def test_a_step_outside_its_episode_is_refused_not_read_from_the_next(small_pairs):
    from kitchen_lib.base.errors import UserError

    episode = int(small_pairs.meta["episodes"][0]["index"])  # the cache's first: another one follows it
    last = int(small_pairs.num_frames(np.array([episode]))[0]) - 1
    ok = gather(small_pairs, np.array([[episode, last - small_pairs.k]]), WORLD)
    assert ok["future"].shape[0] == 1
    for step in (last - small_pairs.k + 1, -1):
        with pytest.raises(UserError, match=f"episode {episode} has no step {step}"):
            gather(small_pairs, np.array([[episode, step]]), WORLD)
    # Without a target or actions the last frame itself is a valid current frame.
    assert gather(small_pairs, np.array([[episode, last]]), ConditioningConfig(context_frames=1), target=False)
