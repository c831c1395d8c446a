"""The main job in one call: our offline dataset (if missing), its frame pairs, the course's two
models (the frame-only `cpu` preset and the `cpu-world` world model), a labelled sample grid for
each, a rollout GIF of the world model, and a summary of how far both beat copying the current
frame on the test pairs. Steps already done are reused, so a second call takes seconds."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.images import label_columns, save_png
from kitchen_lib.base.paths import atomic_path
from kitchen_lib.data.cache import PairsCache
from kitchen_lib.data.cache_builder import build_pairs
from kitchen_lib.data.datasets import dataset_parts, joined
from kitchen_lib.data.generate import ensure_dataset
from kitchen_lib.inference.baselines import copy_baseline
from kitchen_lib.inference.evaluate import evaluate
from kitchen_lib.inference.predictor import Predictor, load_predictor, prediction_grid
from kitchen_lib.inference.rollout import max_horizon, rollout_episode, save_animation
from kitchen_lib.training.checkpoint import config_differences, load_checkpoint
from kitchen_lib.training.config import RunConfig, preset, with_overrides
from kitchen_lib.training.runs import resume_candidates, saved_checkpoints
from kitchen_lib.training.trainer import train

# What quickstart trains: the course's frame-only model, then its world model (smoke: their tiny twins).
PRESETS = ("cpu", "cpu-world")
SMOKE_PRESETS = ("smoke", "smoke-world")
# Presets whose datasets quickstart makes but which it does not train: notebook 09's (seconds of data).
DATA_ONLY, SMOKE_DATA_ONLY = ("cpu-drive",), ("smoke-drive",)
ROLLOUT_STEPS = 20  # jumps of k env steps in the GIF: 100 env steps, 8 seconds of the robot's time


def format_pairs_summary(s: dict) -> str:
    """One line on a pairs cache: dataset, k, size, pairs per split, where it is, how long it took."""
    p = s["pairs"]
    return (f"{s['dataset']}: k={s['k']}, {s['size']}px x{s['channels']}, pairs train/val/test "
            f"{p['train']}/{p['val']}/{p['test']}, cache {s['cache']} ({s['seconds']}s)")


def quickstart(smoke: bool = False, log: Callable[[str], None] = print) -> dict:
    """Dataset, pairs, both presets trained (a preset whose run folder holds a run reuses it),
    then grids, a rollout GIF and `<data>/samples/summary.md` (and `.json`). Returns the summary."""
    started = time.time()
    stages: dict[str, float] = {}  # seconds each step took (a reused step takes about none)

    def done(stage: str, since: float) -> float:
        stages[stage] = round(time.time() - since, 1)
        return time.time()

    cfgs = [preset(name) for name in (SMOKE_PRESETS if smoke else PRESETS)]
    first = cfgs[0]
    if any(c.data != first.data for c in cfgs):
        raise RuntimeError("quickstart's presets must share one pairs cache")  # a bug in PRESETS, not the user's
    extra = [preset(name) for name in (SMOKE_DATA_ONLY if smoke else DATA_ONLY)]
    parts = list(dict.fromkeys(p for c in cfgs + extra for p in dataset_parts(c.data.dataset)))
    log(f"== 1/5 datasets {', '.join(parts)}")
    ensure_dataset(joined(*parts), first.generate, log=log)  # each made with its own policy if missing
    t0 = done("dataset", started)
    log(f"== 2/5 frame pairs (k={first.data.k}, {first.data.size}px)")
    cache = build_pairs(first.data, root=first.root() / "pairs", progress=True)
    log(format_pairs_summary(cache.summary() | {"seconds": round(time.time() - t0, 2)}))
    copy = copy_baseline(cache, "test")
    log(f"copy-the-current-frame baseline on the test episodes: PSNR {copy['psnr']:.2f} dB, "
        f"{copy['changed_fraction']:.1%} of pixels change by > 0.05")
    t0 = done("pairs", t0)
    log("== 3/5 train " + " and ".join(c.preset for c in cfgs))
    runs = {}
    for c in cfgs:
        runs[c.preset] = _trained(c, log)
        t0 = done(f"train {c.preset}", t0)
    log("== 4/5 score each model on the test pairs (one sample of its default sampler, against copying the frame)")
    out = first.root() / "samples"
    scores = {name: _scores(load_predictor(ckpt), ckpt, cache, out) for name, ckpt in runs.items()}
    t0 = done("score", t0)
    log("== 5/5 sample grids, a rollout, the summary")
    figures = {}
    for name, ckpt in runs.items():
        figures[name] = str(_grid(load_predictor(ckpt), cache, out / f"quickstart_{name}.png"))
        log(f"wrote {figures[name]}")
    world = cfgs[-1].preset
    gif = _rollout_gif(load_predictor(runs[world]), cache, out / f"quickstart_{world}_rollout.gif")
    if gif is None:
        log("no rollout GIF: no test episode is longer than one jump of k steps")
    else:
        figures["rollout"] = str(gif)
        log(f"wrote {gif}")
    done("figures", t0)
    summary = {"pairs": _pair_set(cache), "copy": {"psnr": scores[cfgs[0].preset]["copy"]["psnr"],
                                                     "psnr_moving": scores[cfgs[0].preset]["copy"]["psnr_moving"]},
               "models": {name: scores[name] | {"checkpoint": str(ckpt)} for name, ckpt in runs.items()},
               "figures": figures, "stages": stages, "seconds": round(time.time() - started, 1)}
    text = format_summary(summary)
    log(text)
    _write_text(out / "summary.md", text)
    _write_text(out / "summary.json", json.dumps(summary, indent=1))
    log(f"wrote {out / 'summary.md'} and summary.json; next, the course: jupyter lab notebooks/")
    return summary


def _trained(cfg: RunConfig, log: Callable[[str], None]) -> Path:
    """The preset's run: trained now, or the one already in its folder. Returns its last weights."""
    ckpt = cfg.checkpoint_dir()
    if saved_checkpoints(ckpt):
        state = load_checkpoint(resume_candidates(ckpt)[0])
        same_recipe(cfg, resume_candidates(ckpt)[0], state["config"])
        left = unfinished_minutes(cfg, state)
        if left:  # stopped early (Ctrl-C, a kill): trained for the rest of its budget, not shown half-trained
            log(f"{cfg.preset}: its run stopped {left:.1f} minutes short of its {cfg.train.max_minutes:g}-minute "
                "budget: resuming it for the rest")
            r = train(with_overrides(cfg, train={"max_minutes": left}), resume="latest")
            log(f"{cfg.preset}: now {r.optimizer_steps} optimizer steps")
        else:
            log(f"{cfg.preset}: a run is already there, using it ({ckpt}; train it further with `python -m "
                f"kitchen_lib train --preset {cfg.preset} --resume_from_checkpoint latest --max_minutes 20`, or move "
                "the folder aside to start over)")
    else:
        r = train(cfg)
        log(f"{cfg.preset}: {r.optimizer_steps} optimizer steps in {r.seconds / 60:.1f} min, validation loss "
            f"{r.final_val_loss:.5f}; TensorBoard: tensorboard --logdir {r.tensorboard_dir.parent}")
    return resume_candidates(ckpt)[0]  # latest.pt: a run stopped by its budget trains on after best.pt


