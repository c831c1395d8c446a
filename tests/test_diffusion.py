import pytest
import torch

from kitchen_lib.model.diffusion import Diffusion, DiffusionConfig, _gather
from kitchen_lib.model.samplers import DDIM, DDPM, DEFAULT_DDIM_STEPS, SamplerConfig, ddim_timesteps


def test_linear_schedule_endpoints_and_monotone():
    d = Diffusion(DiffusionConfig(schedule="linear"))
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert torch.all(d.alpha_bar[1:] < d.alpha_bar[:-1])
    assert d.alpha_bar[0].item() == pytest.approx(1 - 1e-4)
    assert d.alpha_bar[-1].item() < 1e-4  # almost pure noise at t = T-1


def test_cosine_schedule_keeps_more_signal_mid_way():
    lin, cos = Diffusion(DiffusionConfig(schedule="linear")), Diffusion(DiffusionConfig(schedule="cosine"))
    assert torch.all(cos.alpha_bar[1:] < cos.alpha_bar[:-1])
    assert cos.alpha_bar[0].item() > 0.9999 and cos.alpha_bar[-1].item() < 1e-6
    assert cos.alpha_bar[500] > 2 * lin.alpha_bar[500]  # the linear one destroys information early
    assert torch.all(cos.betas <= 0.999)


def test_q_sample_statistics():
    d = Diffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4000, 1, 2, 2), 0.5)
    t = torch.full((4000,), 300, dtype=torch.long)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    ab = d.alpha_bar[300].item()
    assert xt.mean().item() == pytest.approx(0.5 * ab**0.5, abs=0.02)
    assert xt.std().item() == pytest.approx((1 - ab) ** 0.5, abs=0.02)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_targets_invert(prediction):
    d = Diffusion(DiffusionConfig(prediction=prediction, schedule="cosine"))
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand((5, 3, 4, 4), generator=g) * 2 - 1, torch.randn((5, 3, 4, 4), generator=g)
    # Not t = T-1: there sqrt(alpha_bar) is 5e-5 and x0 from eps is ill-conditioned in float32.
    t = torch.tensor([0, 10, 500, 900, 980])
    xt = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.x0_and_eps(d.target(x0, noise, t), xt, t)
    assert torch.allclose(x0_hat, x0, atol=2e-3) and torch.allclose(eps_hat, noise, atol=2e-3)


def oracle(d: Diffusion, x0: torch.Tensor):
    """A denoiser that knows the clean frame: outputs the exact target for any x_t."""
    def model(xt, t, inputs):
        eps = (xt - _gather(d.alpha_bar.sqrt(), t) * x0) / _gather((1 - d.alpha_bar).sqrt(), t)
        return d.target(x0, eps, t)
    return model


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_samplers_recover_the_frame_with_an_oracle(prediction, schedule):
    d = Diffusion(DiffusionConfig(prediction=prediction, schedule=schedule))
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand((2, 3, 8, 8), generator=g) * 1.8 - 0.9
    inputs = {"current": torch.zeros_like(x0)}
    for sample in (DDPM()(d, oracle(d, x0), inputs, generator=g),
                   DDIM(10, 0.0)(d, oracle(d, x0), inputs, generator=g),
                   DDIM(5, 1.0)(d, oracle(d, x0), inputs, generator=g)):
        assert torch.allclose(sample, x0, atol=1e-3)


def test_samplers_are_deterministic_under_a_seed_and_run_every_step():
    d = Diffusion(DiffusionConfig())
    calls = []

    def model(xt, t, inputs):  # a fixed, imperfect denoiser
        calls.append(int(t[0]))
        return 0.1 * xt + 0.05 * inputs["current"]

    inputs = {"current": torch.linspace(-1, 1, 48).view(1, 3, 4, 4)}
    a = DDPM()(d, model, inputs, generator=torch.Generator().manual_seed(7))
    assert calls == list(range(999, -1, -1))  # the full reverse process, not a shortcut
    b = DDPM()(d, model, inputs, generator=torch.Generator().manual_seed(7))
    c = DDPM()(d, model, inputs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    calls.clear()
    e = DDIM(10, 0.0)(d, model, inputs, generator=torch.Generator().manual_seed(7))
    assert calls == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]  # trailing spacing, one call per step
    assert torch.equal(e, DDIM(10, 0.0)(d, model, inputs, generator=torch.Generator().manual_seed(7)))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        Diffusion(DiffusionConfig(schedule="quadratic"))
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(DiffusionConfig(prediction="score"))
    with pytest.raises(ValueError, match="loss weighting"):
        Diffusion(DiffusionConfig(loss_weighting="p2"))
    d = Diffusion(DiffusionConfig())
    with pytest.raises(ValueError, match="DDPM runs all"):
        SamplerConfig("ddpm", steps=10).build()
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerConfig("euler").build()
    assert SamplerConfig().calls(1000) == DEFAULT_DDIM_STEPS and SamplerConfig("ddpm").calls(1000) == 1000
    assert SamplerConfig(steps=4).label(1000) == "DDIM-4"
    with pytest.raises(ValueError, match="DDIM steps"):
        ddim_timesteps(d.T, 0)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_residual_diffusion_recovers_the_future_frame_with_an_oracle(prediction):
    d = Diffusion(DiffusionConfig(prediction=prediction, schedule="cosine", residual=True))
    g = torch.Generator().manual_seed(3)
    current = torch.rand((2, 3, 8, 8), generator=g) * 1.8 - 0.9
    future = (current + 0.3 * torch.randn(current.shape, generator=g)).clamp(-1, 1)
    inputs = {"current": current}
    change = d.to_x0(future, current)
    assert torch.allclose(change, future - current)
    for sample in (DDPM()(d, oracle(d, change), inputs, generator=g),
                   DDIM(5, 0.0)(d, oracle(d, change), inputs, generator=g)):
        assert torch.allclose(sample, future, atol=1e-3)
    # An oracle for the wrong thing (the frame, not its change) does not give the frame back.
    assert not torch.allclose(DDIM(5, 0.0)(d, oracle(d, future), inputs, generator=g), future, atol=0.1)


