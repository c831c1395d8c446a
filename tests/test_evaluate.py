import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from kitchen_lib.data.cache_builder import build_pairs
from kitchen_lib.data.pairs import PairsConfig
from kitchen_lib.inference.evaluate import evaluate
from kitchen_lib.inference.metrics import (
    PSNR_CAP,
    SCORE_KEYS,
    BatchScorer,
    frame_scores,
    mean_psnr,
    moving_mask,
    psnr,
    ssim_map,
    summarise,
)
from kitchen_lib.inference.predictor import load_predictor, pairs_for
from kitchen_lib.inference.rollout import rollout, save_animation
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.training.checkpoint import CheckpointError
from kitchen_lib.training.config import preset, with_overrides
from kitchen_lib.training.runs import regression_beside
from kitchen_lib.training.trainer import train


@pytest.fixture(scope="module")
def models(small_pairs, small_dataset, tmp_path_factory):
    """A diffusion model and its regression twin, each trained briefly on the small dataset."""
    root = tmp_path_factory.mktemp("models")
    for objective, folder in (("diffusion", "run"), ("regression", "run-regression")):
        cfg = with_overrides(preset("smoke"), data={"dataset": small_dataset},
                             train={"checkpoint_dir": str(root / folder), "tensorboard_dir": str(root / "tb"),
                                    "epochs": 1, "objective": objective, "log_images": False})
        train(cfg, progress=False)
    return root / "run" / "best.pt", root / "run-regression" / "best.pt"


def test_metrics_on_known_images():
    rng = np.random.default_rng(0)
    img = rng.integers(30, 220, (32, 32, 3), dtype=np.uint8)
    assert psnr(img, img) == float("inf") and mean_psnr([img], [img]) == PSNR_CAP
    noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
    assert psnr(img, noisy) == pytest.approx(20 * np.log10(255 / 10), abs=0.3)  # sigma 10 -> 28.1 dB
    assert ssim_map(img, img).mean() == pytest.approx(1.0)
    assert ssim_map(img, noisy).mean() < 0.99
    moved = img.copy()
    moved[5:9, 5:9] = 255 - moved[5:9, 5:9]
    mask = moving_mask(img, moved)
    assert mask.sum() == 16 and mask[5:9, 5:9].all()
    s = frame_scores(img, moved, moved)  # a perfect prediction of a moving frame
    assert s["psnr"] == PSNR_CAP and s["psnr_moving"] == PSNR_CAP and s["ssim_moving"] == pytest.approx(1.0)
    assert np.isnan(frame_scores(img, img, noisy)["psnr_moving"])  # nothing moves


def test_batch_scorer_gives_the_numbers_of_frame_scores_bit_for_bit(small_pairs):
    """evaluate scores a batch at once: BatchScorer's numbers are frame_scores', exactly, for
    perfect, copied, noisy and random guesses, on frames with and without moving pixels."""
    rows = small_pairs.select("all")
    at = small_pairs.first_frames(rows[:, 0]) + rows[:, 1]
    cur, fut = np.array(small_pairs.frames[at]), np.array(small_pairs.frames[at + small_pairs.k])
    cur[0] = fut[0]  # a pair where nothing moves
    rng = np.random.default_rng(0)
    guesses = {"perfect": fut, "copy": cur, "noisy": np.clip(fut + rng.normal(0, 8, fut.shape), 0, 255).astype(np.uint8),
               "random": rng.integers(0, 256, fut.shape, dtype=np.uint8)}
    scorer = BatchScorer(cur, fut)
    for name, pred in guesses.items():
        want = np.array([[frame_scores(c, f, q)[k] for k in SCORE_KEYS] for c, f, q in zip(cur, fut, pred, strict=True)])
        assert np.array_equal(scorer(pred), want, equal_nan=True), name
    moving = np.isfinite(want[:, 2])
    assert moving.sum() > 10 and not moving[0]  # both kinds of pair were scored


def test_evaluate_at_ddim1_takes_the_x0_estimate_from_its_sample(models, small_pairs):
    """One DDIM step from pure noise is the network's x0 estimate: at DDIM-1 evaluate reuses the
    sample for diffusion_x0, which must be what predict(x0=True) gives with the batch's seed."""
    p = load_predictor(models[0])
    r = evaluate(p, small_pairs, "test", SamplerConfig("ddim", 1), max_pairs=40, seed=5, mean_of=0, progress=False,
                 details=True)
    assert r["pairs"] == 40
    x0 = p.predict(p.inputs(small_pairs, r["details"]["rows"]), seed=5, x0=True)
    assert np.array_equal(r["details"]["pred"]["diffusion_x0"], x0)
    assert r["methods"]["diffusion_x0"]["psnr"] == r["methods"]["diffusion"]["psnr"]
    # Handed the same rows, it scores them as the split's.
    again = evaluate(p, small_pairs, "test", SamplerConfig("ddim", 1), seed=5, mean_of=0, progress=False,
                     rows=r["details"]["rows"])
    scores = lambda res: {m: {k: v for k, v in s.items() if k != "seconds_per_frame"} for m, s in res["methods"].items()}  # noqa: E731
    assert again["pairs"] == 40 and scores(again) == scores(r)


