import json
import os
import re
import subprocess
import sys

import pytest

from kitchen_lib.base.errors import UserError


def test_quickstart_smoke_runs_the_whole_pipeline(tmp_path):
    """The README's main command, in its tiny form: dataset, pairs, both models (frame-only and
    world), a labelled grid each, a rollout GIF and the summary; a second call reuses everything."""
    env = os.environ | {"KITCHEN_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "kitchen_lib", "quickstart", "--smoke"], capture_output=True, text=True,
                         timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for step in ("== 1/5", "== 2/5", "== 3/5", "== 4/5", "== 5/5", "copy-the-current-frame baseline"):
        assert step in text
    from kitchen_lib.data.datasets import EXPLORE_SMOKE_DATASET_ID, is_local

    assert EXPLORE_SMOKE_DATASET_ID in text and is_local(EXPLORE_SMOKE_DATASET_ID)  # notebook 09's data made too
    samples = tmp_path / "data" / "samples"
    for name in ("quickstart_smoke.png", "quickstart_smoke-world.png", "quickstart_smoke-world_rollout.gif",
                 "summary.md", "summary.json"):
        assert (samples / name).stat().st_size > 0, name
    summary = json.loads((samples / "summary.json").read_text())
    assert set(summary["models"]) == {"smoke", "smoke-world"}
    assert "test pairs" in summary["pairs"]
    for m in summary["models"].values():  # the over-copy figures are the model's minus copy's, on the same pairs
        assert m["over_copy"] == pytest.approx(m["psnr"] - summary["copy"]["psnr"])
    assert "shuffled_actions_cost_moving" in summary["models"]["smoke-world"]
    assert "| `smoke-world` |" in (samples / "summary.md").read_text()
    scored = {p: p.stat().st_mtime_ns for p in samples.glob("quickstart_*_scores.json")}
    assert len(scored) == 2
    again = subprocess.run([sys.executable, "-m", "kitchen_lib", "quickstart", "--smoke"], capture_output=True,
                           text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("a run is already there, using it") == 2  # nothing trained or overwritten
    assert {p: p.stat().st_mtime_ns for p in scored} == scored  # the scores of the same checkpoints are reused
    assert "optimizer steps in" not in again.stdout  # nothing trained
    # A run of another recipe in a preset's folder is not passed off as today's: quickstart stops, saying so.
    from kitchen_lib.frontend.quickstart import same_recipe
    from kitchen_lib.training.checkpoint import load_checkpoint
    from kitchen_lib.training.config import preset, with_overrides

    latest = tmp_path / "data" / "checkpoints" / "smoke" / "latest.pt"
    saved = load_checkpoint(latest)["config"]
    same_recipe(preset("smoke"), latest, saved)  # today's recipe: reused
    same_recipe(with_overrides(preset("smoke"), train={"max_minutes": 3, "world_size": 2}), latest, saved)  # budget, ranks
    with pytest.raises(UserError, match=r"model\.patch_size: checkpoint 1, now 2.*mv "):
        same_recipe(with_overrides(preset("smoke"), model={"patch_size": 2}), latest, saved)


def test_a_run_stopped_short_of_its_budget_is_trained_for_the_rest_by_quickstart():
    """Ctrl-C during quickstart's training leaves latest.pt: the next quickstart trains on for the
    minutes left rather than scoring a half-trained model as the preset's."""
    from kitchen_lib.frontend.quickstart import unfinished_minutes
    from kitchen_lib.training.config import preset, with_overrides

    cfg = with_overrides(preset("cpu"), train={"max_minutes": 12})  # 100 epochs
    assert unfinished_minutes(cfg, {"train_seconds": 3 * 60.0, "epoch": 1}) == pytest.approx(9.0)
    assert unfinished_minutes(cfg, {"train_seconds": 12 * 60 + 5.0, "epoch": 3}) == 0  # stopped by its budget
    assert unfinished_minutes(cfg, {"train_seconds": 11.8 * 60, "epoch": 3}) == 0  # the last half minute: done
    assert unfinished_minutes(cfg, {"epoch": 3}) == 0  # a run from before checkpoints recorded their time
    assert unfinished_minutes(cfg, {"train_seconds": 60.0, "epoch": 100}) == 0  # it finished its epochs
    assert unfinished_minutes(preset("smoke"), {"train_seconds": 1.0, "epoch": 0}) == 0  # no time budget


def test_cli_argument_errors_come_before_loading(tmp_path):
    ddpm = subprocess.run([sys.executable, "-m", "kitchen_lib", "sample", "--checkpoint", str(tmp_path / "x.pt"),
                           "--sampler", "ddpm", "--steps", "10"], capture_output=True, text=True)
    assert ddpm.returncode == 2 and "--steps is for DDIM" in ddpm.stderr
    missing = subprocess.run([sys.executable, "-m", "kitchen_lib", "evaluate", "--checkpoint", str(tmp_path / "x.pt")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr


def _parse(*argv):
    from kitchen_lib.frontend.cli import build_parser
    from kitchen_lib.frontend.flags import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_train_flags_are_generated_from_every_config_field():
    import dataclasses

    from kitchen_lib.frontend.flags import GROUPS, NOT_FLAGS, flag_name

    out = subprocess.run([sys.executable, "-m", "kitchen_lib", "train", "--help"], capture_output=True, text=True)
    options = set(re.findall(r"--[a-z0-9_]+", out.stdout))
    for group in ("data", "model", "diffusion", "train", "sampler"):
        for f in dataclasses.fields(GROUPS[group]):
            if (group, f.name) in NOT_FLAGS:  # set from the environment (torchrun), never typed
                assert f"--{f.name}" not in options, (group, f.name)
                continue
            assert f"--{flag_name(group, f.name)}" in options, (group, f.name)


def test_original_flag_names_mean_the_same_as_ours():
    from kitchen_lib.training.config import preset, with_overrides

    original = _parse("--preset", "seed", "--k_step_future", "3", "--img_resolution", "64", "--model_channel_mults", "1,2,4",
                      "--model_attention_resolutions_divisor", "2", "--diffusion_timesteps", "500", "--disable_amp",
                      "--model_dropout_rate", "0.2", "--log_freq", "5", "--log_image_freq_multiplier", "3",
                      "--no-save_best_model", "--tensorboard_log_dir", "tb", "--num_workers_loader", "1")
    ours = _parse("--preset", "seed", "--k", "3", "--size", "64", "--channel_mults", "1,2,4", "--attention_levels", "1",
                  "--timesteps", "500", "--no-amp", "--dropout", "0.2", "--log_freq", "5", "--log_image_every", "15",
                  "--no-save_best", "--tensorboard_dir", "tb", "--num_workers", "1")
    assert original == ours
    assert ours.data.k == 3 and ours.model.channel_mults == (1, 2, 4) and not ours.train.amp
    # What was not given stays the preset's.
    assert ours == with_overrides(ours, train={"learning_rate": preset("seed").train.learning_rate})
    assert _parse() == preset("cpu")


def test_bad_flag_values_name_the_flag():
    for argv, message in ((["--channel_mults", "a,b"], "--channel_mults"), (["--schedule", "quadratic"], "--schedule"),
                          (["--max_minutes", "soon"], "--max_minutes")):
        out = subprocess.run([sys.executable, "-m", "kitchen_lib", "train", *argv], capture_output=True, text=True)
        assert out.returncode == 2 and message in out.stderr, (argv, out.stderr)