def unfinished_minutes(cfg: RunConfig, state: dict) -> float:
    """Minutes of the preset's time budget a saved run has yet to train (0: done, or a run that
    records no training time, or one that finished its epochs)."""
    budget, trained = cfg.train.max_minutes, state.get("train_seconds")
    if not budget or trained is None or state["epoch"] >= cfg.train.epochs:
        return 0.0
    left = budget - trained / 60
    return left if left > 0.5 else 0.0  # the last half minute is a checkpoint's and validation's, not a stop


def same_recipe(cfg: RunConfig, path: Path, saved: dict) -> None:
    """Raise UserError unless the run saved at `path` (its config `saved`) is of the preset as
    defined today: an older recipe's model would be scored and shown as today's. (How many processes trained it,
    and its budget, do not matter.)"""
    try:
        was = RunConfig.from_dict(saved).to_dict()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: its config cannot be read ({e}); move {path.parent} aside and run quickstart again") from e
    now = cfg.to_dict()
    fields = [d for part in ("data", "model", "diffusion", "conditioning")
              for d in config_differences(was[part], now[part], f"{part}.")]
    if fields:
        raise UserError(f"{path.parent} holds a {cfg.preset} run of another recipe than today's preset ("
                        + "; ".join(fields) + f"). It is left alone: move it aside "
                        f"(mv {shlex.quote(str(path.parent))} {shlex.quote(str(path.parent) + '-old')}) and train the "
                        f"current one (`python -m kitchen_lib quickstart`, or `train --preset {cfg.preset}`).")


def _pair_set(cache: PairsCache) -> str:
    n = len(cache.meta["splits"]["test"])
    return (f"all {len(cache.pairs('test')):,} test pairs ({n} held-out episode{'s' if n != 1 else ''} of "
            f"{cache.meta['config']['dataset']})")


