import numpy as np

from kitchen_lib.base.images import png_bytes
from kitchen_lib.frontend.drive_widget import command_slug, psnr_sparkline
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


def test_the_psnr_strip_draws_bars_from_low_to_high_and_marks_resyncs():
    strip = psnr_sparkline([10.0, 40.0], slots=4, bar=3, height=24, marks=[1])
    assert strip.shape == (24, 12, 3) and strip.dtype == np.uint8
    assert (strip[:, :6, :][:23] == 255).all()  # two empty slots on the left: only two values so far
    assert (strip[:23, 6:8] == 255).all()  # 10 dB: an empty bar
    assert (strip[2:23, 9:11] != 255).all()  # 40 dB: a full one
    assert (strip[0:2, 9:11] == (30, 90, 220)).all()  # the re-sync tick over the second
    assert (strip[0:2, 6:8] == 255).all()  # and none over the first
    longer = psnr_sparkline(list(range(10, 40)), slots=4)  # only the last 4 are drawn
    assert np.array_equal(longer, psnr_sparkline([36, 37, 38, 39], slots=4))


def test_command_names_become_css_classes():
    assert [command_slug(n) for n in ("x+", "rz-", "open")] == ["x-plus", "rz-minus", "open"]
