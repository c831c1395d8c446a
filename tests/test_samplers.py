"""Samplers are named objects in one registry: adding one is a class and a registry line, and the
CLI, the demo and the README pick it up (a throwaway sampler, registered only inside a test, shows it)."""

import inspect
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

from kitchen_lib.model.diffusion import Diffusion, DiffusionConfig
from kitchen_lib.model.frame_model import FrameModel
from kitchen_lib.model.samplers import DDIM, DDPM, SAMPLERS, Sampler, SamplerConfig, pure_noise, register_sampler
from kitchen_lib.model.unet import ConditionalUNet
from kitchen_lib.training.config import preset

README = Path(__file__).parent.parent / "README.md"


@dataclass(frozen=True)
class FirstCallOnly(Sampler):
    """One network call at t = T-1: the network's x0 estimate from pure noise."""

    name: ClassVar[str] = "first-call-only"

    def calls(self, timesteps: int) -> int:
        return 1

    def __call__(self, diffusion, net, inputs, generator=None, progress=False):
        x = pure_noise(net, inputs["current"], generator)
        _, x0, _ = diffusion.estimate(net, x, diffusion.T - 1, inputs)
        return diffusion.to_frame(x0, inputs["current"])


@pytest.fixture
def first_call_only(monkeypatch):
    monkeypatch.setitem(SAMPLERS, FirstCallOnly.name, FirstCallOnly)  # the registry line; undone after the test
    return FirstCallOnly


def readme_missing() -> list[str]:
    """Registered samplers whose name is not in the README's list of samplers."""
    found = re.search(r"^- \*\*Samplers\*\* \(`--sampler`\):(.*?)^- \*\*", README.read_text(), flags=re.M | re.S)
    assert found, "README.md has no '- **Samplers** (`--sampler`):' item"
    return [name for name in SAMPLERS if f"`{name}`" not in found.group(1)]


def test_the_registry_holds_ddim_and_ddpm_and_refuses_a_second_of_a_name():
    assert SAMPLERS == {"ddim": DDIM, "ddpm": DDPM}
    assert SamplerConfig().build() == DDIM(10, 0.0) and SamplerConfig("ddpm").build() == DDPM()
    assert SamplerConfig("ddim", 3, 0.5).build() == DDIM(3, 0.5)
    again = type("Again", (Sampler,), {"name": "ddim"})
    with pytest.raises(ValueError, match="already registered"):
        register_sampler(again)
    assert SAMPLERS["ddim"] is DDIM
    with pytest.raises(ValueError, match=r"unknown sampler 'euler': choose one of \('ddim', 'ddpm'\)"):
        SamplerConfig("euler").validate()


def test_a_registered_sampler_is_a_config_choice(first_call_only):
    assert SAMPLERS["first-call-only"] is first_call_only
    cfg = SamplerConfig("first-call-only")
    assert cfg.build() == first_call_only()
    assert cfg.calls(1000) == 1 and cfg.label(1000) == "FIRST-CALL-ONLY-1"
    with pytest.raises(ValueError, match="not a setting of first-call-only"):
        SamplerConfig("first-call-only", steps=3).validate()
    with pytest.raises(ValueError, match="first-call-only"):  # the names offered include it
        SamplerConfig("euler").validate()


def test_a_registered_sampler_runs_through_the_model(first_call_only):
    torch.manual_seed(0)
    net = ConditionalUNet(replace(preset("smoke").model, zero_init=False), 32, 3, context_frames=0, vector_dim=0).eval()
    model = FrameModel(net, Diffusion(DiffusionConfig(timesteps=50)), "diffusion", 0.0)
    inputs = {"current": torch.rand(2, 3, 32, 32) * 2 - 1}
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[1].tolist()))
    out = model.predict(inputs, SamplerConfig("first-call-only"), torch.Generator().manual_seed(4))
    assert seen == [[49, 49]]  # one call, at t = T-1
    assert out.shape == (2, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    # The same as the network's x0 estimate (DDIM-1), drawn from the same noise.
    assert torch.equal(out, model.predict_x0(inputs, torch.Generator().manual_seed(4)))
    assert not torch.equal(out, model.predict(inputs, SamplerConfig("ddim", 2), torch.Generator().manual_seed(4)))


def test_the_cli_offers_the_registered_samplers(first_call_only):
    from kitchen_lib.frontend.cli import build_parser
    from kitchen_lib.frontend.flags import sampler_from_args

    args = build_parser().parse_args(["sample", "--checkpoint", "x.pt", "--sampler", "first-call-only"])
    assert sampler_from_args(args, SamplerConfig("ddim", 2)) == SamplerConfig("first-call-only")
    assert sampler_from_args(args) == SamplerConfig("first-call-only")  # checked before a checkpoint is loaded
    args = build_parser().parse_args(["sample", "--checkpoint", "x.pt", "--steps", "3"])
    assert sampler_from_args(args, SamplerConfig("ddim", 2, 0.5)) == SamplerConfig("ddim", 3, 0.5)  # the run's eta
    with pytest.raises(ValueError, match="DDPM runs all"):
        sampler_from_args(args, SamplerConfig("ddpm"))


def test_the_cli_refuses_a_sampler_not_registered(capsys):
    from kitchen_lib.frontend.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--checkpoint", "x.pt", "--sampler", "first-call-only"])
    assert "invalid choice: 'first-call-only' (choose from 'ddim', 'ddpm')" in capsys.readouterr().err


def test_the_demo_offers_the_registered_samplers_and_steps_only_where_taken(first_call_only):
    from kitchen_lib.frontend.widgets import PredictionDemo, sampler_buttons

    assert sampler_buttons("first-call-only").options == ("ddim", "ddpm", "first-call-only")

    def asked(name: str) -> SamplerConfig:  # the demo's controls, without a trained model behind them
        controls = SimpleNamespace(sampler=SimpleNamespace(value=name), steps=SimpleNamespace(value=7), _eta=0.0,
                                   _guidance=1.0)
        return PredictionDemo.sampler_config(controls)

    assert asked("ddim") == SamplerConfig("ddim", 7)
    assert asked("ddpm") == SamplerConfig("ddpm") and asked("first-call-only") == SamplerConfig("first-call-only")


def test_the_readme_lists_every_registered_sampler(first_call_only, monkeypatch):
    assert readme_missing() == ["first-call-only"]  # a sampler the README does not name is caught...
    monkeypatch.delitem(SAMPLERS, "first-call-only")
    assert readme_missing() == []  # ...and the shipped ones are all there


def test_the_model_layer_has_no_default_sampler():
    assert not hasattr(Diffusion, "sample")  # samplers run themselves: SamplerConfig.build()
    for function in (FrameModel.predict, FrameModel.network_calls):
        assert inspect.signature(function).parameters["sampler"].default is inspect.Parameter.empty, function
