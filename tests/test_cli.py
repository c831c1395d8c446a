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
