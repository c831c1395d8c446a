"""Command line: `python -m kitchen_lib {quickstart,generate,render,pairs} ...`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kitchen_lib.datasets import (
    D4RL_DATASET_IDS,
    OFFLINE_DATASET_ID,
    SMOKE_DATASET_ID,
    DatasetError,
    generate_dataset,
    is_local,
    open_dataset,
)
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
    from PIL import Image

    from kitchen_lib.datasets import load_episode
    from kitchen_lib.render import KitchenRenderer

    open_dataset(a.dataset, download=a.download)
    ep = load_episode(a.dataset, a.episode)
    if not 0 <= a.step < len(ep.observations):
        raise DatasetError(f"episode {a.episode} of {a.dataset} has steps 0..{len(ep.observations) - 1}; asked for {a.step}")
    with KitchenRenderer(a.size, a.quality) as r:
        frame = r.render(ep.observations[a.step])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    Image.fromarray(frame).save(tmp)
    tmp.replace(out)
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
    """The main job: make the offline dataset if needed, build its pairs, summarise."""
    from kitchen_lib.baselines import copy_baseline
    from kitchen_lib.pairs import build_pairs

    dataset = SMOKE_DATASET_ID if a.smoke else OFFLINE_DATASET_ID
    episodes, max_steps = (SMOKE_EPISODES, SMOKE_MAX_STEPS) if a.smoke else (DEFAULT_EPISODES, DEFAULT_MAX_STEPS)
    if not is_local(dataset):
        cmd_generate(argparse.Namespace(dataset=dataset, episodes=episodes, seed=0, max_steps=max_steps,
                                        overwrite=False, random_actions=False))
    a.dataset, a.max_episodes = dataset, None
    a.size = a.size or (32 if a.smoke else 64)
    t0 = time.time()
    cache = build_pairs(_pairs_config(a), progress=True)
    print(_format_summary(cache.summary() | {"seconds": round(time.time() - t0, 2)}))
    base = copy_baseline(cache, "test")
    print(f"copy-the-current-frame baseline on the test episodes at k={a.k}: "
          f"PSNR {base['psnr']:.2f} dB, {base['changed_fraction']:.1%} of pixels change by > 0.05")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kitchen_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="generate the offline dataset (if missing), build its pairs, summarise")
    p.add_argument("--smoke", action="store_true", help="tiny dataset and frames: a check that everything runs")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--size", type=int, default=None, help="frame size (default 64, or 32 with --smoke)")
    p.add_argument("--grayscale", action="store_true")
    p.add_argument("--quality", choices=QUALITIES, default=DEFAULT_QUALITY)
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
    return ap


def main(argv: list[str] | None = None) -> int:
    from kitchen_lib.pairs import CacheError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DatasetError, CacheError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
