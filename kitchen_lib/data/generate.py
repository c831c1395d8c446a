"""Making our own offline datasets, stored as Minari datasets: the scripted expert's episodes
(`policy="expert"`), exploration (`"explore"`: the arm driven to random reachable poses, touching
the objects, kitchen_lib.data.explore) or random actions (`"random"`, for scale tests); which
policy's episodes each dataset holds is kitchen_lib.data.policies'.

Written in a temporary store beside the real one and moved into place whole, so the
datasets it makes are read by `kitchen_lib.data.datasets` exactly like D4RL's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kitchen_lib.base.locks import clean_stale, hold_temp, let_go, owner_tag
from kitchen_lib.base.paths import check_destination
from kitchen_lib.data.datasets import (
    D4RL_DATASET_IDS,
    EXPLORE_VERSIONS,
    OFFLINE_DATASET_ID,
    OUR_NAMESPACE,
    DatasetError,
    check_dataset_id,
    dataset_parts,
    dataset_path,
    is_local,
    open_dataset,
    store_path,
)
from kitchen_lib.data.kitchen import COMPLETE_TASKS
from kitchen_lib.data.policies import ALGORITHMS, checked_policy, policy_for


@dataclass(frozen=True)
class GenerateConfig:
    """How much our policies record: episodes and the step limit of each (the expert's and random
    actions', and exploration's of its own), the seed, who acts."""

    episodes: int = 20
    max_steps: int = 900  # long enough for all four tasks
    seed: int = 0
    policy: str = "expert"  # expert (the four tasks), explore (random reachable poses, touching objects) or random
    # Exploration never finishes early, as the expert does after ~690 steps: 160 x 600 steps is 7
    # times the expert's frames. cpu-drive learns exploration's motions from their number: on
    # 4 held-out exploration episodes 10 gave +0.7 dB over copy, 40 +2.5, 80 +2.6 with the expert's
    # share kept; on 12 others, with the decay over 20 minutes, 80 +3.1 and 160 +3.4, and 160 with
    # today's 40 minutes +3.8 (docs/results.md, "160 exploration episodes", "40 minutes"). The
    # versions' sizes are EXPLORE_VERSIONS'.
    explore_episodes: int = 160
    explore_max_steps: int = 600

    def size(self, policy: str) -> tuple[int, int]:
        """(episodes, max_steps) for `policy`'s dataset."""
        if policy == "explore":
            return self.explore_episodes, self.explore_max_steps
        return self.episodes, self.max_steps


