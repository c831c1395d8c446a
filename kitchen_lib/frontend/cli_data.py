"""The command line's data commands: `generate` (a dataset), `render` (one frame), `pairs` (the
pairs cache). kitchen_lib.frontend.cli builds the parser and runs them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.paths import check_destination
from kitchen_lib.data.datasets import DatasetError, open_dataset, open_datasets
from kitchen_lib.data.generate import generate_part
from kitchen_lib.frontend import flags


def cmd_generate(a: argparse.Namespace) -> None:
    from kitchen_lib.data.datasets import EXPLORE_VERSIONS, dataset_parts, is_local
    from kitchen_lib.data.policies import default_dataset, policy_for

    cfg = flags.config_from_args(a)
    g = cfg.generate
    typed = flags.given(a, "generate").get("policy")
    if a.random_actions:  # the older name of --policy random
        if typed not in (None, "random"):
            raise UserError(f"--random_actions means --policy random, not {typed}: give one of them")
        typed = "random"
    # No --dataset: the preset's, or where the policy asked for writes (exploration: its own dataset).
    dataset = cfg.data.dataset if "data.dataset" in vars(a) or typed is None else default_dataset(typed, cfg.data.dataset)
    # --episodes / --max_steps typed on the command line mean an exploration dataset's size too
    # (the presets keep the two apart: GenerateConfig.explore_episodes).
    typed_size = flags.given(a, "generate")
    g = replace(g, explore_episodes=typed_size.get("episodes", g.explore_episodes),
                explore_max_steps=typed_size.get("max_steps", g.explore_max_steps))
    parts = dataset_parts(dataset)
    for part in parts:
        if len(parts) > 1 and is_local(part) and not a.overwrite:
            print(f"{part}: already in the Minari store")
            continue
        policy = typed or policy_for(part, g.policy)
        if part in EXPLORE_VERSIONS and typed_size.keys() & {"episodes", "max_steps", "explore_episodes", "explore_max_steps"} \
                and (g.explore_episodes, g.explore_max_steps) != EXPLORE_VERSIONS[part]:
            n, steps = EXPLORE_VERSIONS[part]
            raise UserError(f"{part} is exploration's {n} episodes of {steps} steps, as its id says; for another size "
                            "give them an id of their own (--dataset kitchen-diffusion/my-explore-v0)")
        report = generate_part(part, g, policy=policy, overwrite=a.overwrite)
        print(f"wrote {report.dataset_id}: {report.episodes} episodes, {report.steps} steps in {report.seconds:.0f}s")
        if policy == "expert":
            print("tasks completed (share of episodes): " + ", ".join(f"{t} {r:.0%}" for t, r in report.success_rates().items()))


def cmd_render(a: argparse.Namespace) -> None:
    from kitchen_lib.base.images import save_png
    from kitchen_lib.data.datasets import load_episode
    from kitchen_lib.data.render import KitchenRenderer

    open_dataset(a.dataset, download=a.download)
    ep = load_episode(a.dataset, a.episode)
    if not 0 <= a.step < len(ep.observations):
        raise DatasetError(f"episode {a.episode} of {a.dataset} has steps 0..{len(ep.observations) - 1}; asked for {a.step}")
    with KitchenRenderer(a.size, a.quality) as r:
        frame = r.render(ep.observations[a.step])
    out = save_png(frame, a.out)
    print(f"wrote {out} ({a.size}x{a.size}, {a.quality})")


def config_with_dataset(a: argparse.Namespace, train: bool = False):
    """The run config the flags ask for; its dataset must be in the store (or downloadable), and
    every folder the command writes must be writable: all checked before any work."""
    cfg = flags.config_from_args(a, data_only=not train)
    for folder, flag in flags.destinations(cfg, a.dataset_dir is not None, train):
        check_destination(folder, flag)
    open_datasets(cfg.data.dataset, download=a.download)
    return cfg


def cmd_pairs(a: argparse.Namespace) -> None:
    from kitchen_lib.data.cache_builder import build_pairs
    from kitchen_lib.frontend.quickstart import format_pairs_summary

    cfg = config_with_dataset(a)
    t0 = time.time()
    cache = build_pairs(cfg.data, root=cfg.root() / "pairs", force=a.force_rebuild, progress=not a.json)
    if a.verify:  # a damaged file raises CacheError, naming it: exit 2
        from kitchen_lib.data.cache import verify_cache

        for note in verify_cache(cache):
            print(f"note: {note}", file=sys.stderr)
        print(f"verified {cache.path}: every array whole and as built", file=sys.stderr)
    summary = cache.summary() | {"seconds": round(time.time() - t0, 3)}
    print(json.dumps(summary, indent=2) if a.json else format_pairs_summary(summary))
