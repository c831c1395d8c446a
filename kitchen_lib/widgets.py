"""ipywidgets for the notebooks (the one module that needs a Jupyter front end).

Play and the slider are joined with `widgets.link` (kernel side), not `jslink`, so they work
headless and in tests: setting `.value` on the slider runs the same callbacks as a person.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np
from PIL import Image


def png_bytes(frame: np.ndarray, scale: int = 1) -> bytes:
    """uint8 (H, W, C) frame -> PNG bytes, enlarged `scale` times with sharp pixels."""
    img = Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class FramePlayer(widgets.VBox):
    """Scrub through frames with a slider and a Play button; an optional caption per step."""

    def __init__(self, frames: np.ndarray, scale: int = 3, interval_ms: int = 120,
                 caption: Callable[[int], str] | Sequence[str] | None = None) -> None:
        self.frames = frames
        self.play = widgets.Play(min=0, max=len(frames) - 1, interval=interval_ms, description="play")
        self.slider = widgets.IntSlider(min=0, max=len(frames) - 1, description="step", continuous_update=True)
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.image = widgets.Image(format="png")
        self.label = widgets.Label()
        self._scale = scale
        self._caption = caption
        self.slider.observe(self._show, names="value")
        super().__init__([widgets.HBox([self.play, self.slider]), self.image, self.label])
        self._show()

    def _show(self, change: dict | None = None) -> None:
        t = self.slider.value
        self.image.value = png_bytes(self.frames[t], self._scale)
        if callable(self._caption):
            self.label.value = self._caption(t)
        elif self._caption is not None:
            self.label.value = self._caption[t]
        else:
            self.label.value = f"step {t} / {len(self.frames) - 1}"
