"""Command line: `python -m kitchen_lib {quickstart,generate,render,pairs,train,sample,evaluate,rollout} ...`.

The flags of `train` (and of `pairs` and `generate`) are generated from the config dataclasses
(kitchen_lib.frontend.flags): run `python -m kitchen_lib train --help` for all of them. The data
commands (generate, render, pairs) are in kitchen_lib.frontend.cli_data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.datasets import D4RL_DATASET_IDS, EXPLORE_DATASET_ID, OFFLINE_DATASET_ID, open_datasets
from kitchen_lib.data.render import DEFAULT_QUALITY, QUALITIES
from kitchen_lib.frontend import flags
from kitchen_lib.frontend.cli_data import cmd_generate, cmd_pairs, cmd_render, config_with_dataset
from kitchen_lib.training.config import PRESETS


def cmd_quickstart(a: argparse.Namespace) -> None:
    from kitchen_lib.frontend.quickstart import quickstart

    quickstart(smoke=a.smoke)


def cmd_train(a: argparse.Namespace) -> None:
    """Train; under torchrun every rank runs this (README: Scaling up) and rank 0 reports."""
    from kitchen_lib.training.distributed import world_from_env
    from kitchen_lib.training.trainer import train

    resume = None if a.resume_from_checkpoint in (None, "none") else a.resume_from_checkpoint
    if resume and a.overwrite:
        raise UserError("--overwrite starts the run over and --resume_from_checkpoint continues it: choose one")
    cfg = config_with_dataset(a, train=True)
    r = train(cfg, resume=resume, force_rebuild=a.force_rebuild, overwrite=a.overwrite)
    if not world_from_env().is_main:  # rank 0 reports for all
        return
    print(f"{'stopped early' if r.stopped_early else 'done'}: {r.epochs_done} epochs, {r.optimizer_steps} optimizer steps "
          f"in {r.seconds / 60:.1f} min ({r.samples_per_second:.1f} samples/s, {r.parameters:,} parameters); "
          f"validation loss final {r.final_val_loss:.5f}, best {r.best_val_loss:.5f}")
    print(f"checkpoints: {r.checkpoint_dir}   TensorBoard: tensorboard --logdir {r.tensorboard_dir.parent}")


def _load(a: argparse.Namespace, predictor=None):
    """The checkpoint's predictor, the sampler asked for (its own by default) and its pairs."""
    from kitchen_lib.inference.predictor import load_predictor, pairs_for

    flags.sampler_from_args(a)  # argument errors before any loading
    predictor = predictor or load_predictor(a.checkpoint, device=a.device or "auto")
    sampler = flags.sampler_from_args(a, predictor.sampler)
    predictor.model.check_sampler(sampler)  # e.g. guidance on a model trained without action dropout: before any work
    if a.dataset:
        open_datasets(a.dataset)
    return predictor, sampler, pairs_for(predictor, a.dataset)


def cmd_sample(a: argparse.Namespace) -> None:
    from kitchen_lib.base.images import save_png
    from kitchen_lib.inference.predictor import prediction_grid

    predictor, sampler, cache = _load(a)
    t0 = time.time()
    grid = prediction_grid(predictor, cache, a.split, a.n, sampler, a.seed, progress=True)
    out = save_png(grid, a.out, scale=a.scale)
    print(f"wrote {out}: {a.n} rows of current | predicted ({sampler.label(predictor.model.diffusion.T)}) | actual, "
          f"{(time.time() - t0) / a.n:.2f}s per predicted frame")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from kitchen_lib.base.paths import atomic_path
    from kitchen_lib.inference.evaluate import evaluate, format_table, load_with_regression

    flags.sampler_from_args(a)  # argument errors before any loading
    predictor, regression = load_with_regression(a.checkpoint, a.regression, device=a.device or "auto")
    predictor, sampler, cache = _load(a, predictor)
    result = evaluate(predictor, cache, a.split, sampler, regression, a.max_pairs, a.seed, mean_of=a.mean_of, part=a.part)
    print(format_table(result))
    if regression is None:
        print("(no regression baseline: train one with --objective regression, or pass --regression PATH)")
    if a.json:
        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {a.json}")


