import os

import numpy as np
import pytest

from kitchen_lib.data.datasets import (
    DatasetError,
    dataset_path,
    episode_lengths,
    iter_episodes,
    open_dataset,
    store_path,
)
from kitchen_lib.data.generate import generate_dataset


def _listing(root):
    return sorted(str(p) for p in root.rglob("*")) if root.exists() else []


def test_generated_dataset_has_d4rl_layout(small_dataset):
    ds = open_dataset(small_dataset)
    ep = next(iter(ds.iterate_episodes([0])))
    assert set(ep.observations) == {"observation", "achieved_goal", "desired_goal"}
    assert ep.observations["observation"].shape == (61, 59)
    assert ep.actions.shape == (60, 9)
    assert set(ep.observations["achieved_goal"]) == {"microwave", "kettle", "light switch", "slide cabinet"}
    assert episode_lengths(small_dataset) == [60, 60, 60]


def test_d4rl_id_reads_a_dataset_laid_out_like_d4rl(small_dataset):
    """A dataset stored under D4RL's id, in D4RL's layout, is read by the same code."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from kitchen_lib.data.kitchen import make_env

    d4rl_id = "D4RL/kitchen/complete-v2"
    src = list(iter_episodes(small_dataset))
    ds = open_dataset(small_dataset)
    buffers = []
    for i, e in enumerate(ds.iterate_episodes()):
        buffers.append(EpisodeBuffer(id=i, observations=e.observations, actions=e.actions,
                                     rewards=list(e.rewards), terminations=list(e.terminations),
                                     truncations=list(e.truncations)))
    env = make_env()
    minari.create_dataset_from_buffers(d4rl_id, buffers, env=env, data_format="hdf5", algorithm_name="test")
    try:
        read = list(iter_episodes(d4rl_id))
        assert len(read) == len(src)
        assert np.allclose(read[1].observations, src[1].observations)
        assert np.allclose(read[2].actions, src[2].actions)
    finally:
        import shutil

        shutil.rmtree(dataset_path(d4rl_id))


def test_d4rl_offline_without_download_says_how(tmp_path):
    before = _listing(store_path())
    with pytest.raises(DatasetError) as e:
        open_dataset("D4RL/kitchen/mixed-v2")
    msg = str(e.value)
    assert "minari download D4RL/kitchen/mixed-v2" in msg and "--download" in msg
    assert "kitchen-diffusion/scripted-complete-v0" in msg
    assert _listing(store_path()) == before


def test_unknown_dataset_id_is_refused_and_changes_nothing():
    before = _listing(store_path())
    with pytest.raises(DatasetError, match="unknown dataset id"):
        open_dataset("someone/else-v9")
    with pytest.raises(DatasetError, match="not been generated"):
        open_dataset("kitchen-diffusion/never-made-v0")
    assert _listing(store_path()) == before


def test_generate_refuses_to_overwrite_and_to_use_d4rl_ids(small_dataset):
    data = dataset_path(small_dataset) / "data" / "main_data.hdf5"
    stamp = os.stat(data).st_mtime_ns
    with pytest.raises(DatasetError, match="already exists"):
        generate_dataset(small_dataset, episodes=1, progress=False)
    with pytest.raises(DatasetError, match="reserved"):
        generate_dataset("D4RL/kitchen/complete-v2", episodes=1, max_steps=5, progress=False)
    assert os.stat(data).st_mtime_ns == stamp
    assert not dataset_path("D4RL/kitchen/complete-v2").exists()
