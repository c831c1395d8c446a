import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kitchen_lib.base.images import to_grayscale
from kitchen_lib.base.paths import data_dir
from kitchen_lib.data.cache import CacheError, load_cache
from kitchen_lib.data.cache_builder import build_pairs, cache_dir_for
from kitchen_lib.data.datasets import iter_episodes
from kitchen_lib.data.examples import ConditioningConfig, ExampleSet, gather
from kitchen_lib.data.pairs import PairsConfig, pair_steps, split_episodes
from kitchen_lib.data.render import KitchenRenderer


def test_pair_steps_never_cross_the_episode_end():
    assert pair_steps(10, 5).tolist() == [0, 1, 2, 3, 4, 5]  # 11 frames: (5, 10) is the last pair
    assert pair_steps(5, 5).tolist() == [0]
    assert pair_steps(3, 5).tolist() == []


def test_split_is_by_episode_and_reproducible():
    a = split_episodes(20, 0.1, 0.1, seed=0)
    assert a == split_episodes(20, 0.1, 0.1, seed=0)
    assert a != split_episodes(20, 0.1, 0.1, seed=1)
    together = a["train"] + a["val"] + a["test"]
    assert sorted(together) == list(range(20))  # every episode in exactly one split
    assert len(a["test"]) == 2 and len(a["val"]) == 2
    with pytest.raises(ValueError, match="at least 3 episodes"):
        split_episodes(2, 0.1, 0.1, 0)


def test_cache_pairs_respect_k_episodes_and_splits(small_pairs, small_dataset):
    cache = small_pairs
    k = cache.meta["config"]["k"]
    lengths = {e["index"]: e["num_frames"] - 1 for e in cache.meta["episodes"]}
    split_of = {e["index"]: e["split"] for e in cache.meta["episodes"]}
    for split in ("train", "val", "test"):
        p = cache.pairs(split)
        assert len(p) > 0
        assert all(split_of[e] == split for e in p[:, 0])
        assert all(t + k <= lengths[e] for e, t in p)
    # Frames really are step t and t+k of that episode: re-render one pair from the states.
    e, t = cache.pairs("val")[7]
    episode = next(iter_episodes(small_dataset, [int(e)]))
    pair = gather(cache, cache.pairs("val")[7:8], ConditioningConfig())
    cur, fut = pair["current"][0], pair["future"][0]
    with KitchenRenderer(32, "fast") as r:
        assert np.array_equal(cur, r.render(episode.observations[t]))
        assert np.array_equal(fut, r.render(episode.observations[t + k]))


def test_torch_dataset_gives_channels_first_floats(small_pairs):
    ds = ExampleSet(small_pairs, small_pairs.pairs("train"), ConditioningConfig())
    one = ds[[0]]
    assert set(one) == {"current", "future"}
    cur, fut = one["current"], one["future"]
    assert cur.shape == fut.shape == (1, 3, 32, 32) and cur.dtype == torch.float32
    assert -1.0 <= float(cur.min()) and float(cur.max()) <= 1.0
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=torch.utils.data.BatchSampler(range(len(ds)), 4, False))
    batch = next(iter(loader))
    assert batch["current"].shape == (4, 3, 32, 32) and torch.equal(batch["current"][:1], cur)


def test_cache_is_reused_and_rebuilt_when_config_changes(small_pairs, small_dataset):
    cfg = PairsConfig(dataset=small_dataset, k=5, size=32)
    stamp = os.stat(small_pairs.path / "frames.npy").st_mtime_ns
    again = build_pairs(cfg, progress=False)
    assert again.path == small_pairs.path
    assert os.stat(again.path / "frames.npy").st_mtime_ns == stamp  # a load: a build writes the file anew
    for changed in (PairsConfig(dataset=small_dataset, k=3, size=32), PairsConfig(dataset=small_dataset, k=5, size=16),
                    PairsConfig(dataset=small_dataset, k=5, size=32, grayscale=True)):
        assert cache_dir_for(changed) != small_pairs.path


def test_grayscale_cache(small_dataset):
    cache = build_pairs(PairsConfig(dataset=small_dataset, k=5, size=16, grayscale=True), progress=False, workers=1)
    assert cache.frames.shape[1:] == (16, 16, 1)
    rgb = build_pairs(PairsConfig(dataset=small_dataset, k=5, size=16), progress=False, workers=1)
    assert np.array_equal(cache.frames[10], to_grayscale(rgb.frames[10]))


