"""Classifier-free guidance on the actions: action dropout in training (a learned "no action"),
guided sampling in one batched pass, and models trained without it left exactly as they were."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.example import NULL_ACTIONS
from kitchen_lib.model.guidance import GuidedDenoiser, dropped_actions, guided
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.training.config import RunConfig, build_model, preset, with_overrides

FIXTURES = Path(__file__).parent / "fixtures"


def world(action_dropout: float = 0.2):
    """A smoke-world config and model with action dropout whose output depends on its inputs from
    the start (no zero-init, no AdaGN, whose zero-initialised layers would hide the vector)."""
    cfg = with_overrides(preset("smoke-world"), conditioning={"action_dropout": action_dropout},
                         model={"zero_init": False, "adagn": False})
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def example(cfg: RunConfig, model, n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, s = cfg.data.channels, cfg.data.size
    return {"current": torch.rand(n, c, s, s, generator=g) * 2 - 1, "future": torch.rand(n, c, s, s, generator=g) * 2 - 1,
            "context": torch.rand(n, 2 * c, s, s, generator=g) * 2 - 1,
            "vector": torch.randn(n, model.net.vector_dim, generator=g)}


def record_calls(net) -> list[tuple[int, torch.Tensor | None]]:
    """(rows, the NULL_ACTIONS mask or None) of every forward pass of `net` from now on."""
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append((args[0].shape[0], args[2].get(NULL_ACTIONS))))
    return seen


def test_the_dropout_fraction_is_near_the_setting_and_zero_drops_nothing():
    for fraction in (0.1, 0.2, 0.5):
        drawn = dropped_actions(100_000, fraction, torch.Generator().manual_seed(0))
        assert drawn.dtype == torch.bool and drawn.float().mean().item() == pytest.approx(fraction, abs=0.005)
    assert not dropped_actions(100_000, 0.0, torch.Generator().manual_seed(0)).any()
    # Four ranks' shares, each drawn from the same seed, are the global draw's rows.
    whole = dropped_actions(40, 0.3, torch.Generator().manual_seed(2))
    parts = [dropped_actions(10, 0.3, torch.Generator().manual_seed(2), part=(r, 4)) for r in range(4)]
    assert torch.equal(torch.cat(parts), whole)

    # Through the model: training draws the mask first from the loss's generator (no context
    # noise here); validation (eval mode) and a model without dropout pass none.
    cfg, model = world(0.3)
    batch = example(cfg, model, 64)
    seen = record_calls(model.net)
    with torch.no_grad():
        model.train().loss(batch, torch.Generator().manual_seed(5))
        model.eval().loss(batch, torch.Generator().manual_seed(5))
    assert torch.equal(seen[0][1], dropped_actions(64, 0.3, torch.Generator().manual_seed(5)))
    assert 0.15 < seen[0][1].float().mean().item() < 0.45
    assert seen[1] == (64, None)
    plain = build_model(with_overrides(cfg, conditioning={"action_dropout": 0.0}))
    assert plain.net.null_actions is None and "null_actions" not in plain.net.state_dict()
    assert model.net.null_actions.shape == (cfg.data.k * 9,) and "null_actions" in model.net.state_dict()
    seen_plain = record_calls(plain.net)
    with torch.no_grad():
        plain.train().loss(batch, torch.Generator().manual_seed(5))
    assert seen_plain == [(64, None)]


def test_a_dropped_row_sees_the_learned_no_action_and_keeps_its_joint_state():
    cfg, model = world()
    net = model.net.eval()
    with torch.no_grad():
        net.null_actions.copy_(torch.randn(net.null_actions.shape, generator=torch.Generator().manual_seed(3)))
    inputs = {k: v for k, v in example(cfg, model, 4).items() if k != "future"}
    x, t = torch.randn(inputs["current"].shape, generator=torch.Generator().manual_seed(4)), torch.tensor([999, 500, 200, 10])
    actions = cfg.conditioning.vector(cfg.data.k).parts()["actions"]
    everyone, nobody = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    with torch.no_grad():
        plain = net(x, t, inputs)
        dropped = net(x, t, inputs | {NULL_ACTIONS: everyone})
        assert torch.equal(net(x, t, inputs | {NULL_ACTIONS: nobody}), plain)
        assert not torch.allclose(dropped, plain, atol=1e-4)
        # Other actions, dropped: the same output; the learned null written in as raw actions: the same.
        other = inputs["vector"].clone()
        other[:, actions] = torch.randn(4, actions.stop - actions.start)
        assert torch.equal(net(x, t, inputs | {"vector": other, NULL_ACTIONS: everyone}), dropped)
        as_raw = inputs["vector"].clone()
        as_raw[:, actions] = net.null_actions * net.vector_std[actions] + net.vector_mean[actions]
        assert torch.allclose(net(x, t, inputs | {"vector": as_raw}), dropped, atol=1e-5)
        # The joint state still counts when the actions are dropped.
        moved = inputs["vector"].clone()
        moved[:, actions.stop:] += 2.0
        assert not torch.allclose(net(x, t, inputs | {"vector": moved, NULL_ACTIONS: everyone}), dropped, atol=1e-4)
        # Row by row: the marked rows dropped, the others not.
        mixed = net(x, t, inputs | {NULL_ACTIONS: torch.tensor([True, False, True, False])})
        assert torch.allclose(mixed[[0, 2]], dropped[[0, 2]], atol=1e-6)
        assert torch.allclose(mixed[[1, 3]], plain[[1, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="bool"):
        net(x, t, inputs | {NULL_ACTIONS: torch.ones(4)})


def test_guidance_1_is_the_plain_sampler_bit_for_bit_and_2_runs_one_2B_pass_per_step():
    cfg, model = world()
    model.eval()
    with torch.no_grad():
        model.net.null_actions.copy_(torch.randn(model.net.null_actions.shape, generator=torch.Generator().manual_seed(3)))
    inputs = {k: v for k, v in example(cfg, model, 3).items() if k != "future"}
    seen = record_calls(model.net)
    today = SamplerConfig("ddim", 2).build()(model.diffusion, model.net, inputs, generator=torch.Generator().manual_seed(4))
    seen.clear()
    one = model.predict(inputs, SamplerConfig("ddim", 2, guidance=1.0), torch.Generator().manual_seed(4))
    assert torch.equal(one, today)
    assert seen == [(3, None), (3, None)]  # one plain pass a step
    seen.clear()
    two = model.predict(inputs, SamplerConfig("ddim", 2, guidance=2.0), torch.Generator().manual_seed(4))
    assert [rows for rows, _ in seen] == [6, 6]  # one pass of 2B rows a step...
    for _, mask in seen:  # ...the first B with their actions, the last B without
        assert mask.tolist() == [False] * 3 + [True] * 3
    assert two.shape == one.shape and not torch.allclose(two, one, atol=1e-4)
    assert two.min() >= -1 and two.max() <= 1
    w2 = SamplerConfig("ddim", 2, guidance=2.0)
    assert model.network_calls(w2) == 4 and model.network_calls(SamplerConfig("ddim", 2)) == 2
    assert w2.label(1000) == "DDIM-2, guidance 2 (4 passes)" and SamplerConfig("ddim", 2).label(1000) == "DDIM-2"
    # The guided output is uncond + w (cond - uncond) of the plain passes; w = 0 is the unconditioned model.
    x, t = torch.randn(inputs["current"].shape, generator=torch.Generator().manual_seed(5)), torch.full((3,), 700)
    with torch.no_grad():
        cond = model.net(x, t, inputs)
        uncond = model.net(x, t, inputs | {NULL_ACTIONS: torch.ones(3, dtype=torch.bool)})
        assert torch.allclose(GuidedDenoiser(model.net, 2.5)(x, t, inputs), uncond + 2.5 * (cond - uncond), atol=1e-5)
        assert torch.allclose(GuidedDenoiser(model.net, 0.0)(x, t, inputs), uncond, atol=1e-5)
    assert guided(model.net, 1.0) is model.net and GuidedDenoiser(model.net, 2).out_channels == model.net.out_channels


def test_a_model_without_action_dropout_loads_unchanged_and_refuses_guidance():
    from kitchen_lib.inference.predictor import load_predictor

    p = load_predictor(FIXTURES / "smoke_world_checkpoint.pt", device="cpu")  # saved before either field existed
    assert p.config.conditioning.action_dropout == 0 and p.config.sampler.guidance == 1
    assert p.model.net.null_actions is None and p.model.action_dropout == 0
    io = dict(np.load(FIXTURES / "smoke_world_io.npz"))
    inputs = {k: io[k] for k in ("current", "context", "vector")}
    assert np.array_equal(p.predict(inputs, SamplerConfig("ddim", 2, guidance=1.0), seed=0), io["ddim2_seed0"])
    for scale in (2.0, 0.0):
        with pytest.raises(UserError, match="--action_dropout"):
            p.predict(inputs, SamplerConfig("ddim", 2, guidance=scale), seed=0)
        with pytest.raises(UserError, match="--action_dropout"):
            p.model.check_sampler(SamplerConfig("ddim", 2, guidance=scale))
    # The configs that cannot work are refused before any work.
    with pytest.raises(UserError, match="--action_dropout"):
        with_overrides(preset("smoke-world"), sampler={"guidance": 2.0}).validate()
    with pytest.raises(UserError, match="add --actions"):
        with_overrides(preset("smoke"), conditioning={"action_dropout": 0.1}).validate()
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match=r"--action_dropout must be in \[0, 1\)"):
            with_overrides(preset("smoke-world"), conditioning={"action_dropout": bad}).validate()
    with pytest.raises(UserError, match="--guidance must be"):
        SamplerConfig(guidance=-1.0).validate()
    ok = with_overrides(preset("smoke-world"), conditioning={"action_dropout": 0.1}, sampler={"guidance": 2.0})
    assert RunConfig.from_dict(ok.to_dict()) == ok


def test_the_flags_set_action_dropout_and_guidance_and_the_cli_refuses_guidance_it_cannot_do(tmp_path):
    from kitchen_lib.frontend.cli import build_parser
    from kitchen_lib.frontend.flags import config_from_args, sampler_from_args

    cfg = config_from_args(build_parser().parse_args(["train", "--preset", "smoke-world", "--action_dropout", "0.2",
                                                      "--guidance", "1.5"]))
    assert cfg.conditioning.action_dropout == 0.2 and cfg.sampler == SamplerConfig("ddim", 5, guidance=1.5)
    for command in ("sample", "evaluate", "rollout"):
        args = build_parser().parse_args([command, "--checkpoint", "x.pt", "--guidance", "2"])
        assert sampler_from_args(args, SamplerConfig("ddim", 2)) == SamplerConfig("ddim", 2, guidance=2.0)
    # Another sampler named: the run's guidance stays (it applies to any sampler).
    args = build_parser().parse_args(["sample", "--checkpoint", "x.pt", "--sampler", "ddpm"])
    assert sampler_from_args(args, SamplerConfig("ddim", 2, guidance=3.0)) == SamplerConfig("ddpm", guidance=3.0)
    out = subprocess.run([sys.executable, "-m", "kitchen_lib", "sample", "--checkpoint", str(FIXTURES / "smoke_world_checkpoint.pt"),
                          "--guidance", "2", "--out", str(tmp_path / "grid.png")], capture_output=True, text=True)
    assert out.returncode == 2 and "--action_dropout" in out.stderr, out.stderr
    assert not (tmp_path / "grid.png").exists()


@pytest.fixture(scope="module")
def guidance_bench(bench_module):
    return bench_module("guidance")


def test_a_short_training_with_action_dropout_samples_guided_frames(small_dataset, tmp_path, guidance_bench):
    from kitchen_lib.base.example import inputs_of, to_tensors
    from kitchen_lib.inference.predictor import load_predictor, pairs_for
    from kitchen_lib.training.checkpoint import load_checkpoint
    from kitchen_lib.training.trainer import train

    # Its run's own sampler is guided: the sample images logged while training use it too.
    cfg = with_overrides(preset("smoke-world"), data={"dataset": small_dataset}, conditioning={"action_dropout": 0.2},
                         sampler={"guidance": 2.0},
                         train={"checkpoint_dir": str(tmp_path), "tensorboard_dir": str(tmp_path / "tb"), "epochs": 2})
    r = train(cfg, progress=False)
    assert np.isfinite(r.final_val_loss) and r.optimizer_steps > 0
    saved = load_checkpoint(tmp_path / "latest.pt")
    assert saved["config"]["conditioning"]["action_dropout"] == 0.2
    assert saved["model"]["null_actions"].abs().sum() > 0  # the "no action" was learnt (it starts at zeros)

    p = load_predictor(tmp_path / "latest.pt", device="cpu")
    cache = pairs_for(p)
    inputs = p.inputs(cache, cache.select("test", 4))
    for scale in (1.5, 3.0):
        out = p.model.predict(to_tensors(inputs_of(inputs)), SamplerConfig("ddim", 2, guidance=scale),
                              torch.Generator().manual_seed(0))
        assert out.shape == (4, 3, 32, 32) and torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    frames = p.predict(inputs, seed=0)  # the run's own sampler, guided
    assert frames.shape == inputs["current"].shape and frames.dtype == np.uint8

    from kitchen_lib.frontend.widgets import PredictionDemo

    demo = PredictionDemo(p, cache, rollout_horizon=1)  # the demo samples as the run does, guidance included
    assert demo.sampler_config() == p.sampler
    demo.steps.value = 3
    assert demo.sampler_config() == SamplerConfig("ddim", 3, guidance=2.0)

    # bench/guidance.py's measurement, on this model: every scale scored with evaluate's numbers.
    curve = guidance_bench.guidance_curve(p, cache, [1, 2], pairs=6, batch1=False, progress=False)
    assert list(curve["scales"]) == ["1", "2"]
    one, two = curve["scales"]["1"], curve["scales"]["2"]
    assert (one["network_calls"], two["network_calls"]) == (5, 10) and one["pairs"] == 6
    for e in (one, two):
        assert all(np.isfinite(e[k]) for k in ("psnr", "psnr_moving", "shuffled_psnr_moving", "seconds_per_frame"))
        assert e["delta_psnr_moving"] == pytest.approx(e["psnr_moving"] - e["shuffled_psnr_moving"])
        assert e["gain"] == pytest.approx(e["psnr"] - curve["copy"]["psnr"])
    assert len(guidance_bench.rows(curve)) == 2
