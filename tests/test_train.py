import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kitchen_lib.base.device import cpu_has_native_bf16
from kitchen_lib.base.errors import UserError
from kitchen_lib.training.checkpoint import CheckpointError, load_checkpoint
from kitchen_lib.training.config import LEGACY_DIFFUSION, LEGACY_TRAIN, RunConfig, build_model, preset, with_overrides
from kitchen_lib.training.divergence import TrainingDiverged
from kitchen_lib.training.lr_schedule import lr_factor
from kitchen_lib.training.progress import advance, progress_bar
from kitchen_lib.training.runlog import read_metrics
from kitchen_lib.training.trainer import Trainer, train

FIXTURES = Path(__file__).parent / "fixtures"


def smoke_cfg(small_dataset, ckpt_dir, **train_fields):
    return with_overrides(preset("smoke"), data={"dataset": small_dataset},
                          train={"checkpoint_dir": str(ckpt_dir), "tensorboard_dir": str(ckpt_dir / "tb"), **train_fields})


def losses(ckpt_dir):
    m = read_metrics(ckpt_dir)
    return {r["step"]: r["loss"] for r in m.train}, m.column("val_loss")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli_train(small_dataset, ckpt_dir, *extra):
    return [sys.executable, "-m", "kitchen_lib", "train", "--preset", "smoke", "--dataset", small_dataset,
            "--checkpoint_dir", str(ckpt_dir), "--tensorboard_log_dir", str(ckpt_dir / "tb"), "--epochs", "12",
            "--checkpoint_freq", "1", "--no-log_images", "--lr_decay_steps", "60", *extra]


def test_kill_and_resume_continues_as_if_never_stopped(small_pairs, small_dataset, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    drop = ("--dropout", "0.1")  # the dropout masks come from the saved global generator too
    subprocess.run(_cli_train(small_dataset, straight, *drop), check=True, capture_output=True)

    proc = subprocess.Popen(_cli_train(small_dataset, killed, *drop), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900  # only against a hung run: the test waits on the file
    while not (killed / "epoch_0003.pt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(killed / "latest.pt")["epoch"]
    # epoch_0003.pt is written just before latest.pt: the kill may fall between the two.
    assert 2 <= stopped_at < 12
    subprocess.run(_cli_train(small_dataset, killed, *drop, "--resume_from_checkpoint", "latest"), check=True, capture_output=True)

    a, va = losses(straight)
    b, vb = losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 12 * 7 + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"step {step}"
    assert vb == pytest.approx(va, rel=1e-5)
    # The resumed model ends where the uninterrupted one does.
    ma, mb = load_checkpoint(straight / "latest.pt")["model"], load_checkpoint(killed / "latest.pt")["model"]
    assert all(torch.allclose(ma[k], mb[k], atol=1e-5) for k in ma)


def test_checkpoint_contents_and_best_by_validation(small_pairs, small_dataset, tmp_path):
    r = train(smoke_cfg(small_dataset, tmp_path, epochs=3), progress=False)
    s = load_checkpoint(tmp_path / "latest.pt")
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config"} <= set(s)
    assert s["epoch"] == 3 and s["step"] == r.optimizer_steps and s["config"]["model"]["base_channels"] == 16
    _, vals = losses(tmp_path)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["last_val_loss"] == pytest.approx(min(vals))  # best by validation, not training, loss
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]


def test_corrupt_latest_gives_clear_error_and_best_is_intact(small_pairs, small_dataset, tmp_path):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=2)
    train(cfg, progress=False)
    best_hash = sha(tmp_path / "best.pt")
    data = (tmp_path / "latest.pt").read_bytes()
    (tmp_path / "latest.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(cfg, resume=str(tmp_path / "latest.pt"), progress=False)  # asked for by path: no fallback
    assert sha(tmp_path / "best.pt") == best_hash
    Trainer(with_overrides(cfg, train={"epochs": 3}), resume="best", progress=False).fit()  # best still works


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_fresh_run_never_overwrites_and_mismatched_resume_names_fields(small_pairs, small_dataset, tmp_path):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=1)
    train(cfg, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(cfg, progress=False)
    other = with_overrides(cfg, model={"base_channels": 32, "time_emb_dim": 64})
    with pytest.raises(CheckpointError) as e:
        Trainer(other, resume="latest", progress=False)
    assert "model.base_channels: checkpoint 16, now 32" in str(e.value) and "model.time_emb_dim" in str(e.value)


def test_nan_loss_stops_with_a_message_and_keeps_checkpoints(small_pairs, small_dataset, tmp_path):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=1)
    train(cfg, progress=False)
    latest = sha(tmp_path / "latest.pt")
    trainer = Trainer(with_overrides(cfg, train={"epochs": 2}), resume="latest", progress=False)
    with torch.no_grad():
        trainer.model.net.inp.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        trainer.fit()
    assert sha(tmp_path / "latest.pt") == latest


def test_time_budget_stops_cleanly_then_resumes(small_pairs, small_dataset, tmp_path):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=3, max_minutes=1e-6)
    r = train(cfg, progress=False)
    assert r.stopped_early and r.optimizer_steps == 1
    s = load_checkpoint(tmp_path / "latest.pt")
    assert (s["epoch"], s["batch_in_epoch"], s["step"]) == (0, 1, 1)
    r2 = train(with_overrides(cfg, train={"max_minutes": None}), resume="latest", progress=False)
    assert not r2.stopped_early and r2.optimizer_steps == 3 * 7


