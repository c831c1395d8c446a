"""Exploration episodes (kitchen_lib.data.explore), `generate --policy explore`, and pairs caches
over several datasets joined by "+"."""

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.cache import CACHE_FORMAT
from kitchen_lib.data.cache_builder import build_pairs, cache_dir_for
from kitchen_lib.data.datasets import (
    EXPLORE_SMOKE_DATASET_ID,
    DatasetError,
    episode_lengths,
    fingerprint,
    is_local,
    iter_episodes,
    joined,
    open_dataset,
)
from kitchen_lib.data.examples import ExampleSet
from kitchen_lib.data.explore import ExploreConfig, explore_episode, hand_positions
from kitchen_lib.data.generate import GenerateConfig, ensure_dataset, generate_dataset
from kitchen_lib.data.pairs import PairsConfig, split_episodes
from kitchen_lib.data.render import KitchenRenderer
from kitchen_lib.training.config import preset, with_overrides
from kitchen_lib.training.run_state import epoch_order
from kitchen_lib.training.trainer import Trainer

EXPLORE_ID = "kitchen-diffusion/test-explore-v0"
SEEDS = (0, 1, 2)
STEPS = 400
# Object joints (qpos index) and how far one must move to count: 2 cm for the kettle, else 0.05 rad or m.
OBJECT_QPOS = {"knobs": [9, 11, 13, 15], "light switch": [17], "slide cabinet": [19], "hinge doors": [20, 21],
               "microwave": [22], "kettle": [23, 24, 25]}


@pytest.fixture(scope="module")
def explored(env):
    """Three seeded exploration episodes of 400 steps, with each target's log."""
    logs = {s: [] for s in SEEDS}
    return {s: explore_episode(env, s, STEPS, log=logs[s]) for s in SEEDS}, logs


@pytest.fixture(scope="module")
def explore_dataset() -> str:
    if not is_local(EXPLORE_ID):
        generate_dataset(EXPLORE_ID, episodes=3, seed=1, max_steps=60, progress=False, policy="explore")
    return EXPLORE_ID


def test_exploration_covers_the_workspace_box(explored, env):
    records, _ = explored
    hands = np.concatenate([hand_positions(env, r.observations) for r in records.values()])
    env.reset(seed=0)
    cfg = ExploreConfig()
    side = np.subtract(cfg.box_hi, cfg.box_lo)
    spread = np.percentile(hands, 95, axis=0) - np.percentile(hands, 5, axis=0)
    # Far targets are uniform in the box: 5th to 95th percentile spans 0.9 of each side if they were
    # all reached. A hand kept near its start, or moved along one line, spans a small part of at
    # least one side; a third of every side is a low bar for the chain of about 40 targets here.
    assert np.all(spread > side / 3), (spread, side)
    # Above the counter (z = 1.6) everywhere, allowing the fingertips a few cm below the box.
    assert hands[:, 2].min() > 1.7


def test_exploration_reaches_most_of_its_targets(explored):
    _, logs = explored
    targets = [e for log in logs.values() for e in log if e["kind"] in ("far", "near")]
    assert len(targets) >= 15
    assert np.mean([e["reached"] for e in targets]) > 0.6


def test_exploration_opens_and_closes_the_gripper_and_moves_objects(explored):
    records, _ = explored
    for r in records.values():
        fingers = r.observations[:, 7:9].mean(axis=1)  # 0 closed, 0.04 m open
        opened = np.flatnonzero(fingers > 0.03)
        assert len(opened), "never opened"
        assert (fingers[opened[0]:] < 0.01).any(), "never closed after opening"
        assert r.observations.shape == (STEPS + 1, 59) and r.actions.shape == (STEPS, 9)
        assert np.all(np.abs(r.actions) <= 1.0) and r.tasks == ()
    moved = {name: [s for s, r in records.items()
                    if any(np.ptp(r.observations[:, 18 + i - 9]) > (0.02 if name == "kettle" else 0.05) for i in idx)]
             for name, idx in OBJECT_QPOS.items()}
    assert any(moved.values()), moved


def test_exploration_episodes_differ_by_seed_and_repeat_for_a_seed(explored, env):
    records, _ = explored
    assert not np.allclose(records[0].actions, records[1].actions)
    assert not np.allclose(records[1].observations[-1], records[2].observations[-1])
    again = explore_episode(env, 1, 50)
    assert np.allclose(again.actions, records[1].actions[:50], atol=1e-6)