def cmd_rollout(a: argparse.Namespace) -> None:
    from kitchen_lib.base.paths import atomic_path
    from kitchen_lib.inference.rollout import rollout_episode, save_animation

    predictor, sampler, cache = _load(a)
    r = rollout_episode(predictor, cache, a.episode, a.start, a.horizon, sampler, a.seed, a.actions_of)
    out = save_animation(r.side_by_side(), a.out, fps=a.fps)
    driven = f", driven by episode {a.actions_of}'s actions" if a.actions_of is not None else ""
    print(f"wrote {out}: {a.horizon} steps of k={predictor.k} from step {a.start} of episode {a.episode}{driven} "
          f"(truth | prediction | difference)")
    print("PSNR per step, model:      " + " ".join(f"{p:5.1f}" for p in r.psnr[1:]))
    print("holding the start frame:   " + " ".join(f"{p:5.1f}" for p in r.hold_psnr[1:]))
    if a.json:
        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps({"episode": a.episode, "start": a.start, "k": predictor.k, "actions_of": a.actions_of,
                                       "env_steps": r.env_steps.tolist(), "psnr": r.psnr.tolist(),
                                       "hold_psnr": r.hold_psnr.tolist()}, indent=2))
        print(f"wrote {a.json}")


def _preset_arg(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--preset", choices=list(PRESETS), default=default,
                   help="; ".join(f"{name}: {about}" for name, (about, _) in PRESETS.items()))


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, type=flags.device, help="auto (default), cpu, cuda, cuda:N or mps")
    flags.add_config_flags(p, ["sampler"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kitchen_lib", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="the main job: dataset (if missing), pairs, the cpu and cpu-world models, "
                                          "sample grids, a rollout GIF and a summary")
    p.add_argument("--smoke", action="store_true", help="the smoke presets: a tiny version of everything in seconds")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("generate", help="run the scripted expert and exploration and write local Minari datasets")
    # By default the datasets of cpu-drive, which needs the most: the expert's and exploration's.
    _preset_arg(p, default="cpu-drive")
    p.add_argument("--dataset", dest="data.dataset", default=argparse.SUPPRESS,
                   help=f"the dataset id, or several joined by '+' (each missing one is made with its own policy); "
                        f"default: the preset's (for cpu-drive, the default, {OFFLINE_DATASET_ID} and "
                        f"{EXPLORE_DATASET_ID}), with --policy expert or explore only that one")
    flags.add_config_flags(p, ["generate"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id")
    p.add_argument("--random_actions", action="store_true", help="the same as --policy random (scale tests)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("render", help="render one frame of a dataset to a PNG")
    p.add_argument("--dataset", default=OFFLINE_DATASET_ID,
                   help=f"Minari dataset id: ours ({OFFLINE_DATASET_ID}) or D4RL's ({', '.join(D4RL_DATASET_IDS)})")
    p.add_argument("--download", action="store_true", help="download a D4RL dataset if it is not local (needs internet)")
    p.add_argument("--episode", type=flags.at_least(0), default=0)
    p.add_argument("--step", type=flags.at_least(0), default=0, help="the env step of the frame")
    p.add_argument("--size", type=flags.at_least(1), default=128)
    p.add_argument("--quality", choices=QUALITIES, default=DEFAULT_QUALITY)
    p.add_argument("--out", default="frame.png", type=flags.output(".png"))
    p.set_defaults(func=cmd_render)

    for name, groups, about in (("pairs", ["data"], "build (or load) the cached (current, future) frame pairs"),
                                ("train", ["data", "model", "diffusion", "train", "conditioning", "sampler"], "train a model (flags override the preset)")):
        p = sub.add_parser(name, help=about)
        _preset_arg(p)
        p.add_argument("--download", action="store_true", help="download a D4RL dataset if it is not local")
        p.add_argument("--force_rebuild", "--force_rebuild_dataset", action="store_true",
                       help="rebuild the pairs cache even if it exists")
        p.add_argument("--dataset_dir", default=None, help="folder for pair caches, checkpoints, logs (default data/)")
        flags.add_config_flags(p, groups)
        if name == "pairs":
            p.add_argument("--json", action="store_true", help="print a JSON summary")
            p.add_argument("--verify", action="store_true",
                           help="read every file of the cache against the checksums recorded when it was built "
                                "(frames.npy whole: seconds at D4RL scale); exit 2 naming a damaged one")
        else:
            p.add_argument("--resume_from_checkpoint", default="none", metavar="{latest,best,none,PATH}",
                           help="continue a run: latest (falls back to the newest epoch_*.pt, then best.pt), best, or a file")
            p.add_argument("--overwrite", action="store_true",
                           help="start over in a checkpoint folder that already holds a run (its checkpoints are deleted)")
            flags.add_original_flags(p)
        p.set_defaults(func=cmd_pairs if name == "pairs" else cmd_train)

    p = sub.add_parser("sample", help="predict frames with a trained model: a grid of current | predicted | actual")
    _model_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--n", type=flags.at_least(1), default=8)
    p.add_argument("--scale", type=flags.at_least(1), default=2, help="enlarge the grid this many times")
    p.add_argument("--out", default="grid.png", type=flags.output(".png"))
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="score the model and the baselines on held-out episodes")
    _model_args(p)
    p.add_argument("--regression", default=None, help="regression baseline checkpoint (default: <run>-regression beside it)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--max_pairs", type=flags.at_least(1), default=None, help="evaluate an evenly spread subset (DDPM-1000 is slow)")
    p.add_argument("--mean_of", type=flags.at_least(0), default=4, help="samples averaged for the diffusion_mean method (0 or 1: skip it)")
    p.add_argument("--part", default=None, metavar="ID",
                   help="only the pairs of this one of the joined datasets the pairs come from (e.g. the exploration's)")
    p.add_argument("--json", default=None, metavar="PATH", type=flags.output(".json"), help="also write the results as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("rollout", help="feed predictions back for N steps; write truth | prediction | difference as GIF/MP4")
    _model_args(p)
    p.add_argument("--episode", type=flags.at_least(0), default=0)
    p.add_argument("--start", type=flags.at_least(0), default=0, help="env step to start from")
    p.add_argument("--horizon", type=flags.at_least(1), default=20, help="predictions fed back, k env steps each")
    p.add_argument("--fps", type=flags.positive, default=4.0)
    p.add_argument("--actions_of", type=flags.at_least(0), default=None, help="drive a world model with this episode's actions instead")
    p.add_argument("--json", default=None, metavar="PATH", type=flags.output(".json"), help="also write PSNR per step (model and hold) as JSON")
    p.add_argument("--out", default="rollout.gif", type=flags.output(".gif", ".mp4"))
    p.set_defaults(func=cmd_rollout)
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", help="show the traceback of an error (also KITCHEN_DEBUG=1)")
    return ap


REPORT = "this is a bug in kitchen_lib: please report it with the traceback above"


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user's mistake (a UserError: bad value, missing or damaged file, a folder
    that cannot be written, a busy folder, ...) prints one line and exits 2; anything else is a
    bug in kitchen_lib: its traceback, a line asking to report it, exit 1. --debug (or
    KITCHEN_DEBUG=1) prints the traceback for the first kind too. Training stopped by SIGINT or
    SIGTERM saves latest.pt, prints the command that resumes it and exits 128 + the signal (130, 143)."""
    from kitchen_lib.training.interrupt import TrainingInterrupted

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("KITCHEN_DEBUG", "") not in ("", "0")
    rank = os.environ.get("RANK", "")  # under torchrun each rank says it: name the ones after rank 0
    who = "" if rank in ("", "0") else f"rank {rank}: "
    try:
        args.func(args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"{who}error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # saved where it stopped: exit as the signal would have (130, 143)
        if not who:  # rank 0 says it for all
            print(f"{e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not the user's doing: show where, and ask for a report
        traceback.print_exc()
        print(f"{who}{REPORT}", file=sys.stderr)
        return 1
    return 0
