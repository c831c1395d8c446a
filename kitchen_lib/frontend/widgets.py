"""ipywidgets for the notebooks: the frame player and the prediction demo (kitchen_lib.frontend.drive_widget
holds the drive's). With it, the only modules that need a Jupyter front end.

Play and the slider are joined with `widgets.link` (kernel side), not `jslink`, so they work
headless and in tests: setting `.value` on the slider runs the same callbacks as a person.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np

from kitchen_lib.base.images import difference_image, png_bytes
from kitchen_lib.data.examples import gather
from kitchen_lib.inference.baselines import copy_frame
from kitchen_lib.inference.metrics import capped_psnr
from kitchen_lib.model.samplers import DEFAULT_DDIM_STEPS, SAMPLERS, SamplerConfig


def sized_image(height: int, width: int, scale: int, fmt: str = "png") -> widgets.Image:
    """An image widget shown at exactly (height, width) x scale pixels.

    Without a size JupyterLab stretches an image to the notebook's width: a 32 px frame at
    scale 3 would be shown about 900 px wide, blocky, pushing the controls below the fold."""
    layout = widgets.Layout(width=f"{width * scale}px", height=f"{height * scale}px", object_fit="contain",
                            flex="0 0 auto")
    return widgets.Image(format=fmt, layout=layout)


class FramePlayer(widgets.VBox):
    """Scrub through frames with a slider and a Play button; an optional caption per step."""

    def __init__(self, frames: np.ndarray, scale: int = 3, interval_ms: int = 120,
                 caption: Callable[[int], str] | Sequence[str] | None = None) -> None:
        self.frames = frames
        self.play = widgets.Play(min=0, max=len(frames) - 1, interval=interval_ms, description="play")
        self.slider = widgets.IntSlider(min=0, max=len(frames) - 1, description="step", continuous_update=True)
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.image = sized_image(frames.shape[1], frames.shape[2], scale)
        self.label = widgets.Label()
        self._scale = scale
        self._caption = caption
        self.slider.observe(self._show, names="value")
        super().__init__([widgets.HBox([self.play, self.slider]), self.image, self.label])
        # Class names let a browser test (tests/test_browser.py) find the parts.
        self.add_class("kitchen-frame-player")
        self.slider.add_class("kitchen-step")
        self.label.add_class("kitchen-caption")
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


def sampler_buttons(value: str) -> widgets.ToggleButtons:
    """One button per registered sampler, `value` pressed."""
    return widgets.ToggleButtons(options=list(SAMPLERS), value=value, description="sampler",
                                 style={"button_width": "64px"})  # side by side, not stacked


class PredictionDemo(widgets.VBox):
    """Scrub any episode and watch the model predict k steps ahead.

    current | predicted | actual | |predicted - actual|, with the time the prediction took and
    its PSNR against the truth (and the copy baseline's), updated as the controls change. A
    button runs a short autoregressive rollout and shows it as an animation.
    """

    def __init__(self, predictor, cache, sampler: SamplerConfig | None = None, scale: int = 3,
                 rollout_horizon: int = 8) -> None:
        sampler = sampler or predictor.sampler  # the run's default unless told
        self.predictor, self.cache, self._scale, self.rollout_horizon = predictor, cache, scale, rollout_horizon
        self.k = predictor.k
        eps = cache.meta["episodes"]
        first = next((e["index"] for e in eps if e["split"] == "test"), eps[0]["index"])
        self.episode = widgets.Dropdown(options=[(f"episode {e['index']} ({e['split']})", e["index"]) for e in eps],
                                        value=first, description="episode")
        self.play = widgets.Play(min=0, max=1, interval=800, description="play")
        self.slider = widgets.IntSlider(min=0, max=1, description="step", continuous_update=False)
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.sampler = sampler_buttons(sampler.name)
        self.steps = widgets.IntSlider(min=1, max=200, value=sampler.steps or DEFAULT_DDIM_STEPS, description="DDIM steps",
                                       continuous_update=False)
        self._eta, self._guidance = sampler.eta, sampler.guidance  # kept: no control changes them
        titles = ["current", f"predicted (+{self.k})", f"actual (+{self.k})", "difference"]  # short: under 100 px
        h, w = self._frames().shape[1:3]
        self.images = [sized_image(h, w, scale) for _ in titles]
        # Each title as wide as its image, with a gap: side by side they would run into each other.
        panels = [widgets.VBox([widgets.Label(t, layout=widgets.Layout(width=f"{w * scale}px")), img],
                               layout=widgets.Layout(margin="0 12px 0 0"))
                  for t, img in zip(titles, self.images, strict=True)]
        self.info = widgets.Label()
        self.rollout_button = widgets.Button(description=f"Rollout {rollout_horizon} steps", icon="play")
        self.rollout_view = widgets.Image(format="gif", layout=widgets.Layout(display="none"))  # sized when filled
        self.rollout_info = widgets.Label()
        # A world model is told the actions: from this episode, or another's ("what if").
        self.world = predictor.conditioning.actions
        self.actions_from = widgets.Dropdown(options=[("this episode", None)] + [(f"episode {e['index']}", e["index"])
                                                                                 for e in eps],
                                             value=None, description="actions of")
        self.actions_info = widgets.Label()
        self.last: dict[str, float] = {}
        self.episode.observe(self._on_episode, names="value")
        for w in (self.slider, self.sampler, self.steps, self.actions_from):
            w.observe(self._refresh, names="value")
        self.rollout_button.on_click(self.run_rollout)
        world_row = [widgets.HBox([self.actions_from, self.actions_info])] if self.world else []
        super().__init__([
            widgets.HBox([self.episode, self.sampler, self.steps], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.play, self.slider]), *world_row,
            widgets.HBox(panels), self.info,
            widgets.HBox([self.rollout_button, self.rollout_info]), self.rollout_view,
        ])
        self.add_class("kitchen-prediction-demo")
        for part, name in ((self.slider, "step"), (self.images[1], "predicted"), (self.info, "info"),
                           (self.rollout_button, "rollout-button"), (self.rollout_view, "rollout")):
            part.add_class(f"kitchen-{name}")
        self._on_episode()

    def _frames(self) -> np.ndarray:
        return self.cache.episode_frames(self.episode.value)

    def _source(self):
        """The shown episode as a FrameSource, driven by the chosen episode's actions."""
        source = self.cache.episode(self.episode.value)
        other = self.actions_from.value if self.world else None
        if other is None:
            return source
        actions = self.cache.episode(other).actions
        if len(actions) < self.slider.value + self.k:
            raise ValueError(f"episode {other} has no actions for steps {self.slider.value}..{self.slider.value + self.k - 1}")
        return source.with_actions(actions)

    def _on_episode(self, change: dict | None = None) -> None:
        last = len(self._frames()) - 1 - self.k  # the last step with a true future
        with self.slider.hold_trait_notifications():
            self.slider.max = self.play.max = last
            self.slider.value = min(self.slider.value, last)
        self._refresh()

    def sampler_config(self) -> SamplerConfig:
        """What the controls ask for; the steps only for a sampler that takes them (not DDPM)."""
        name = self.sampler.value
        return SamplerConfig(name, self.steps.value if SAMPLERS[name].takes_steps else None, self._eta, self._guidance)

    def _refresh(self, change: dict | None = None) -> None:
        import time

        self.steps.disabled = not SAMPLERS[self.sampler.value].takes_steps
        t = self.slider.value
        try:
            inputs = gather(self._source(), np.array([[0, t]]), self.predictor.conditioning)
        except ValueError as e:  # the other episode is shorter
            self.info.value = str(e)
            return
        current, actual = inputs["current"][0], inputs["future"][0]
        if self.world:
            chunk = self.predictor.vector.actions_of(inputs["vector"][0])  # (k, 9)
            self.actions_info.value = "actions (arm joints 1-7, fingers) per step: " + " | ".join(
                " ".join(f"{a:+.1f}" for a in row) for row in chunk)
        t0 = time.perf_counter()
        sampler = self.sampler_config()
        pred = self.predictor.predict(inputs, sampler, seed=t)[0]
        seconds = time.perf_counter() - t0
        for img, frame in zip(self.images, (current, pred, actual, difference_image(pred, actual)), strict=True):
            img.value = png_bytes(frame, self._scale)
        self.last = {"step": t, "seconds": seconds, "psnr": capped_psnr(actual, pred),
                     "copy_psnr": capped_psnr(actual, copy_frame(current))}
        n = self.predictor.model.network_calls(sampler)
        self.info.value = (f"step {t}: predicted in {seconds:.2f} s ({sampler.name}, {n} network passes); "
                           f"PSNR {self.last['psnr']:.2f} dB (copying the current frame: {self.last['copy_psnr']:.2f} dB)")

    def run_rollout(self, button=None) -> None:
        import imageio.v3 as iio

        from kitchen_lib.inference.rollout import max_horizon, rollout_episode

        frames, t = self._frames(), self.slider.value
        horizon = min(self.rollout_horizon, max_horizon(len(frames), t, self.k))
        if horizon < 1:
            self.rollout_info.value = "too close to the episode's end for a rollout: move the slider back"
            return
        other = self.actions_from.value if self.predictor.conditioning.actions else None
        if other is not None:
            horizon = min(horizon, (len(self.cache.episode(other).actions) - t) // self.k)
            if horizon < 1:
                self.rollout_info.value = f"episode {other} has no actions this late"
                return
        r = rollout_episode(self.predictor, self.cache, self.episode.value, t, horizon, self.sampler_config(), seed=t,
                            actions_of=other)
        big = np.repeat(np.repeat(r.side_by_side(), self._scale, 1), self._scale, 2)  # (steps, H, W, C) x scale
        self.rollout_view.value = iio.imwrite("<bytes>", big, extension=".gif", duration=500, loop=0)
        self.rollout_view.layout = sized_image(big.shape[1], big.shape[2], 1).layout
        self.rollout_info.value = (f"truth | prediction | difference, {horizon} steps of k={self.k} from step {t}; "
                                   f"PSNR per step: {' '.join(f'{p:.1f}' for p in r.psnr[1:])}")
