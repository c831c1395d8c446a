"""Command line: `python -m kitchen_lib {quickstart,generate,render,pairs,train,sample,evaluate,rollout} ...`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kitchen_lib.datasets import (
    D4RL_DATASET_IDS,
    OFFLINE_DATASET_ID,
    DatasetError,
    generate_dataset,
    is_local,
    open_dataset,
)
from kitchen_lib.diffusion import DEFAULT_DDIM_STEPS
from kitchen_lib.render import DEFAULT_QUALITY, QUALITIES

SMOKE_EPISODES, SMOKE_MAX_STEPS = 3, 60
DEFAULT_EPISODES, DEFAULT_MAX_STEPS = 20, 900


def _dataset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=OFFLINE_DATASET_ID,
                   help=f"Minari dataset id: ours ({OFFLINE_DATASET_ID}) or D4RL's ({', '.join(D4RL_DATASET_IDS)})")
    p.add_argument("--download", action="store_true", help="download a D4RL dataset if it is not local (needs internet)")


def cmd_generate(a: argparse.Namespace) -> None:
    report = generate_dataset(a.dataset, episodes=a.episodes, seed=a.seed, max_steps=a.max_steps,
                              overwrite=a.overwrite, random_actions=a.random_actions)
    rates = ", ".join(f"{t} {r:.0%}" for t, r in report.success_rates().items())
    print(f"wrote {report.dataset_id}: {report.episodes} episodes, {report.steps} steps in {report.seconds:.0f}s")
    if not a.random_actions:
        print(f"tasks completed (share of episodes): {rates}")


def cmd_render(a: argparse.Namespace) -> None:
    from kitchen_lib.datasets import load_episode
    from kitchen_lib.images import save_png
    from kitchen_lib.render import KitchenRenderer

    open_dataset(a.dataset, download=a.download)
    ep = load_episode(a.dataset, a.episode)
    if not 0 <= a.step < len(ep.observations):
        raise DatasetError(f"episode {a.episode} of {a.dataset} has steps 0..{len(ep.observations) - 1}; asked for {a.step}")
    with KitchenRenderer(a.size, a.quality) as r:
        frame = r.render(ep.observations[a.step])
    out = save_png(frame, a.out)
    print(f"wrote {out} ({a.size}x{a.size}, {a.quality})")


def _pairs_config(a: argparse.Namespace):
    from kitchen_lib.pairs import PairsConfig

    return PairsConfig(dataset=a.dataset, k=a.k, size=a.size, grayscale=a.grayscale, quality=a.quality,
                       max_episodes=a.max_episodes)


def cmd_pairs(a: argparse.Namespace) -> None:
    from kitchen_lib.pairs import build_pairs

    open_dataset(a.dataset, download=a.download)
    t0 = time.time()
    cache = build_pairs(_pairs_config(a), force=a.force_rebuild, progress=not a.json)
    summary = cache.summary() | {"seconds": round(time.time() - t0, 3)}
    print(json.dumps(summary, indent=2) if a.json else _format_summary(summary))


def _format_summary(s: dict) -> str:
    p = s["pairs"]
    return (f"{s['dataset']}: k={s['k']}, {s['size']}px x{s['channels']}, pairs train/val/test "
            f"{p['train']}/{p['val']}/{p['test']}, cache {s['cache']} ({s['seconds']}s)")


def cmd_quickstart(a: argparse.Namespace) -> None:
    """The main job: make the offline dataset if needed, build its pairs, train, sample."""
    from kitchen_lib.baselines import copy_baseline
    from kitchen_lib.images import save_png
    from kitchen_lib.inference import load_predictor, prediction_grid
    from kitchen_lib.pairs import build_pairs
    from kitchen_lib.paths import data_dir
    from kitchen_lib.train import RUN_PRESETS, train

    preset = "smoke" if a.smoke else "cpu"
    cfg = RUN_PRESETS[preset]
    dataset = cfg.data.dataset
    episodes, max_steps = (SMOKE_EPISODES, SMOKE_MAX_STEPS) if a.smoke else (DEFAULT_EPISODES, DEFAULT_MAX_STEPS)
    print(f"== 1/4 dataset {dataset}")
    if not is_local(dataset):
        cmd_generate(argparse.Namespace(dataset=dataset, episodes=episodes, seed=0, max_steps=max_steps,
                                        overwrite=False, random_actions=False))
    else:
        print("already in the Minari store")
    print(f"== 2/4 frame pairs (k={cfg.data.k}, {cfg.data.size}px)")
    t0 = time.time()
    cache = build_pairs(cfg.data, progress=True)
    print(_format_summary(cache.summary() | {"seconds": round(time.time() - t0, 2)}))
    base = copy_baseline(cache, "test")
    print(f"copy-the-current-frame baseline on the test episodes: PSNR {base['psnr']:.2f} dB, "
          f"{base['changed_fraction']:.1%} of pixels change by > 0.05")
    ckpt = cfg.checkpoint_dir()
    print(f"== 3/4 train (preset {preset}) into {ckpt}")
    if (ckpt / "latest.pt").exists():
        print("a run is already there: using it (resume it with `python -m kitchen_lib train --preset "
              f"{preset} --resume_from_checkpoint latest`, or delete the folder to start over)")
    else:
        r = train(cfg)
        print(f"{r.steps} steps in {r.seconds / 60:.1f} min, validation loss {r.final_val_loss:.5f}; "
              f"TensorBoard: tensorboard --logdir {r.tensorboard_dir.parent}")
    print("== 4/4 sample predictions on the test episodes")
    best = ckpt / "best.pt" if (ckpt / "best.pt").exists() else ckpt / "latest.pt"
    predictor = load_predictor(best)
    t0 = time.time()
    grid = prediction_grid(predictor, cache, "test", n=6, sampler="ddim", steps=DEFAULT_DDIM_STEPS)
    out = save_png(grid, data_dir() / "samples" / f"quickstart_{preset}.png", scale=2)
    print(f"wrote {out}: rows of current | predicted (DDIM-50) | actual ({(time.time() - t0) / 6:.2f}s per frame)")


def run_config_from_args(a: argparse.Namespace):
    """The preset's RunConfig with every flag the user gave laid over it."""
    from kitchen_lib.train import RUN_PRESETS, with_overrides

    base = RUN_PRESETS[a.preset]
    data, model, diff, train = {}, {}, {}, {}
    set_if = lambda d, key, value: d.__setitem__(key, value) if value is not None else None  # noqa: E731
    set_if(data, "dataset", a.dataset)
    set_if(data, "k", a.k_step_future)
    size = a.img_resolution or base.data.size
    if a.img_resolution:
        data["size"] = model["image_size"] = a.img_resolution
    if a.grayscale:
        data["grayscale"], model["image_channels"] = True, 1
    if a.model_attention_resolutions_divisor:
        model["attention_resolutions"] = (size // a.model_attention_resolutions_divisor,)
    elif a.img_resolution and base.model.attention_resolutions:  # keep attention at the same relative size
        model["attention_resolutions"] = tuple(size * r // base.model.image_size for r in base.model.attention_resolutions)
    set_if(model, "base_channels", a.model_base_channels)
    if a.model_channel_mults:
        model["channel_mults"] = tuple(int(x) for x in a.model_channel_mults.split(","))
    set_if(model, "num_res_blocks", a.model_num_res_blocks)
    set_if(model, "time_emb_dim", a.model_time_emb_dim)
    set_if(model, "time_mlp_dim", a.model_time_emb_mlp_dim)
    set_if(model, "dropout", a.model_dropout_rate)
    set_if(diff, "timesteps", a.diffusion_timesteps)
    set_if(diff, "beta_start", a.beta_start)
    set_if(diff, "beta_end", a.beta_end)
    set_if(diff, "prediction", a.prediction)
    set_if(diff, "schedule", a.schedule)
    set_if(diff, "residual", a.residual)
    set_if(diff, "loss_weighting", a.loss_weighting)
    set_if(diff, "min_snr_gamma", a.min_snr_gamma)
    set_if(train, "ema_decay", a.ema_decay)
    set_if(train, "device", a.device)
    set_if(train, "num_workers", a.num_workers_loader)
    set_if(train, "epochs", a.epochs)
    set_if(train, "batch_size", a.batch_size)
    set_if(train, "learning_rate", a.learning_rate)
    if a.disable_amp:
        train["amp"] = False
    set_if(train, "checkpoint_dir", a.checkpoint_dir)
    set_if(train, "checkpoint_freq", a.checkpoint_freq)
    set_if(train, "save_best", a.save_best_model)
    set_if(train, "tensorboard_dir", a.tensorboard_log_dir)
    set_if(train, "run_name_prefix", a.tensorboard_run_name_prefix)
    set_if(train, "log_freq", a.log_freq)
    set_if(train, "log_images", a.log_images)
    if a.log_image_freq_multiplier is not None:
        train["log_image_every"] = (a.log_freq or base.train.log_freq) * a.log_image_freq_multiplier
    set_if(train, "max_minutes", a.max_minutes)
    set_if(train, "objective", a.objective)
    return with_overrides(base, data=data, model=model, diffusion=diff, train=train)


def cmd_train(a: argparse.Namespace) -> None:
    import os

    from kitchen_lib.train import train

    if a.dataset_dir:
        os.environ["KITCHEN_DATA_DIR"] = a.dataset_dir
    cfg = run_config_from_args(a)
    open_dataset(cfg.data.dataset, download=a.download)
    resume = None if a.resume_from_checkpoint in (None, "none") else a.resume_from_checkpoint
    r = train(cfg, resume=resume, force_rebuild=a.force_rebuild_dataset)
    print(f"{'stopped early' if r.stopped_early else 'done'}: {r.epochs_done} epochs, {r.steps} steps in {r.seconds / 60:.1f} min "
          f"({r.samples_per_second:.1f} samples/s, {r.parameters:,} parameters); validation loss final {r.final_val_loss:.5f}, "
          f"best {r.best_val_loss:.5f}")
    print(f"checkpoints: {r.checkpoint_dir}   TensorBoard: tensorboard --logdir {r.tensorboard_dir.parent}")


def _pairs_for_model(a: argparse.Namespace, predictor):
    """The pairs cache for a loaded model: its own dataset, or --dataset with its settings."""
    from kitchen_lib.inference import pairs_for

    if a.dataset:
        open_dataset(a.dataset)
    return pairs_for(predictor, a.dataset)


def cmd_sample(a: argparse.Namespace) -> None:
    from kitchen_lib.images import save_png
    from kitchen_lib.inference import load_predictor, prediction_grid

    steps = _ddim_steps(a, DEFAULT_DDIM_STEPS)  # argument errors before any loading
    predictor = load_predictor(a.checkpoint, device=a.device or "auto")
    cache = _pairs_for_model(a, predictor)
    t0 = time.time()
    grid = prediction_grid(predictor, cache, a.split, a.n, a.sampler, steps, a.seed)
    out = save_png(grid, a.out, scale=a.scale)
    steps = steps or predictor.diffusion.T
    print(f"wrote {out}: {a.n} rows of current | predicted ({a.sampler}, {steps} steps) | actual, "
          f"{(time.time() - t0) / a.n:.2f}s per predicted frame")


def _ddim_steps(a: argparse.Namespace, default: int) -> int | None:
    """--steps applies to DDIM; DDPM always runs every step, and asking it for fewer is an error."""
    if a.sampler == "ddpm":
        if a.steps is not None:
            raise ValueError("--steps is for DDIM; DDPM always runs all of the model's diffusion steps")
        return None
    return a.steps or default


def cmd_evaluate(a: argparse.Namespace) -> None:
    from kitchen_lib.evaluate import evaluate, format_table, load_with_regression

    steps = _ddim_steps(a, DEFAULT_DDIM_STEPS)
    predictor, regression = load_with_regression(a.checkpoint, a.regression, device=a.device or "auto")
    cache = _pairs_for_model(a, predictor)
    result = evaluate(predictor, cache, a.split, a.sampler, steps, regression, a.max_pairs, a.seed)
    print(format_table(result))
    if regression is None:
        print("(no regression baseline: train one with --objective regression, or pass --regression PATH)")
    if a.json:
        from kitchen_lib.paths import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {a.json}")


def cmd_rollout(a: argparse.Namespace) -> None:
    from kitchen_lib.inference import load_predictor
    from kitchen_lib.rollout import rollout, save_animation

    steps = _ddim_steps(a, DEFAULT_DDIM_STEPS)
    predictor = load_predictor(a.checkpoint, device=a.device or "auto")
    cache = _pairs_for_model(a, predictor)
    r = rollout(predictor, cache.episode_frames(a.episode), a.start, a.horizon, a.sampler, steps, a.seed)
    out = save_animation(r.side_by_side(), a.out, fps=a.fps)
    print(f"wrote {out}: {a.horizon} steps of k={predictor.k} from step {a.start} of episode {a.episode} "
          f"(truth | prediction | difference); PSNR per step: {' '.join(f'{p:.1f}' for p in r.psnr[1:])}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kitchen_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="the main job: dataset (if missing), pairs, train the cpu preset, sample grid")
    p.add_argument("--smoke", action="store_true", help="tiny dataset, frames and model: a one-minute check that all runs")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("generate", help="run the scripted expert and write a local Minari dataset")
    p.add_argument("--dataset", default=OFFLINE_DATASET_ID)
    p.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_steps", type=int, default=DEFAULT_MAX_STEPS, help="cut episodes at this many steps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id")
    p.add_argument("--random_actions", action="store_true", help="random actions instead of the expert (scale tests)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("render", help="render one frame of a dataset to a PNG")
    _dataset_arg(p)
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--quality", choices=QUALITIES, default=DEFAULT_QUALITY)
    p.add_argument("--out", default="frame.png")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("pairs", help="build (or load) the cached (current, future) frame pairs")
    _dataset_arg(p)
    p.add_argument("--k", type=int, default=5, help="steps between current and future frame")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--grayscale", action="store_true")
    p.add_argument("--quality", choices=QUALITIES, default=DEFAULT_QUALITY)
    p.add_argument("--max_episodes", type=int, default=None, help="use only the first N episodes")
    p.add_argument("--force_rebuild", action="store_true", help="rebuild the cache even if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_pairs)
    p = sub.add_parser("train", help="train the conditional diffusion model (flags override the preset)")
    p.add_argument("--preset", choices=["smoke", "cpu", "seed"], default="cpu",
                   help="smoke: seconds, for tests; cpu: 64px, about 20 min on a laptop; seed: the original 128px setup, for a GPU")
    p.add_argument("--dataset", default=None, help="Minari dataset id (default: the preset's)")
    p.add_argument("--download", action="store_true", help="download a D4RL dataset if it is not local")
    p.add_argument("--dataset_dir", default=None, help="folder for generated data: pair caches, checkpoints, logs (default data/)")
    p.add_argument("--k_step_future", type=int, default=None)
    p.add_argument("--force_rebuild_dataset", action="store_true")
    p.add_argument("--grayscale", action="store_true")
    p.add_argument("--img_resolution", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--num_workers_loader", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--learning_rate", type=float, default=None)
    p.add_argument("--disable_amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--diffusion_timesteps", type=int, default=None)
    p.add_argument("--beta_start", type=float, default=None)
    p.add_argument("--beta_end", type=float, default=None)
    p.add_argument("--schedule", choices=["linear", "cosine"], default=None)
    p.add_argument("--prediction", choices=["eps", "v", "x0"], default=None)
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="diffuse the change from the current frame rather than the future frame")
    p.add_argument("--loss_weighting", choices=["none", "min_snr"], default=None)
    p.add_argument("--min_snr_gamma", type=float, default=None)
    p.add_argument("--ema_decay", type=float, default=None)
    p.add_argument("--model_base_channels", type=int, default=None)
    p.add_argument("--model_channel_mults", default=None, help='e.g. "1,2,3"')
    p.add_argument("--model_num_res_blocks", type=int, default=None)
    p.add_argument("--model_attention_resolutions_divisor", type=int, default=None,
                   help="attention at img_resolution / divisor pixels (4: 32px for 128px frames)")
    p.add_argument("--model_time_emb_dim", type=int, default=None)
    p.add_argument("--model_time_emb_mlp_dim", type=int, default=None)
    p.add_argument("--model_dropout_rate", type=float, default=None)
    p.add_argument("--checkpoint_dir", default=None, help="default data/checkpoints/<preset>")
    p.add_argument("--checkpoint_freq", type=int, default=None, help="also keep epoch_NNNN.pt every N epochs")
    p.add_argument("--save_best_model", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--resume_from_checkpoint", default="none", metavar="{latest,best,none,PATH}")
    p.add_argument("--tensorboard_log_dir", default=None, help="default data/tensorboard")
    p.add_argument("--tensorboard_run_name_prefix", default=None)
    p.add_argument("--log_freq", type=int, default=None, help="steps between scalar logs")
    p.add_argument("--log_images", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--log_image_freq_multiplier", type=int, default=None, help="sample images every log_freq x this steps")
    p.add_argument("--max_minutes", type=float, default=None, help="stop cleanly with a checkpoint after this long")
    p.add_argument("--objective", choices=["diffusion", "regression"], default=None,
                   help="regression: the deterministic baseline, the same U-Net trained with MSE on the future frame "
                        "(default folder data/checkpoints/<preset>-regression)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="predict frames with a trained model: a grid of current | predicted | actual")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, default=None, help=f"DDIM steps (default {DEFAULT_DDIM_STEPS}); DDPM always runs all T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--scale", type=int, default=2, help="enlarge the grid this many times")
    p.add_argument("--out", default="grid.png")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="score the model and the baselines on held-out episodes")
    p.add_argument("--checkpoint", required=True, help="the diffusion model's checkpoint")
    p.add_argument("--regression", default=None, help="regression baseline checkpoint (default: <run>-regression beside it)")
    p.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, default=None, help=f"DDIM steps (default {DEFAULT_DDIM_STEPS}); DDPM always runs all T")
    p.add_argument("--max_pairs", type=int, default=None, help="evaluate an evenly spread subset (DDPM-1000 is slow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("rollout", help="feed predictions back for N steps; write truth | prediction | difference as GIF/MP4")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default=None)
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, default=None, help=f"DDIM steps (default {DEFAULT_DDIM_STEPS}); DDPM always runs all T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="rollout.gif")
    p.set_defaults(func=cmd_rollout)
    return ap


def main(argv: list[str] | None = None) -> int:
    from kitchen_lib.checkpoint import CheckpointError
    from kitchen_lib.pairs import CacheError
    from kitchen_lib.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DatasetError, CacheError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