def test_copy_baseline_from_evaluate_equals_direct_computation(models, small_pairs):
    diffusion, regression = models
    p, reg = load_predictor(diffusion), load_predictor(regression)
    result = evaluate(p, small_pairs, "test", SamplerConfig("ddim", 3), regression=reg, progress=False)
    rows = small_pairs.select("test")
    first = {e["index"]: e["first_frame"] for e in small_pairs.meta["episodes"]}
    direct = []
    for e, t in rows:
        cur, fut = small_pairs.frames[first[e] + t], small_pairs.frames[first[e] + t + 5]
        direct.append(min(peak_signal_noise_ratio(fut, cur, data_range=255), PSNR_CAP) if not np.array_equal(cur, fut) else PSNR_CAP)
    assert result["pairs"] == len(rows)
    assert result["methods"]["copy"]["psnr"] == pytest.approx(np.mean(direct), rel=1e-9)
    assert set(result["methods"]) == {"diffusion", "diffusion_mean", "diffusion_x0", "copy", "regression"}
    for m in result["methods"].values():
        assert {"psnr", "ssim", "psnr_moving", "ssim_moving", "sharpness_moving", "seconds_per_frame"} <= set(m)
    assert set(result["per_task"]) == {"microwave", "kettle", "light switch", "slide cabinet"}
    assert regression_beside(diffusion) == regression


def test_streamed_evaluate_does_not_depend_on_the_batch(models, small_pairs):
    """evaluate streams a batch at a time: the deterministic methods score the same whatever the
    batch, and the sampled ones equal the whole-split computation with the same per-batch seeds."""
    p, reg = load_predictor(models[0]), load_predictor(models[1])
    sampler = SamplerConfig("ddim", 2)
    run = lambda batch: evaluate(p, small_pairs, "all", sampler, regression=reg, progress=False, batch=batch,  # noqa: E731
                                 mean_of=2, seed=3, details=True)
    small, big = run(5), run(64)
    assert small["pairs"] == big["pairs"] > 64  # several batches of 64 too
    # Copy is exact; the regression network may round a pixel differently at another batch size
    # (the CPU's convolution kernels are chosen per shape), so it is held to one grey level.
    for m, tol in (("copy", 0), ("regression", 1)):
        a, b = small["details"]["pred"][m].astype(int), big["details"]["pred"][m].astype(int)
        assert np.abs(a - b).max() <= tol
        for key, v in small["methods"][m].items():
            if key != "seconds_per_frame":
                assert v == pytest.approx(big["methods"][m][key], rel=1e-3 if tol else 1e-12), (m, key)
    # The old, whole-split way: every pair gathered at once, sampled in batches of 5 seeded 3 + i.
    rows = small_pairs.select("all")
    inputs = p.inputs(small_pairs, rows)
    pred = np.concatenate([p.predict({k: v[i : i + 5] for k, v in inputs.items()}, sampler, seed=3 + i)
                           for i in range(0, len(rows), 5)])
    assert np.array_equal(small["details"]["pred"]["diffusion"], pred)
    assert np.array_equal(small["details"]["future"], inputs["future"])
    whole = summarise([frame_scores(c, f, q) for c, f, q in zip(inputs["current"], inputs["future"], pred, strict=True)])
    assert {k: small["methods"]["diffusion"][k] for k in whole} == pytest.approx(whole, rel=1e-12, nan_ok=True)


def test_regression_baseline_is_deterministic(models, small_pairs):
    reg = load_predictor(models[1])
    frame = small_pairs.frames[3]
    assert reg.objective == "regression"
    assert np.array_equal(reg.predict({"current": frame}, seed=0), reg.predict({"current": frame}, seed=99))


