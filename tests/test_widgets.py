import numpy as np

from kitchen_lib.base.images import png_bytes
from kitchen_lib.frontend.widgets import FramePlayer


def _frames(n=6, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_slider_shows_the_chosen_frame():
    frames = _frames()
    player = FramePlayer(frames, scale=2)
    assert player.image.value == png_bytes(frames[0], 2)
    player.slider.value = 4
    assert player.image.value == png_bytes(frames[4], 2)
    assert player.label.value == "step 4 / 5"


def test_play_and_slider_are_linked_in_the_kernel():
    player = FramePlayer(_frames(), caption=lambda t: f"t={t}")
    player.play.value = 3  # what the Play button does on each tick
    assert player.slider.value == 3 and player.label.value == "t=3"
    player.slider.value = 1
    assert player.play.value == 1


def test_grayscale_frames_are_shown():
    gray = _frames()[..., :1]
    player = FramePlayer(gray, scale=1)
    player.slider.value = 2
    assert player.image.value == png_bytes(gray[2])