def _create_in(store: Path, dataset_id: str, buffers: list, env, description: str, policy: str = "expert") -> None:
    """Write the dataset with Minari into the Minari store `store` (not the user's)."""
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(store)
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            algorithm_name=ALGORITHMS[policy][0],
            author="Kitchen Diffusion",
            code_permalink=ALGORITHMS[policy][1],
            description=description,
            data_format="hdf5",
        )
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _write_dataset(dataset_id: str, records, env, description: str, overwrite: bool = False, policy: str = "expert"):
    """Write episodes as a Minari dataset, atomically.

    The dataset is built in a temporary store beside the real one and moved into place
    only when complete, so a crash never leaves half a dataset, and an existing dataset is
    replaced only with `overwrite=True`.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    target = dataset_path(dataset_id)  # the id was checked where it entered (generate_dataset)
    if target.exists() and not overwrite:
        raise DatasetError(f"{dataset_id} already exists at {target}; pass --overwrite to replace it.")

    buffers = [
        EpisodeBuffer(
            id=i,
            seed=r.seed,
            observations={
                "observation": r.observations,
                "achieved_goal": r.achieved_goal,
                "desired_goal": r.desired_goal,
            },
            actions=r.actions,
            rewards=list(r.rewards),
            terminations=list(r.terminations),
            truncations=list(r.truncations),
        )
        for i, r in enumerate(records)
    ]
    root = store_path()
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)  # what killed runs left behind
    tmp_root = Path(tempfile.mkdtemp(prefix=f".kitchen{owner_tag()}", dir=root))
    held = hold_temp(os.open(tmp_root, os.O_RDONLY))  # the sweeper leaves it alone, in any pid namespace
    try:
        _create_in(tmp_root, dataset_id, buffers, env, description, policy)
        ns_meta = tmp_root / OUR_NAMESPACE / "namespace_metadata.json"
        (root / OUR_NAMESPACE).mkdir(parents=True, exist_ok=True)
        if ns_meta.exists() and not (root / OUR_NAMESPACE / "namespace_metadata.json").exists():
            shutil.copy2(ns_meta, root / OUR_NAMESPACE / "namespace_metadata.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            trash = tmp_root / "replaced"
            target.rename(trash)
        (tmp_root / dataset_id).rename(target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        let_go(held)
    return minari.load_dataset(dataset_id)


@dataclass
class GenerateReport:
    dataset_id: str
    episodes: int
    steps: int
    completed: list[list[str]]  # per episode
    seconds: float

    def success_rates(self, tasks: tuple[str, ...] = COMPLETE_TASKS) -> dict[str, float]:
        n = max(len(self.completed), 1)
        return {t: sum(t in c for c in self.completed) / n for t in tasks}


def generate_dataset(
    dataset_id: str = OFFLINE_DATASET_ID,
    episodes: int = GenerateConfig.episodes,
    seed: int = GenerateConfig.seed,
    max_steps: int = GenerateConfig.max_steps,
    overwrite: bool = False,
    progress: bool = True,
    random_actions: bool = False,
    policy: str | None = None,
) -> GenerateReport:
    """Run a policy (by default the one `dataset_id` holds, policy_for; `random_actions=True` is
    policy="random") and store its episodes as a Minari dataset."""
    import time

    from tqdm.auto import tqdm

    from kitchen_lib.data.expert import random_episode, run_episode
    from kitchen_lib.data.explore import explore_episode
    from kitchen_lib.data.kitchen import make_env

    check_dataset_id(dataset_id, generated=True)
    policy = checked_policy(dataset_id, "random" if random_actions else policy)
    if episodes < 1:
        raise DatasetError(f"--episodes must be at least 1 (got {episodes})")
    if max_steps < 1:
        raise DatasetError(f"--max_steps must be at least 1 (got {max_steps})")
    if is_local(dataset_id) and not overwrite:
        raise DatasetError(f"{dataset_id} already exists at {dataset_path(dataset_id)}; pass --overwrite to replace it.")
    check_destination(store_path(), "the Minari store (MINARI_DATASETS_PATH)")
    episode = {"expert": lambda env, s: run_episode(env, s, max_steps=max_steps),
               "explore": lambda env, s: explore_episode(env, s, max_steps),
               "random": lambda env, s: random_episode(env, s, max_steps)}[policy]
    t0 = time.time()
    env = make_env(max_episode_steps=max_steps)
    records = []
    bar = tqdm(range(episodes), desc=f"generate {dataset_id}", disable=not progress)
    for i in bar:
        ep_seed = seed * 100_003 + i
        rec = episode(env, ep_seed)
        records.append(rec)
        bar.write(f"episode {i:3d} (seed {ep_seed}): {len(rec.actions)} steps, completed {rec.completed}") if progress else None
    _write_dataset(
        dataset_id, records, env, overwrite=overwrite, policy=policy,
        description=f"{episodes} FrankaKitchen-v1 episodes by {ALGORITHMS[policy][2]}, seed {seed}.",
    )
    env.close()
    return GenerateReport(
        dataset_id=dataset_id,
        episodes=episodes,
        steps=int(sum(len(r.actions) for r in records)),
        completed=[list(r.completed) for r in records],
        seconds=time.time() - t0,
    )


def dataset_size(part: str, policy: str, size: GenerateConfig = GenerateConfig()) -> tuple[int, int]:
    """(episodes, max_steps) that `part` is made with: a version of exploration at the size its id
    names (EXPLORE_VERSIONS, whatever `size` says), any other dataset at `policy`'s size in `size`."""
    return EXPLORE_VERSIONS.get(part, size.size(policy))


def generate_part(part: str, size: GenerateConfig = GenerateConfig(), policy: str | None = None,
                  overwrite: bool = False, progress: bool = True) -> GenerateReport:
    """Generate one of our datasets with `policy` (default: the one it holds, policy_for; others
    size.policy) at that policy's size in `size`: the one step every way of making data shares."""
    policy = policy or policy_for(part, size.policy)
    episodes, max_steps = dataset_size(part, policy, size)
    return generate_dataset(part, episodes=episodes, seed=size.seed, max_steps=max_steps, overwrite=overwrite,
                            progress=progress, policy=policy)


def ensure_dataset(dataset_id: str, size: GenerateConfig = GenerateConfig(), progress: bool = True,
                   log: Callable[[str], None] | None = None) -> str:
    """Generate each of our datasets a setting names (one id, or several joined by "+") that is not
    in the store yet, each with its own policy (generate_part), for quickstart, the notebooks and
    the CLI; `log` hears what was reused and what was written. A missing D4RL part raises the
    how-to-download error."""
    parts = dataset_parts(dataset_id)
    for part in parts:
        if is_local(part):
            if log:
                log(f"{part + ': ' if len(parts) > 1 else ''}already in the Minari store")
            continue
        if part in D4RL_DATASET_IDS:
            open_dataset(part)  # raises the how-to-download error
        report = generate_part(part, size, progress=progress)
        if log:
            log(f"wrote {part}: {report.episodes} episodes, {report.steps} steps in {report.seconds:.0f}s")
    return dataset_id