def test_rollout_lengths_shapes_and_files(models, small_pairs, tmp_path):
    import imageio.v3 as iio

    p = load_predictor(models[0])
    frames = small_pairs.episode_frames(0)
    r = rollout(p, small_pairs.episode(0), start=4, horizon=6, sampler=SamplerConfig(steps=3))
    assert r.predicted.shape == r.truth.shape == (7, 32, 32, 3)
    assert r.env_steps.tolist() == [4, 9, 14, 19, 24, 29, 34]
    assert np.array_equal(r.predicted[0], frames[4]) and np.array_equal(r.truth[3], frames[19])
    assert r.psnr[0] == PSNR_CAP and len(r.psnr) == 7
    sbs = r.side_by_side()
    assert sbs.shape == (7, 32, 3 * 32 + 4, 3)
    gif = save_animation(sbs, tmp_path / "r.gif")
    mp4 = save_animation(sbs, tmp_path / "r.mp4")
    assert iio.imread(gif, index=None).shape[0] == 7
    assert iio.imread(mp4, index=None, plugin="pyav" if _has_pyav() else None).shape[0] == 7
    with pytest.raises(ValueError, match="room for 1..11"):
        rollout(p, small_pairs.episode(0), start=4, horizon=50)
    with pytest.raises(ValueError, match="unsupported animation format"):
        save_animation(sbs, tmp_path / "r.webm")


def _has_pyav():
    try:
        import av  # noqa: F401
        return True
    except ImportError:
        return False


def test_missing_and_mismatched_checkpoints_get_clear_errors(models, small_dataset, tmp_path):
    import torch

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_predictor(tmp_path / "nope.pt")
    # Weights that do not fit the architecture recorded in the checkpoint's own config.
    state = torch.load(models[0], weights_only=True)
    state["config"]["model"]["base_channels"] = 32
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_predictor(tmp_path / "mismatch.pt")
    # A model asked to score pairs of another size.
    p = load_predictor(models[0])
    other = build_pairs(PairsConfig(dataset=small_dataset, k=5, size=16), progress=False, workers=1)
    with pytest.raises(ValueError, match="trained on"):
        evaluate(p, other, progress=False)


def test_demo_callbacks_headless(models, small_pairs):
    from kitchen_lib.frontend.widgets import PredictionDemo

    p = load_predictor(models[0])
    demo = PredictionDemo(p, pairs_for(p), sampler=SamplerConfig(steps=2), rollout_horizon=3)
    first_test = demo.episode.value
    assert first_test in small_pairs.meta["splits"]["test"]
    before = demo.images[1].value
    demo.slider.value = 9
    assert demo.last["step"] == 9 and "PSNR" in demo.info.value
    assert demo.images[0].value != before or demo.images[1].value != before
    frames = small_pairs.episode_frames(first_test)
    from kitchen_lib.base.images import png_bytes

    assert demo.images[0].value == png_bytes(frames[9], 3)  # the current frame shown is step 9's
    assert demo.images[2].value == png_bytes(frames[14], 3)  # and the truth k=5 steps later
    demo.play.value = 4  # Play drives the slider through the kernel-side link
    assert demo.slider.value == 4 and demo.last["step"] == 4
    other = next(v for _, v in demo.episode.options if v != first_test)
    demo.episode.value = other
    assert demo.slider.max == len(small_pairs.episode_frames(other)) - 1 - 5
    demo.rollout_button.click()
    import imageio.v3 as iio

    assert iio.imread(demo.rollout_view.value, index=None, extension=".gif").shape[0] == 4
    demo.sampler.value = "ddpm"  # DDPM runs all its steps; the step slider is disabled
    assert demo.steps.disabled and "1000 network passes" in demo.info.value


def test_find_checkpoint_prefers_the_newest_run(tmp_path, monkeypatch):
    import os

    from kitchen_lib.training.runs import find_checkpoint

    monkeypatch.setenv("KITCHEN_DATA_DIR", str(tmp_path))
    assert find_checkpoint("cpu") is None
    older = tmp_path / "checkpoints" / "cpu" / "best.pt"
    newer = tmp_path / "checkpoints" / "notebook05-cpu-20260101-000000" / "best.pt"
    reg = tmp_path / "checkpoints" / "notebook05-cpu-20260101-000000-regression" / "best.pt"
    for i, p in enumerate((older, newer, reg)):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    assert find_checkpoint("cpu") == newer  # the regression run is not a diffusion model
    assert find_checkpoint("cpu", "regression") == reg


