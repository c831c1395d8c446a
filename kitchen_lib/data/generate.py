"""Making our own offline dataset: the scripted expert's episodes, stored as a Minari dataset.

Written in a temporary store beside the real one and moved into place whole, so the
datasets it makes are read by `kitchen_lib.data.datasets` exactly like D4RL's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kitchen_lib.base.locks import clean_stale, hold_temp, let_go, owner_tag
from kitchen_lib.base.paths import check_destination
from kitchen_lib.data.datasets import (
    D4RL_DATASET_IDS,
    OFFLINE_DATASET_ID,
    OUR_NAMESPACE,
    DatasetError,
    check_dataset_id,
    dataset_path,
    is_local,
    open_dataset,
    store_path,
)
from kitchen_lib.data.kitchen import COMPLETE_TASKS


@dataclass(frozen=True)
class GenerateConfig:
    """How much our scripted expert records: episodes, the step limit of each, the seed."""

    episodes: int = 20
    max_steps: int = 900  # long enough for all four tasks
    seed: int = 0


def _create_in(store: Path, dataset_id: str, buffers: list, env, description: str) -> None:
    """Write the dataset with Minari into the Minari store `store` (not the user's)."""
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(store)
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            algorithm_name="kitchen_lib scripted expert (DLS IK waypoints)",
            author="Kitchen Diffusion",
            code_permalink="kitchen_lib/data/expert.py",
            description=description,
            data_format="hdf5",
        )
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _write_dataset(dataset_id: str, records, env, description: str, overwrite: bool = False):
    """Write expert episodes as a Minari dataset, atomically.

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
        _create_in(tmp_root, dataset_id, buffers, env, description)
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
) -> GenerateReport:
    """Run the scripted expert (or random actions) and store the episodes as a Minari dataset."""
    import time

    from tqdm.auto import tqdm

    from kitchen_lib.data.expert import random_episode, run_episode
    from kitchen_lib.data.kitchen import make_env

    check_dataset_id(dataset_id, generated=True)
    if episodes < 1:
        raise DatasetError(f"--episodes must be at least 1 (got {episodes})")
    if max_steps < 1:
        raise DatasetError(f"--max_steps must be at least 1 (got {max_steps})")
    if is_local(dataset_id) and not overwrite:
        raise DatasetError(f"{dataset_id} already exists at {dataset_path(dataset_id)}; pass --overwrite to replace it.")
    check_destination(store_path(), "the Minari store (MINARI_DATASETS_PATH)")
    t0 = time.time()
    env = make_env(max_episode_steps=max_steps)
    records = []
    bar = tqdm(range(episodes), desc=f"generate {dataset_id}", disable=not progress)
    for i in bar:
        ep_seed = seed * 100_003 + i
        rec = random_episode(env, ep_seed, max_steps) if random_actions else run_episode(env, ep_seed, max_steps=max_steps)
        records.append(rec)
        bar.write(f"episode {i:3d} (seed {ep_seed}): {len(rec.actions)} steps, completed {rec.completed}") if progress else None
    how = "random actions" if random_actions else "the scripted expert (kitchen_lib.data.expert)"
    _write_dataset(
        dataset_id, records, env, overwrite=overwrite,
        description=f"{episodes} FrankaKitchen-v1 episodes by {how}, seed {seed}.",
    )
    env.close()
    return GenerateReport(
        dataset_id=dataset_id,
        episodes=episodes,
        steps=int(sum(len(r.actions) for r in records)),
        completed=[list(r.completed) for r in records],
        seconds=time.time() - t0,
    )


def ensure_dataset(dataset_id: str, size: GenerateConfig = GenerateConfig(), progress: bool = True) -> str:
    """Generate one of our datasets if it is not in the store yet (for notebooks and the CLI)."""
    if not is_local(dataset_id):
        if dataset_id in D4RL_DATASET_IDS:
            open_dataset(dataset_id)  # raises the how-to-download error
        generate_dataset(dataset_id, episodes=size.episodes, seed=size.seed, max_steps=size.max_steps, progress=progress)
    return dataset_id
