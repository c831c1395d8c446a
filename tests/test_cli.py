import re
import subprocess
import sys


def test_quickstart_smoke_runs_the_whole_pipeline():
    """The README's main command, in its tiny form: dataset, pairs, training, a sample grid."""
    out = subprocess.run([sys.executable, "-m", "kitchen_lib", "quickstart", "--smoke"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for step in ("== 1/4", "== 2/4", "== 3/4", "== 4/4", "copy-the-current-frame baseline"):
        assert step in text
    assert "wrote" in text and "quickstart_smoke.png" in text
    again = subprocess.run([sys.executable, "-m", "kitchen_lib", "quickstart", "--smoke"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "a run is already there: using it" in again.stdout  # nothing overwritten


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
    options = set(re.findall(r"--[a-z_]+", out.stdout))
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