def test_k_not_shorter_than_episodes_is_refused(small_dataset):
    before = sorted(data_dir().rglob("*")) if data_dir().exists() else []
    with pytest.raises(ValueError, match="not shorter than any episode"):
        build_pairs(PairsConfig(dataset=small_dataset, k=60, size=32), progress=False)
    with pytest.raises(ValueError, match="unsupported frame size"):
        build_pairs(PairsConfig(dataset=small_dataset, k=5, size=3), progress=False)
    after = sorted(data_dir().rglob("*")) if data_dir().exists() else []
    assert before == after


def _copy_cache(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_or_mismatched_cache_gets_a_clear_error(small_pairs, tmp_path):
    # Truncated frames.npy
    bad = _copy_cache(small_pairs.path, tmp_path / "truncated")
    with open(bad / "frames.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CacheError, match="corrupt frames.npy|frames.npy is"):
        load_cache(bad)
    # Garbage meta.json
    bad = _copy_cache(small_pairs.path, tmp_path / "garbage")
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt meta.json"):
        load_cache(bad)
    # Built for another config
    other = PairsConfig(dataset=small_pairs.meta["config"]["dataset"], k=2, size=32)
    with pytest.raises(CacheError, match="different config") as e:
        load_cache(small_pairs.path, other)
    assert "'k': (5, 2)" in str(e.value) and "Delete" in str(e.value)
    # The real cache is untouched by all of this.
    assert load_cache(small_pairs.path).frames.shape == small_pairs.frames.shape


def test_cache_in_place_is_corrupt_build_says_so_and_keeps_it(small_dataset):
    cfg = PairsConfig(dataset=small_dataset, k=4, size=16)
    cache = build_pairs(cfg, progress=False, workers=1)
    (cache.path / "meta.json").write_text("[]")
    with pytest.raises(CacheError):
        build_pairs(cfg, progress=False)
    assert (cache.path / "meta.json").read_text() == "[]"  # nothing was overwritten
    rebuilt = build_pairs(cfg, progress=False, force=True, workers=1)
    assert rebuilt.frames.shape == cache.frames.shape


def test_cli_pairs_json(small_pairs, small_dataset):
    out = subprocess.run([sys.executable, "-m", "kitchen_lib", "pairs", "--dataset", small_dataset, "--size", "32",
                          "--json"], capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["cache"] == str(small_pairs.path)
    assert summary["pairs"] == {s: len(small_pairs.pairs(s)) for s in ("train", "val", "test")}
    bad = subprocess.run([sys.executable, "-m", "kitchen_lib", "pairs", "--dataset", "nobody/nothing-v0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown dataset id" in bad.stderr


def _damaged(small_pairs, tmp_path, name, damage, checksums=True):
    """A copy of the small cache under tmp_path/pairs with `name` changed by `damage(path)`;
    checksums=False: as a cache built before they were recorded."""
    dst = _copy_cache(small_pairs.path, tmp_path / "pairs" / small_pairs.path.name)
    damage(dst / name)
    if not checksums:
        meta = json.loads((dst / "meta.json").read_text())
        del meta["checksums"]
        (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def _reopen(small_pairs, tmp_path):
    """What train, evaluate and `pairs` do: build_pairs on the (damaged) cache in place."""
    return build_pairs(small_pairs.config, root=tmp_path / "pairs", progress=False)


def _rewrite(fn):
    return lambda path: np.save(path, fn(np.load(path)), allow_pickle=False)


def test_damaged_per_frame_arrays_are_named_with_how_to_rebuild(small_pairs, tmp_path):
    n = len(small_pairs.frames)
    cases = [  # (file, damage, words the message must hold)
        ("actions.npy", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), "not a valid .npy"),
        ("actions.npy", lambda p: np.save(p, np.zeros((n, 3), np.float32)), f"float32({n}, 3), expected float32({n}, 9)"),
        ("proprio.npy", lambda p: np.save(p, np.zeros((n, 9), np.float64)), "float64"),
        ("proprio.npy", _rewrite(lambda a: np.where(np.arange(len(a))[:, None] == 7, np.nan, a)), "checksum"),
    ]
    for i, (name, damage, words) in enumerate(cases):
        _damaged(small_pairs, tmp_path / str(i), name, damage)
        with pytest.raises(CacheError) as e:
            _reopen(small_pairs, tmp_path / str(i))
        msg = str(e.value)
        assert name in msg and words in msg and "--force_rebuild" in msg and "Delete" in msg, msg
        assert "pickle" not in msg and "unsafely" not in msg, msg


def test_nan_or_all_zero_joints_are_refused_even_without_checksums(small_pairs, tmp_path):
    assert small_pairs.array("proprio").any(axis=0).all()  # the real joints: never all 0
    cases = [("proprio.npy", _rewrite(lambda a: np.where(np.arange(len(a))[:, None] == 7, np.nan, a)), "NaN"),
             ("objects.npy", _rewrite(lambda a: a * np.inf), "infinite"),
             ("proprio.npy", _rewrite(np.zeros_like), "exactly 0"),
             ("proprio.npy", _rewrite(lambda a: a * np.array([1] * 8 + [0], a.dtype)), "a joint exactly 0"),
             ("actions.npy", _rewrite(np.zeros_like), "every action exactly 0")]
    for i, (name, damage, words) in enumerate(cases):
        _damaged(small_pairs, tmp_path / str(i), name, damage, checksums=False)
        with pytest.raises(CacheError, match=words) as e:
            _reopen(small_pairs, tmp_path / str(i))
        assert name in str(e.value) and "diverged" not in str(e.value)


def test_pairs_verify_finds_a_flipped_byte_in_frames(small_pairs, tmp_path):
    def flip(path):
        with open(path, "r+b") as f:
            f.seek(-100, os.SEEK_END)
            b = f.read(1)
            f.seek(-100, os.SEEK_END)
            f.write(bytes([b[0] ^ 1]))

    cli = [sys.executable, "-m", "kitchen_lib", "pairs", "--dataset", small_pairs.config.dataset, "--size", "32"]
    _copy_cache(small_pairs.path, tmp_path / "good" / "pairs" / small_pairs.path.name)
    out = subprocess.run(cli + ["--dataset_dir", str(tmp_path / "good"), "--verify"], capture_output=True, text=True)
    assert out.returncode == 0 and "verified" in out.stderr, out.stderr
    _damaged(small_pairs, tmp_path / "bad", "frames.npy", flip)
    _reopen(small_pairs, tmp_path / "bad")  # opening stays cheap: frames.npy is not read whole
    out = subprocess.run(cli + ["--dataset_dir", str(tmp_path / "bad"), "--verify"], capture_output=True, text=True)
    assert out.returncode == 2 and "frames.npy" in out.stderr and "checksum" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # A cache from before checksums: verified as far as it can be, with a note.
    old = _damaged(small_pairs, tmp_path / "old", "frames.npy", lambda p: None, checksums=False)
    out = subprocess.run(cli + ["--dataset_dir", str(tmp_path / "old"), "--verify"], capture_output=True, text=True)
    assert out.returncode == 0 and "no checksum recorded for frames.npy" in out.stderr, out.stderr
    # An array it lacked is added with its checksum.
    (old / "actions.npy").unlink()
    cache = _reopen(small_pairs, tmp_path / "old")
    assert set(cache.meta["checksums"]) == {"actions"}
    assert np.array_equal(cache.array("actions"), small_pairs.array("actions"))


def test_dataset_fingerprint_follows_content_not_timestamps(small_dataset):
    import shutil

    from kitchen_lib.data.datasets import dataset_path, fingerprint

    copy = "kitchen-diffusion/test-fingerprint-v0"
    shutil.copytree(dataset_path(small_dataset), dataset_path(copy))  # new files, new mtimes, same bytes
    try:
        before = fingerprint(copy)
        assert before == fingerprint(small_dataset)
        data = sorted(p for p in (dataset_path(copy) / "data").iterdir() if p.suffix == ".hdf5")[0]
        os.utime(data, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # touch
        assert fingerprint(copy) == before
        with open(data, "r+b") as f:  # one byte of content
            f.seek(-10, os.SEEK_END)
            b = f.read(1)
            f.seek(-10, os.SEEK_END)
            f.write(bytes([b[0] ^ 1]))
        assert fingerprint(copy) != before
    finally:
        shutil.rmtree(dataset_path(copy))


def test_a_cache_named_by_the_old_fingerprint_is_adopted_not_rendered_again(small_pairs, tmp_path):
    """Caches built while the key hashed the dataset files' sizes and mtimes are found and renamed."""
    import shutil

    from kitchen_lib.data.cache_builder import legacy_cache_dir

    root = tmp_path / "pairs"
    cfg = small_pairs.config
    old = legacy_cache_dir(cfg, root)
    assert old.name != cache_dir_for(cfg, root).name  # the key did change
    shutil.copytree(small_pairs.path, old)
    stamp = os.stat(old / "frames.npy").st_mtime_ns
    cache = build_pairs(cfg, root=root, progress=False)
    assert cache.path == cache_dir_for(cfg, root) and not old.exists()
    assert os.stat(cache.path / "frames.npy").st_mtime_ns == stamp  # renamed, not rendered
    assert np.array_equal(cache.frames, small_pairs.frames)