@pytest.mark.parametrize("residual", [True, False])
def test_data_scale_diffuses_a_scaled_sample_and_gives_the_frame_back(residual):
    d = Diffusion(DiffusionConfig(residual=residual, data_scale=7.0))
    g = torch.Generator().manual_seed(5)
    current = torch.rand((2, 3, 8, 8), generator=g) * 1.8 - 0.9
    future = (current + 0.3 * torch.randn(current.shape, generator=g)).clamp(-1, 1)
    inputs = {"current": current}
    x0 = d.to_x0(future, current)
    assert torch.allclose(x0, 7.0 * (future - current if residual else future))
    assert torch.allclose(d.to_frame(x0, current), future, atol=1e-6)
    assert torch.allclose(DDIM(5, 0.0)(d, oracle(d, x0), inputs, generator=g), future, atol=1e-3)
    # Estimates are clipped to what a frame can take in the scaled units: far above, the top (a
    # bound in frame units would give current + (1 - current) / 7, or 1 / 7).
    _, clipped, _ = d.estimate(lambda x, t, i: x0 + 100.0, torch.zeros_like(x0), 999, inputs)
    assert torch.allclose(d.to_frame(clipped, current), torch.ones_like(current))
    with pytest.raises(ValueError, match="data_scale"):
        DiffusionConfig(data_scale=0.0).validate()


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weights_the_x0_error_by_min_snr_gamma(prediction):
    """Whatever the target, the weighted loss equals min(SNR_t, gamma) * ||x0_hat - x0||^2."""
    d = Diffusion(DiffusionConfig(prediction=prediction, schedule="cosine", loss_weighting="min_snr", min_snr_gamma=5.0))
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.rand((6, 3, 4, 4), generator=g) * 2 - 1, torch.randn((6, 3, 4, 4), generator=g)
    t = torch.tensor([1, 50, 200, 400, 700, 950])
    xt = d.q_sample(x0, t, noise)
    out = d.target(x0, noise, t) + 0.1 * torch.randn(x0.shape, generator=g)  # an imperfect network
    weighted = d.loss_weights(t) * (out - d.target(x0, noise, t)) ** 2
    x0_hat, _ = d.x0_and_eps(out, xt, t)
    snr = d.snr()[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(weighted, snr.clamp(max=5.0) * (x0_hat - x0) ** 2, rtol=1e-3, atol=1e-6)
    assert d.loss_weights(t).shape == (6, 1, 1, 1)
    flat = Diffusion(DiffusionConfig(prediction=prediction))
    assert torch.equal(flat.loss_weights(t), torch.ones(6, 1, 1, 1))


def test_timestep_power_biases_training_to_high_noise():
    g = torch.Generator().manual_seed(0)
    uniform = Diffusion(DiffusionConfig()).training_timesteps(20_000, generator=g)
    high = Diffusion(DiffusionConfig(timestep_power=0.5)).training_timesteps(20_000, generator=g)
    for t in (uniform, high):
        assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.long
    assert uniform.float().mean().item() == pytest.approx(499.5, abs=10)
    # density 2t/T: mean 2T/3, and three quarters of the draws in the noisier half
    assert high.float().mean().item() == pytest.approx(666, abs=10)
    assert (high >= 500).float().mean().item() == pytest.approx(0.75, abs=0.02)
    with pytest.raises(ValueError, match="timestep_power"):
        DiffusionConfig(timestep_power=0).validate()
