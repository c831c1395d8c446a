"""bench/race.py's standard recipe: sized like ours, trained on our pairs, sampled from pure noise."""

import numpy as np
import pytest
import torch

from kitchen_lib.inference.evaluate import evaluate
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.training.config import build_model, preset, with_overrides


@pytest.fixture(scope="module")
def race(bench_module):
    return bench_module("race")


@pytest.mark.parametrize("name", ["cpu", "cpu-world"])
def test_the_standard_unet_is_sized_like_ours(race, name):
    rc = preset(name)
    ours = sum(p.numel() for p in build_model(rc).net.parameters())
    net = race.StandardNet(rc, None)
    theirs = sum(p.numel() for p in net.parameters())
    assert abs(theirs / ours - 1) <= 0.10, (theirs, ours)
    s, c = rc.data.size, rc.data.channels
    inputs = {"current": torch.zeros(2, c, s, s)}
    if rc.conditioning.context_frames:
        inputs["context"] = torch.zeros(2, c * rc.conditioning.context_frames, s, s)
        inputs["vector"] = torch.zeros(2, rc.conditioning.vector(rc.data.k).dim)
    assert net(torch.randn(2, c, s, s), torch.tensor([0, 999]), inputs).shape == (2, c, s, s)


def test_a_short_race_trains_and_scores_the_standard_recipe(race, small_pairs):
    """A few seconds of the standard recipe on the small pairs: steps grow between the points,
    every sampler is scored, predictions come from pure noise (another seed, another frame) and
    use the world model's vector (another vector, another frame)."""
    rc = with_overrides(preset("smoke-world"), data={"dataset": small_pairs.meta["config"]["dataset"]})
    kept = {}

    def score(net, train_config):
        pred = race.StandardPredictor(net, rc, torch.device("cpu"), dict(train_config), "trailing")
        ev = evaluate(pred, small_pairs, "test", SamplerConfig("ddim", 2), max_pairs=8, progress=False, mean_of=0,
                      x0=False, shuffled=False)
        kept["pred"] = pred
        return {"ddim2": race.scores(ev)}

    rows = race.race_standard(rc, small_pairs, [0.02, 0.04], score, torch.device("cpu"), batch_size=4)
    assert [r["minutes"] for r in rows] == sorted(r["minutes"] for r in rows) and rows[0]["minutes"] >= 0.02
    assert 0 < rows[0]["steps"] < rows[1]["steps"]
    assert all(np.isfinite(r["ddim2"]["psnr"]) for r in rows)
    pred = kept["pred"]
    inputs = pred.inputs(small_pairs, small_pairs.select("test", 4))
    a = pred.predict(inputs, SamplerConfig("ddim", 2), seed=0)
    assert a.shape == inputs["current"].shape and a.dtype == np.uint8
    assert np.array_equal(a, pred.predict(inputs, SamplerConfig("ddim", 2), seed=0))
    assert not np.array_equal(a, pred.predict(inputs, SamplerConfig("ddim", 2), seed=1))
    other = inputs | {"vector": inputs["vector"][::-1].copy() + 3.0}
    assert not np.array_equal(a, pred.predict(other, SamplerConfig("ddim", 2), seed=0))