def test_notebooks_show_a_runs_last_weights(tmp_path, monkeypatch):
    import torch

    from kitchen_lib.base.errors import UserError
    from kitchen_lib.frontend.course import ensure_trained
    from kitchen_lib.training.config import preset, with_overrides

    monkeypatch.setenv("KITCHEN_DATA_DIR", str(tmp_path))
    run = tmp_path / "checkpoints" / "cpu"
    run.mkdir(parents=True)
    today = {"model": {}, "config": preset("cpu").to_dict()}  # all ensure_trained reads of a checkpoint
    torch.save(today, run / "best.pt")
    assert ensure_trained("cpu", smoke=False) == run / "best.pt"  # a run with no latest.pt
    torch.save(today, run / "latest.pt")
    assert ensure_trained("cpu", smoke=False) == run / "latest.pt"  # stopped by its budget after its best.pt
    assert ensure_trained("cpu", smoke=False, checkpoint=run / "best.pt") == run / "best.pt"  # asked for by name
    older = {"model": {}, "config": with_overrides(preset("cpu"), model={"patch_size": 1}).to_dict()}
    torch.save(older, run / "best.pt")  # a run of the recipe before patches is not shown as today's cpu model
    with pytest.raises(UserError, match=rf"model\.patch_size: checkpoint 1, now {preset('cpu').model.patch_size}"):
        ensure_trained("cpu", smoke=False)


def test_rollout_horizons_per_dataset_against_holding_the_start_frame(models, small_pairs, small_dataset):
    from kitchen_lib.base.errors import UserError
    from kitchen_lib.inference.rollout import mean_rollouts, rollout_episode

    p = load_predictor(models[0])
    s = mean_rollouts(p, small_pairs, ["val", "test"], 2, 4, progress=False)
    jobs = [tuple(j) for j in s["starts"]]
    held_out = small_pairs.meta["splits"]["val"] + small_pairs.meta["splits"]["test"]
    assert len(jobs) == 2 * len(held_out) and {ep for ep, _ in jobs} == set(held_out)
    runs = [rollout_episode(p, small_pairs, ep, start, 4, seed=start) for ep, start in jobs]
    assert np.allclose(s["psnr"], np.mean([r.psnr[1:] for r in runs], axis=0))
    assert np.allclose(s["hold_psnr"], np.mean([r.hold_psnr[1:] for r in runs], axis=0))
    margin = np.array(s["psnr"]) - np.array(s["hold_psnr"])
    assert s["worst_margin"] == pytest.approx(margin.min())
    assert s["falls_to_hold_at"] == (int(np.flatnonzero(margin <= 0)[0]) + 1 if (margin <= 0).any() else None)
    assert s["beats_hold_every_step"] == (s["falls_to_hold_at"] is None)
    beat_every_step = np.mean([np.all(np.array(r.psnr[1:]) > np.array(r.hold_psnr[1:])) for r in runs])
    assert s["share_beating_hold"] == pytest.approx(beat_every_step)
    # mean_rollouts on one dataset of the cache: here its only one, so the same as the whole split
    assert mean_rollouts(p, small_pairs, "test", 2, 3, dataset=small_dataset, progress=False) == \
        mean_rollouts(p, small_pairs, "test", 2, 3, progress=False)
    with pytest.raises(UserError, match="not one of this cache's datasets"):
        mean_rollouts(p, small_pairs, "test", 2, 3, dataset="kitchen-diffusion/other-v0", progress=False)


def test_error_map_classes_cover_each_frame_and_copy_errs_only_where_it_changes(models, small_pairs, bench_module):
    em = bench_module("error_map")

    p = load_predictor(models[0])
    model, copy = (em.error_map(p, 12, None, near=2, batch=5, copy=c) for c in (False, True))
    for r in (model, copy):
        assert r["pairs"] == 12 and sum(c["pixels"] for c in r["classes"].values()) == 12 * 32 * 32
        assert sum(c["share_of_error"] for c in r["classes"].values()) == pytest.approx(1)
    assert copy["classes"]["still, near motion"]["mse"] == copy["classes"]["still, far"]["mse"] == 0
    assert model["classes"]["moving"]["pixels"] == copy["classes"]["moving"]["pixels"] > 0
    # The classes' squared errors add up to the frames' mean squared error, as PSNR sees it.
    cache = pairs_for(p)
    inputs = p.inputs(cache, cache.select("test", 12))
    truth = inputs["future"].astype(np.float64) / 255
    pred = np.concatenate([p.predict({k: v[i : i + 5] for k, v in inputs.items()}, seed=i) for i in range(0, 12, 5)])
    whole = np.mean(((pred.astype(np.float64) / 255 - truth) ** 2).mean(-1))
    classes = sum(c["mse"] * c["pixels"] for c in model["classes"].values()) / (12 * 32 * 32)
    assert classes == pytest.approx(whole, rel=1e-9)
