"""A smoke-world run written by the code of commit b02c95e (before the house's second pass):
tests/fixtures/smoke_world_checkpoint.pt and, in smoke_world_io.npz, six test pairs' inputs, the
model's outputs on them, and a 4-step rollout. Whatever the code around it becomes, the run
must load, predict the same bits and train on."""

import shutil
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "smoke_world_checkpoint.pt"


def _io():
    return dict(np.load(FIXTURES / "smoke_world_io.npz"))


def _inputs(io):
    return {"current": io["current"], "context": io["context"], "vector": io["vector"]}


def test_the_smoke_world_fixture_predicts_its_recorded_outputs_bit_for_bit():
    from kitchen_lib.inference.predictor import load_predictor
    from kitchen_lib.model.samplers import SamplerConfig

    p = load_predictor(CHECKPOINT, device="cpu")
    assert p.config.preset == "smoke-world" and p.config.conditioning.context_frames == 2
    io = _io()
    assert np.array_equal(p.predict(_inputs(io), SamplerConfig("ddim", 2), seed=0), io["ddim2_seed0"])
    assert np.array_equal(p.predict(_inputs(io), seed=0), io["default_seed0"])  # the run's own sampler, DDIM-5
    assert np.array_equal(p.predict(_inputs(io), seed=0, x0=True), io["x0_seed0"])
    assert not np.array_equal(io["ddim2_seed0"], io["x0_seed0"])  # the comparison can tell samplers apart


def test_the_smoke_world_fixture_rolls_out_as_it_did():
    from kitchen_lib.data.examples import Episode
    from kitchen_lib.inference.predictor import load_predictor
    from kitchen_lib.inference.rollout import rollout
    from kitchen_lib.model.samplers import SamplerConfig

    p = load_predictor(CHECKPOINT, device="cpu")
    io = _io()
    episode = Episode(io["episode_frames"], p.k, io["actions"], io["proprio"])
    r = rollout(p, episode, int(io["rollout_start"]), 4, SamplerConfig("ddim", 2), seed=0)
    assert np.array_equal(r.predicted, io["rollout_pred"])


def test_the_smoke_world_fixture_resumes_and_trains_on(small_dataset, tmp_path, monkeypatch):
    from kitchen_lib.training.checkpoint import load_checkpoint
    from kitchen_lib.training.config import RunConfig, with_overrides
    from kitchen_lib.training.trainer import Trainer

    monkeypatch.chdir(tmp_path)  # the run recorded a relative TensorBoard folder
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(CHECKPOINT, run / "latest.pt")
    saved = load_checkpoint(run / "latest.pt")
    cfg = with_overrides(RunConfig.from_dict(saved["config"]), data={"dataset": small_dataset},
                         train={"checkpoint_dir": str(run), "epochs": saved["epoch"] + 1})
    result = Trainer(cfg, resume="latest", progress=False).fit()
    assert result.epochs_done == saved["epoch"] + 1 and result.optimizer_steps > saved["step"]
    after = load_checkpoint(run / "latest.pt")
    assert after["step"] == result.optimizer_steps
    assert any(not torch.equal(after["model"][k], saved["model"][k]) for k in saved["model"])  # it trained