def test_a_time_budgeted_run_shows_its_budget_not_its_steps():
    budget = with_overrides(preset("cpu"), train={"max_minutes": 20}).train
    bar = progress_bar("cpu", budget, steps_done=0, steps_total=34400)
    assert (bar.total, bar.unit, bar.desc) == (1200, "s", "train cpu (20 min budget)")
    advance(bar, budget, time.time() - 30, step=7, epoch=0, loss=0.5)
    assert bar.n == 30 and bar.postfix == "step=7, epoch=0, loss=0.5000"
    advance(bar, budget, time.time() - 5000, step=8, epoch=0, loss=0.5)  # past the budget: full, not beyond
    assert bar.n == 1200
    bar.close()
    no_budget = with_overrides(preset("cpu"), train={"max_minutes": None}).train
    steps = progress_bar("cpu", no_budget, steps_done=5, steps_total=34400)
    advance(steps, no_budget, time.time() - 30, step=6, epoch=0, loss=0.5)
    assert (steps.total, steps.unit, steps.n, steps.desc) == (34400, "step", 6, "train cpu")
    steps.close()


def test_tensorboard_has_scalars_images_hparams_and_graph(small_pairs, small_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = train(smoke_cfg(small_dataset, tmp_path, epochs=2), progress=False)
    acc = EventAccumulator(str(r.tensorboard_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"loss/train", "loss/val", "lr", "grad_norm"} <= set(tags["scalars"])
    assert "samples/current|predicted|actual" in tags["images"]
    img = acc.Images("samples/current|predicted|actual")[0]
    assert img.width > 3 * 32 and img.height > 4 * 32  # rows of current | predicted | actual
    assert acc.Graph() is not None
    assert len(acc.Scalars("loss/val")) == 2
    hp_runs = [d for d in tmp_path.rglob("events.out.tfevents.*")]
    assert any("hparams" in str(EventAccumulator(str(p.parent)).Reload().Tags().get("tensors", [])) or
               EventAccumulator(str(p.parent)).Reload().PluginTagToContent("hparams") for p in hp_runs)


def test_resume_survives_a_metrics_line_cut_short(small_pairs, small_dataset, tmp_path):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=1)
    train(cfg, progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "epoch": 1, "lo')  # what a kill in mid-write leaves
    r = train(with_overrides(cfg, train={"epochs": 2}), resume="latest", progress=False)
    steps, _ = losses(tmp_path)
    assert r.optimizer_steps == 14 and sorted(steps) == list(range(1, 15))


def test_configs_saved_before_an_option_existed_keep_their_meaning():
    cfg = with_overrides(preset("cpu"), diffusion={"residual": True, "loss_weighting": "min_snr"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # a round trip keeps everything
    old = cfg.to_dict()
    for key in LEGACY_DIFFUSION:
        del old["diffusion"][key]
    for key in LEGACY_TRAIN:
        del old["train"][key]
    loaded = RunConfig.from_dict(old)
    assert not loaded.diffusion.residual and loaded.diffusion.loss_weighting == "none"
    assert cfg.train.cpu_bf16 and not loaded.train.cpu_bf16  # a run from before bf16 resumes in fp32
    assert loaded.model == cfg.model and loaded.train == replace(cfg.train, cpu_bf16=False)


def test_a_checkpoint_saved_before_the_config_moved_still_loads_and_predicts_the_same():
    """tests/fixtures/legacy_checkpoint.pt was written by the code of commit 58b9570 (U-Net size and
    pixel attention in the model config, train.sample_steps); the npz holds its DDIM-3 outputs then."""
    from kitchen_lib.inference.predictor import load_predictor
    from kitchen_lib.model.samplers import SamplerConfig

    p = load_predictor(FIXTURES / "legacy_checkpoint.pt")
    assert p.config.model.attention_levels == (1,) and p.config.data.size == 16 and p.objective == "diffusion"
    io = np.load(FIXTURES / "legacy_checkpoint_io.npz")
    assert np.array_equal(p.predict({"current": io["current"]}, SamplerConfig("ddim", 3), seed=0), io["ddim3_seed0"])


def test_every_preset_is_a_working_configuration():
    assert RunConfig() == preset("cpu")
    for name in ("cpu", "smoke", "seed"):
        cfg = preset(name)
        model = build_model(cfg)
        assert model.net.image_size == cfg.data.size and model.net.image_channels == cfg.data.channels
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
    gray = build_model(with_overrides(preset("cpu"), data={"grayscale": True, "size": 32}))
    # derived from the data, never set twice: noisy change + current frame, one channel each, folded p x p
    p = preset("cpu").model.patch_size
    assert p > 1 and gray.net.inp.in_channels == 2 * p**2 and gray.net.image_size == 32
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpu")


def test_learning_rate_warms_up_then_decays_to_its_floor_by_the_step_asked():
    tc = preset("cpu").train
    flat = [lr_factor(tc, s) for s in range(0, 3 * tc.warmup_steps)]
    assert flat[0] < 0.05 and flat[tc.warmup_steps - 1] == 1.0 and set(flat[tc.warmup_steps:]) == {1.0}
    decay = with_overrides(preset("cpu"), train={"lr_decay_steps": 1000, "lr_final_fraction": 0.1}).train
    f = np.array([lr_factor(decay, s) for s in range(1200)])
    assert f[decay.warmup_steps - 1] == pytest.approx(1.0)
    assert np.all(np.diff(f[decay.warmup_steps:]) <= 1e-12)  # never rises again
    assert f[550] == pytest.approx(0.55, abs=1e-6)  # half way down the cosine
    assert np.allclose(f[1000:], 0.1)


def test_learning_rate_can_decay_over_minutes_of_training_instead_of_steps():
    decay = with_overrides(preset("cpu"), train={"lr_decay_minutes": 20.0, "lr_final_fraction": 0.1}).train
    after_warmup = decay.warmup_steps
    f = np.array([lr_factor(decay, after_warmup, m) for m in np.linspace(0, 30, 301)])
    assert f[0] == pytest.approx(1.0) and np.all(np.diff(f) <= 1e-12)
    assert f[100] == pytest.approx(0.55, abs=1e-6)  # minute 10 of 20: half way down the cosine
    assert np.allclose(f[200:], 0.1)
    assert lr_factor(decay, 10**6, 0.0) == pytest.approx(1.0)  # the steps no longer count
    assert lr_factor(decay, 0, 10.0) < 0.05  # the warm-up still does
    for bad in ({"lr_decay_minutes": 0.0}, {"lr_decay_minutes": -1.0}, {"lr_decay_minutes": 5.0, "lr_decay_steps": 100}):
        with pytest.raises(UserError, match="lr_decay"):
            with_overrides(preset("cpu"), train=bad).validate()


def test_a_decay_over_minutes_reaches_its_floor_and_a_resume_continues_it(small_pairs, small_dataset, tmp_path, capsys):
    from kitchen_lib.training.checkpoint import write_checkpoint

    lr = 5e-4
    fast = smoke_cfg(small_dataset, tmp_path / "fast", epochs=2, learning_rate=lr, lr_decay_minutes=1e-4, max_minutes=5)
    Trainer(fast, progress=True).fit()
    assert read_metrics(tmp_path / "fast").train[-1]["lr"] == pytest.approx(0.1 * lr)  # 6 ms of decay: long over
    assert "--lr_decay_minutes 5 spreads its decay" in capsys.readouterr().out  # a budget longer than the decay is named

    slow = smoke_cfg(small_dataset, tmp_path / "slow", epochs=2, learning_rate=lr, lr_decay_minutes=1000.0)
    train(slow, progress=False)
    assert read_metrics(tmp_path / "slow").train[-1]["lr"] == pytest.approx(lr, rel=1e-3)  # seconds of 1,000 minutes
    # Pretend the run had trained 500 of its 1,000 minutes: the resumed run goes on half way down the cosine.
    state = load_checkpoint(tmp_path / "slow" / "latest.pt")
    write_checkpoint(state | {"train_seconds": 30_000.0}, tmp_path / "slow" / "latest.pt")
    trainer = Trainer(with_overrides(slow, train={"epochs": 3}), resume="latest", progress=False)
    assert trainer.trained_minutes == pytest.approx(500.0)
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.55 * lr)
    trainer.fit()
    assert 0.5 * lr < read_metrics(tmp_path / "slow").train[-1]["lr"] < 0.55 * lr  # a few seconds further down


def test_a_trainer_trains_the_model_and_data_sets_it_is_handed(small_pairs, small_dataset, tmp_path):
    from kitchen_lib.data.cache_builder import build_pairs
    from kitchen_lib.data.examples import ExampleSet
    from kitchen_lib.inference.predictor import load_predictor

    cfg = with_overrides(preset("smoke-world"), data={"dataset": small_dataset},
                         train={"checkpoint_dir": str(tmp_path), "tensorboard_dir": str(tmp_path / "tb"), "epochs": 1})
    cache = build_pairs(cfg.data, root=cfg.root() / "pairs", progress=False)
    # Handed the val split to train on: its vector statistics, not the config's train split's, must be used.
    train_set, val_set = (ExampleSet(cache, cache.pairs(split), cfg.conditioning) for split in ("val", "test"))
    mean, std = train_set.vector_stats()
    assert not np.allclose(mean, ExampleSet(cache, cache.pairs("train"), cfg.conditioning).vector_stats()[0])
    torch.manual_seed(cfg.train.seed + 99)  # another init than the Trainer's own
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = Trainer(cfg, progress=False, model=model, train_set=train_set, val_set=val_set)
    assert trainer.model is model and trainer.train_set is train_set
    assert torch.equal(model.net.vector_mean, torch.from_numpy(mean)) and torch.equal(model.net.vector_std, torch.from_numpy(std))
    r = trainer.fit()
    assert r.optimizer_steps == len(train_set) // cfg.train.global_batch > 0
    saved = load_checkpoint(tmp_path / "latest.pt")
    assert all(torch.equal(saved["model"][k], v) for k, v in model.net.state_dict().items())  # the handed model, trained
    assert any(not torch.equal(saved["model"][k], before[k]) for k in before if k not in ("vector_mean", "vector_std"))
    p = load_predictor(tmp_path / "latest.pt", device="cpu")
    inputs = p.inputs(cache, cache.select("test", 3))
    out = p.predict(inputs, seed=0)
    assert out.shape == inputs["current"].shape and out.dtype == np.uint8
    # The predictor holds the handed model's EMA weights, not a fresh init's.
    assert torch.equal(p.model.net.inp.weight, trainer.ema.module.inp.weight.contiguous(memory_format=torch.contiguous_format))


def test_a_handed_model_its_config_does_not_describe_is_refused(tmp_path):
    cfg = with_overrides(preset("smoke"), train={"checkpoint_dir": str(tmp_path / "run")})
    wider = build_model(with_overrides(cfg, model={"base_channels": 32, "time_emb_dim": 64}))
    with pytest.raises(ValueError, match="model.base_channels: the model's 32, the config's 16") as e:
        Trainer(cfg, progress=False, model=wider)
    assert "model.time_emb_dim" in str(e.value)
    with pytest.raises(ValueError, match="model.dropout"):  # same shapes, another network
        Trainer(cfg, progress=False, model=build_model(with_overrides(cfg, model={"dropout": 0.3})))
    swapped = build_model(cfg)
    swapped.net.inp = torch.nn.Conv2d(6, 8, 3)  # a layer replaced after building
    with pytest.raises(ValueError, match="net weights"):
        Trainer(cfg, progress=False, model=swapped)
    with pytest.raises(ValueError, match="objective"):
        Trainer(cfg, progress=False, model=build_model(with_overrides(cfg, train={"objective": "regression"})))
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_readme_names_every_preset():
    """The docs' preset list is checked against PRESETS, so a new preset cannot be left out of it."""
    from kitchen_lib.training.config import PRESETS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    item = readme[readme.index("- **Presets** (`--preset`)"):]
    item = item[: item.index("\n- **")]
    assert [name for name in PRESETS if f"`{name}`" not in item] == []
    assert "`no-such-preset`" not in item  # the check reads the item, not the whole file


def test_checkpoints_record_the_training_time_across_resumes(small_pairs, small_dataset, tmp_path):
    """train_seconds: a time-to-quality curve's x axis (notebook 07), summed over a run's fits."""
    train(smoke_cfg(small_dataset, tmp_path, epochs=1), progress=False)
    first = load_checkpoint(tmp_path / "latest.pt")["train_seconds"]
    assert first > 0
    trainer = Trainer(smoke_cfg(small_dataset, tmp_path, epochs=2), resume="latest", progress=False)
    assert trainer.train_seconds == first  # a resume carries the time already trained
    r = trainer.fit()
    second = load_checkpoint(tmp_path / "latest.pt")["train_seconds"]
    assert first < second <= first + r.seconds + 1  # plus this fit's time up to its last checkpoint


def test_cpu_bf16_runs_the_step_in_bf16_and_keeps_fp32_weights(small_pairs, small_dataset, tmp_path):
    cfg = smoke_cfg(small_dataset, tmp_path, epochs=2, cpu_bf16=True, log_images=False)
    t = Trainer(cfg, progress=False)
    if not cpu_has_native_bf16():  # emulated bf16 would be slower than fp32: the run keeps fp32
        t.close()
        assert t.autocast_dtype is None
        return
    assert t.autocast_dtype == torch.bfloat16
    seen, ema_seen = [], []  # the dtype a convolution computes in: training (with grad); validation (the EMA copy's)
    for net, out in ((t.model.net, seen), (t.ema.module, ema_seen)):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o, out=out: out.append((torch.is_grad_enabled(), o.dtype)))
    r = t.fit()
    assert r.optimizer_steps > 0 and np.isfinite(r.final_val_loss)
    assert seen.count((True, torch.bfloat16)) == r.optimizer_steps  # every training step in bf16
    assert (False, torch.bfloat16) in ema_seen and (False, torch.float32) not in ema_seen  # and validation
    s = load_checkpoint(tmp_path / "latest.pt")
    assert all(v.dtype == torch.float32 for v in s["model"].values() if v.is_floating_point())
    assert s["config"]["train"]["cpu_bf16"] is True
    fp32 = Trainer(with_overrides(cfg, train={"cpu_bf16": False}), resume="latest", progress=False)  # like amp, resumable
    fp32.close()
    assert fp32.autocast_dtype is None and fp32.opt_step == r.optimizer_steps