def test_generate_policy_explore_through_the_cli_writes_a_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))  # its own store: quickstart's test makes this id too
    out = subprocess.run([sys.executable, "-m", "kitchen_lib", "generate", "--preset", "smoke", "--policy", "explore",
                          "--episodes", "3", "--max_steps", "40"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert EXPLORE_SMOKE_DATASET_ID in out.stdout  # no --dataset: exploration's own (smoke's, for the smoke preset)
    ds = open_dataset(EXPLORE_SMOKE_DATASET_ID)
    assert ds.total_episodes == 3 and "exploration" in ds.storage.metadata["algorithm_name"]
    eps = list(iter_episodes(EXPLORE_SMOKE_DATASET_ID))
    assert [e.observations.shape for e in eps] == [(41, 59)] * 3
    assert not np.allclose(eps[0].actions, eps[1].actions)


def test_generate_with_no_dataset_makes_every_dataset_the_drive_preset_needs_each_at_its_size(tmp_path):
    import os

    from kitchen_lib.data.datasets import SMOKE_DATASET_ID

    store = tmp_path / "minari"
    env = os.environ | {"MINARI_DATASETS_PATH": str(store), "KITCHEN_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "kitchen_lib", "generate", "--preset", "smoke-drive", "--explore_max_steps", "30"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert SMOKE_DATASET_ID in out.stdout and EXPLORE_SMOKE_DATASET_ID in out.stdout
    code = ("import json; from kitchen_lib.data.datasets import iter_episodes as it; print(json.dumps("
            f"[[len(e.actions) for e in it(d)] for d in ({SMOKE_DATASET_ID!r}, {EXPLORE_SMOKE_DATASET_ID!r})]))")
    expert, explore = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                                check=True).stdout)
    assert len(expert) == 3 and max(expert) <= 60  # the expert's size (smoke: 3 of at most 60 steps)...
    assert explore == [30] * 3  # ...and exploration's own, here typed
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)  # both there: nothing made, nothing lost
    assert again.returncode == 0 and again.stdout.count("already in the Minari store") == 2, again.stdout


def test_each_policy_has_its_own_dataset_size():
    g = GenerateConfig(episodes=5, max_steps=50, explore_episodes=2, explore_max_steps=7)
    assert g.size("expert") == g.size("random") == (5, 50) and g.size("explore") == (2, 7)


