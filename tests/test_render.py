import numpy as np
import pytest

from kitchen_lib.data.kitchen import state_from_observation
from kitchen_lib.data.render import KitchenRenderer, render_frames
from kitchen_lib.inference.metrics import psnr


@pytest.fixture(scope="module")
def stepped_env(env):
    obs, _ = env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(15):
        obs, *_ = env.step(rng.uniform(-1, 1, 9))
    return env, obs["observation"].copy()


def test_state_restore_matches_the_env_state(stepped_env):
    env, obs = stepped_env
    data = env.unwrapped.data
    with KitchenRenderer(64, "fast") as r:
        from_obs = r.render(obs)
        # Same renderer, state copied from the live simulation instead of the observation.
        r.data.qpos[:], r.data.qvel[:] = data.qpos, data.qvel
        import mujoco

        mujoco.mj_forward(r.model, r.data)
        r._renderer.update_scene(r.data, camera=r.camera)
        r._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        from_sim = r._renderer.render()
    # Only the observation noise (about 1e-3 rad on robot joints) separates the two.
    assert psnr(from_sim, from_obs) > 35


def test_faithful_render_looks_like_env_render(stepped_env):
    env, obs = stepped_env
    reference = env.render()
    with KitchenRenderer(128, "faithful") as r:
        ours = r.render(obs)
    with KitchenRenderer(128, "fast") as r:
        fast = r.render(obs)
    assert ours.shape == reference.shape == (128, 128, 3)
    assert psnr(reference, ours) >= 30
    # The shadowless look is recognisably the same scene but not the same image.
    assert 12 < psnr(reference, fast) < psnr(reference, ours)


def test_parallel_rendering_equals_single_process(stepped_env):
    _, obs = stepped_env
    observations = np.stack([obs, obs * 0 + obs, obs])
    observations[1, 0] += 0.3  # move the first arm joint: a different frame
    one = render_frames(observations, 32, workers=1)
    two = render_frames(observations, 32, workers=2, chunk=1)
    assert np.array_equal(one, two)
    assert not np.array_equal(one[0], one[1])


@pytest.mark.parametrize("size", [4, 2000])
def test_unsupported_size_is_refused(size):
    with pytest.raises(ValueError, match="unsupported frame size"):
        KitchenRenderer(size)


def test_quaternion_is_renormalised():
    obs = np.zeros(59)
    obs[18 + 26 - 9 : 18 + 30 - 9] = [2.0, 0, 0, 0]
    qpos, qvel = state_from_observation(obs)
    assert np.allclose(qpos[26:30], [1, 0, 0, 0]) and qvel.shape == (29,)
    with pytest.raises(ValueError, match="59-dim"):
        state_from_observation(np.zeros(58))