def _scores(predictor: Predictor, ckpt: Path, cache: PairsCache, out: Path) -> dict:
    """The model's and copy's PSNR on every test pair, kept beside the grids and reused while the
    checkpoint is the same file (a second quickstart takes seconds)."""
    stat = ckpt.stat()
    key = {"checkpoint": str(ckpt.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "pairs": int(len(cache.pairs("test")))}
    saved = out / f"quickstart_{predictor.config.preset}_scores.json"
    if saved.is_file():
        try:
            old = json.loads(saved.read_text())
            if old.get("key") == key:
                return old["scores"]
        except (OSError, ValueError):
            pass  # unreadable: score again and replace it
    r = evaluate(predictor, cache, "test", mean_of=1, x0=False, progress=True)
    m = r["methods"]
    model, copy = m["diffusion"], m["copy"]
    scores = {"sampler": predictor.sampler.label(predictor.model.diffusion.T), "steps": _steps(ckpt),
              "psnr": model["psnr"], "psnr_moving": model["psnr_moving"],
              "over_copy": model["psnr"] - copy["psnr"], "over_copy_moving": model["psnr_moving"] - copy["psnr_moving"],
              "seconds_per_frame": model["seconds_per_frame"],
              "copy": {"psnr": copy["psnr"], "psnr_moving": copy["psnr_moving"]}}
    if "diffusion_shuffled_actions" in m:  # a world model: what its actions are worth
        scores["shuffled_actions_cost_moving"] = model["psnr_moving"] - m["diffusion_shuffled_actions"]["psnr_moving"]
    _write_text(saved, json.dumps({"key": key, "scores": scores}, indent=1))
    return scores


def _steps(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("step", -1))


def _grid(predictor: Predictor, cache: PairsCache, path: Path) -> Path:
    grid = prediction_grid(predictor, cache, "test", n=6)
    sampler = predictor.sampler.label(predictor.model.diffusion.T)
    k = predictor.k
    labelled = label_columns(grid, ["now (t)", f"predicted t+{k}", f"actual t+{k}"], scale=_scale(predictor),
                             title=f"{predictor.config.preset}: {sampler}, test episodes")
    return save_png(labelled, path)


def _scale(predictor: Predictor) -> int:
    """Enlargement that leaves room for the column labels (64 px columns at 64x64 and above)."""
    return max(2, 128 // predictor.config.data.size)


def _rollout_gif(predictor: Predictor, cache: PairsCache, path: Path) -> Path | None:
    """The world model dreaming up to ROLLOUT_STEPS jumps of the longest test episode from its
    recorded actions: truth | dream | difference. None if no test episode has room for one jump."""
    lengths = {int(ep): len(cache.episode_frames(int(ep))) for ep in cache.meta["splits"]["test"]}
    episode = max(lengths, key=lengths.get)
    horizon = min(ROLLOUT_STEPS, max_horizon(lengths[episode], 0, predictor.k))
    if horizon < 1:
        return None
    r = rollout_episode(predictor, cache, episode, 0, horizon)
    strip = r.side_by_side()
    labelled = np.stack([label_columns(f, ["simulator", "dream", "difference x3"], scale=_scale(predictor), pad=2,
                                       title=f"env step {s}: {p:.1f} dB") for f, s, p in zip(strip, r.env_steps, r.psnr,
                                                                                               strict=True)])
    return save_animation(labelled, path, fps=3, scale=1)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def format_summary(s: dict) -> str:
    """The summary as markdown: one row per model, against copying the current frame."""
    lines = ["# quickstart: what the two models learnt\n", f"Scored on {s['pairs']}: one sample of each model's "
             f"default sampler, PSNR on the whole frame and on the pixels that move.\n",
             "| model | steps | sampler | PSNR (dB) | over copy | moving PSNR | over copy, moving |",
             "|---|---|---|---|---|---|---|"]
    for name, m in s["models"].items():
        lines.append(f"| `{name}` | {m['steps']:,} | {m['sampler']} | {m['psnr']:.2f} | {m['over_copy']:+.2f} | "
                     f"{m['psnr_moving']:.2f} | {m['over_copy_moving']:+.2f} |")
    lines.append(f"| copy the current frame | | | {s['copy']['psnr']:.2f} | | {s['copy']['psnr_moving']:.2f} | |")
    for name, m in s["models"].items():
        if "shuffled_actions_cost_moving" in m:
            lines.append(f"\n`{name}` with another pair's actions: {m['shuffled_actions_cost_moving']:.2f} dB lower on the "
                         "moving pixels (it follows the actions).")
    world = list(s["models"])[-1]
    checkpoint = shlex.quote(s["models"][world]["checkpoint"])
    lines += ["", "Figures: " + ", ".join(s["figures"].values()), "", "Further:",
              "- the course: `jupyter lab notebooks/` (05 to 08 use these models)",
              f"- train on: `python -m kitchen_lib train --preset {world} --resume_from_checkpoint latest --max_minutes 20`",
              f"- score in full: `python -m kitchen_lib evaluate --checkpoint {checkpoint} --mean_of 4`",
              f"- dreams from any step, on any episode's actions: `python -m kitchen_lib rollout --checkpoint {checkpoint}"
              " --episode E --start S --horizon H --actions_of F --out dream.gif`",
              f"\nThis quickstart took {s['seconds'] / 60:.1f} min in all ("
              + ", ".join(f"{k} {v / 60:.1f}" for k, v in s["stages"].items()) + " min)."]
    return "\n".join(lines) + "\n"