def test_each_version_of_exploration_is_made_at_the_size_its_id_names(capsys):
    """Each version of exploration grew the one before by its seeds: a run or cache made on an
    earlier one must still read it as exploration by its id alone, and get it back as it was."""
    from kitchen_lib.data.datasets import EXPLORE_DATASET_ID, EXPLORE_VERSIONS, OFFLINE_DATASET_ID
    from kitchen_lib.data.generate import dataset_size
    from kitchen_lib.data.policies import default_dataset, policy_for
    from kitchen_lib.frontend.cli import main

    versions = {"kitchen-diffusion/scripted-explore-v0": 10, "kitchen-diffusion/scripted-explore-v1": 40,
                "kitchen-diffusion/scripted-explore-v2": 80, "kitchen-diffusion/scripted-explore-v3": 160}
    assert EXPLORE_DATASET_ID == "kitchen-diffusion/scripted-explore-v3"
    assert EXPLORE_VERSIONS.keys() == versions.keys()
    assert GenerateConfig().size("explore") == (160, 600)  # generate's default: the newest, as its id names it
    other_size = GenerateConfig(explore_episodes=3, explore_max_steps=7)
    for dataset_id, n in versions.items():
        assert policy_for(dataset_id) == "explore", dataset_id
        assert default_dataset("explore", joined(OFFLINE_DATASET_ID, dataset_id)) == dataset_id
        assert dataset_size(dataset_id, "explore", other_size) == (n, 600), dataset_id  # not 3 x 7
    assert dataset_size("kitchen-diffusion/my-explore-v0", "explore", other_size) == (3, 7)
    # another size typed for a version's id: refused before any work, saying how to get it
    code = main(["generate", "--dataset", "kitchen-diffusion/scripted-explore-v2", "--policy", "explore", "--episodes", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "80 episodes" in err and "an id of their own" in err, err
    assert not is_local("kitchen-diffusion/scripted-explore-v2")


def test_generate_refuses_a_policy_another_dataset_holds(capsys):
    from kitchen_lib.frontend.cli import main

    for argv, message in ((["--dataset", "kitchen-diffusion/scripted-complete-v0", "--policy", "explore"], "expert"),
                          (["--random_actions", "--policy", "explore"], "--random_actions"),
                          (["--policy", "wander"], "invalid choice")):
        try:
            code = main(["generate", "--episodes", "1", "--max_steps", "5", *argv])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        assert code == 2 and message in capsys.readouterr().err, argv
    assert not is_local("kitchen-diffusion/scripted-complete-v0")


def test_configs_saved_before_the_policy_field_load_as_the_expert():
    from kitchen_lib.training.config import RunConfig, preset

    saved = preset("cpu").to_dict()
    del saved["generate"]["policy"]
    assert RunConfig.from_dict(saved).generate == GenerateConfig(episodes=20, max_steps=900, seed=0, policy="expert")


def test_a_single_dataset_keeps_its_cache_key_and_split(small_dataset, small_pairs):
    cfg = PairsConfig(dataset=small_dataset, k=5, size=32)
    # The key as it was computed before datasets could be joined.
    old = {"format": CACHE_FORMAT, "config": asdict(cfg), "dataset_fingerprint": fingerprint(small_dataset),
           "lengths": episode_lengths(small_dataset)}
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert cache_dir_for(cfg).name == f"pairs-{digest}" == small_pairs.path.name
    assert small_pairs.meta["splits"] == split_episodes(3, 0.1, 0.1, 0)
    assert small_pairs.datasets == [small_dataset]
    assert small_pairs.episodes_of(small_dataset) == [0, 1, 2]


def test_a_joined_cache_holds_out_episodes_of_each_dataset(small_dataset, explore_dataset):
    cfg = PairsConfig(dataset=joined(small_dataset, explore_dataset), k=5, size=16)
    cache = build_pairs(cfg, progress=False, workers=1)
    assert cache.path != cache_dir_for(PairsConfig(dataset=small_dataset, k=5, size=16))
    assert cache.datasets == [small_dataset, explore_dataset]
    expert, explore = cache.episodes_of(small_dataset), cache.episodes_of(explore_dataset)
    assert expert == [0, 1, 2] and explore == [3, 4, 5]
    # Each dataset is split on its own, exactly as its own cache would split it.
    own = split_episodes(3, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    for split, episodes in own.items():
        assert sorted(cache.meta["splits"][split]) == sorted(episodes + [3 + e for e in episodes])
    for part, episodes in ((small_dataset, expert), (explore_dataset, explore)):
        for split in ("train", "val", "test"):
            rows = cache.select(split, dataset=part)
            assert len(rows) and set(rows[:, 0]) <= set(episodes)
            assert set(rows[:, 0]) == set(cache.meta["splits"][split]) & set(episodes)
        assert all(cache.dataset_of(e) == part for e in episodes)
    both = cache.select("test")
    assert len(both) == len(cache.select("test", dataset=small_dataset)) + len(cache.select("test", dataset=explore_dataset))
    assert len(cache.select("test", 10, dataset=explore_dataset)) == 10
    with pytest.raises(ValueError, match="not one of this cache's datasets"):
        cache.select("test", dataset="kitchen-diffusion/other-v0")
    # The frames of an exploration episode are its own states, rendered.
    entry = next(e for e in cache.meta["episodes"] if e["index"] == 4)
    assert (entry["dataset"], entry["dataset_index"]) == (explore_dataset, 1)
    obs = next(iter_episodes(explore_dataset, [1])).observations
    with KitchenRenderer(16, cfg.quality) as r:
        assert np.array_equal(cache.episode_frames(4)[30], r.render(obs[30]))
    assert np.allclose(cache.proprio[cache.episode_rows(4)], obs[:, :9])
    # Opened again, it is the same cache.
    assert build_pairs(cfg, progress=False).path == cache.path


def test_joined_ids_are_checked_and_missing_parts_made(small_dataset, monkeypatch):
    with pytest.raises(DatasetError, match="twice"):
        PairsConfig(dataset=joined(small_dataset, small_dataset)).validate()
    with pytest.raises(DatasetError, match="not a Minari dataset id"):
        PairsConfig(dataset=small_dataset + "+../escape-v0").validate()
    with pytest.raises(DatasetError, match="joins several datasets"):
        open_dataset(joined(small_dataset, EXPLORE_ID))
    with pytest.raises(DatasetError, match="minari download D4RL/kitchen/complete-v2"):
        ensure_dataset(joined(small_dataset, "D4RL/kitchen/complete-v2"), progress=False)
    a, b = "kitchen-diffusion/test-join-a-v0", "kitchen-diffusion/test-join-b-v0"
    ensure_dataset(joined(small_dataset, a, b), GenerateConfig(explore_episodes=3, explore_max_steps=8, policy="explore"), progress=False)
    for part in (a, b):
        ds = open_dataset(part)
        assert ds.total_episodes == 3 and "exploration" in ds.storage.metadata["algorithm_name"]
    assert episode_lengths(small_dataset) == [60, 60, 60]  # an existing part is left alone


def test_an_epoch_draws_the_first_datasets_share_each_part_without_repeats_until_it_runs_out():
    first = torch.zeros(100, dtype=torch.bool)
    first[[3, 10, 11, 40, 41, 42, 70, 71, 90, 99]] = True  # 10 of 100 pairs, scattered
    order = epoch_order(100, seed=0, epoch=2, first=first, share=0.35)
    assert order.shape == (100,)
    counts = torch.bincount(order, minlength=100)
    assert counts[first].sum() == 35 and counts[~first].sum() == 65
    assert set(counts[first].tolist()) == {3, 4}  # 35 draws of 10 pairs: each 3 or 4 times
    assert counts[~first].max() == 1  # 65 of the other 90, none twice
    assert torch.equal(order, epoch_order(100, seed=0, epoch=2, first=first, share=0.35))  # a resumed run's
    assert not torch.equal(order, epoch_order(100, seed=0, epoch=3, first=first, share=0.35))
    assert not torch.equal(order[:35].sort().values, order[35:70].sort().values)  # the parts are mixed, not in blocks
    assert torch.equal(epoch_order(100, 0, 2).sort().values, torch.arange(100))  # no share: a permutation
    with pytest.raises(ValueError, match="mask"):
        epoch_order(100, 0, 2, share=0.5)


class _Recorded(ExampleSet):
    """The training set, noting which rows the Trainer asks for."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.asked: list[int] = []

    def __getitem__(self, idx):
        self.asked.extend(np.asarray(idx).reshape(-1).tolist())
        return super().__getitem__(idx)


def test_training_on_joined_datasets_draws_the_first_datasets_share(small_dataset, explore_dataset, tmp_path):
    cfg = with_overrides(preset("smoke-world"), data={"dataset": joined(small_dataset, explore_dataset)},
                         train={"checkpoint_dir": str(tmp_path / "run"), "tensorboard_dir": str(tmp_path / "tb"),
                                "log_images": False, "epochs": 1, "first_dataset_share": 0.8})
    cache = build_pairs(cfg.data, progress=False, workers=1)
    rows = cache.pairs("train")
    train = _Recorded(cache, rows, cfg.conditioning)
    first = np.isin(rows[:, 0], cache.episodes_of(small_dataset))
    assert 0.2 < first.mean() < 0.6  # in proportion to their pairs, the expert's would not get 0.8
    Trainer(cfg, progress=False, train_set=train, val_set=ExampleSet(cache, cache.pairs("val"), cfg.conditioning)).fit()
    asked = np.array(train.asked)
    assert len(asked) >= len(rows) - cfg.train.batch_size
    assert abs(first[asked].mean() - 0.8) <= cfg.train.batch_size / len(asked)
    # A share needs joined datasets.
    single = with_overrides(cfg, data={"dataset": small_dataset}, train={"checkpoint_dir": str(tmp_path / "single")})
    with pytest.raises(UserError, match="is one dataset"):
        Trainer(single, progress=False)
    with pytest.raises(UserError, match="between 0 and 1"):
        with_overrides(cfg, train={"first_dataset_share": 1.0}).validate()


def test_bench_unseen_scores_chosen_held_out_episodes_of_one_part(small_dataset, explore_dataset, bench_module):
    unseen = bench_module("unseen")
    cache = build_pairs(PairsConfig(dataset=joined(small_dataset, explore_dataset), k=5, size=16), progress=False, workers=1)
    local = {e["index"]: e["dataset_index"] for e in cache.meta["episodes"] if e["dataset"] == explore_dataset}
    held = [local[e] for e in cache.meta["splits"]["test"] if e in local]
    trained = [local[e] for e in cache.meta["splits"]["train"] if e in local]
    assert held and trained
    rows = unseen.episode_rows(cache, explore_dataset, held)
    assert np.array_equal(rows, cache.select("test", dataset=explore_dataset))  # numbered within the part
    with pytest.raises(UserError, match="not in the cache's test split"):
        unseen.episode_rows(cache, explore_dataset, trained[:1])
    with pytest.raises(UserError, match="has no episodes"):
        unseen.episode_rows(cache, explore_dataset, [99])
    with pytest.raises(UserError, match="not one of this cache's datasets"):
        unseen.episode_rows(cache, "kitchen-diffusion/no-such-v0", held)
