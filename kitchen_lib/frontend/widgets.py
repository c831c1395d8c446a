"""ipywidgets for the notebooks (the one module that needs a Jupyter front end).

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
        self._eta = sampler.eta
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
        return SamplerConfig(name, self.steps.value if SAMPLERS[name].takes_steps else None, self._eta)

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


def psnr_sparkline(values: Sequence[float], lo: float = 10.0, hi: float = 40.0, slots: int = 20, bar: int = 3,
                   height: int = 24, marks: Sequence[int] = ()) -> np.ndarray:
    """A small bar chart of the last `slots` PSNRs, drawn with numpy (cheap enough for every step):
    (height, slots * bar, 3) uint8, newest on the right, each bar from `lo` dB (empty) to `hi` (full);
    green at or above 25 dB, orange below, and a blue tick above the steps in `marks` (positions
    in `values`, e.g. re-syncs)."""
    image = np.full((height, slots * bar, 3), 255, np.uint8)
    image[height - 1] = 200  # the baseline
    shown = list(values)[-slots:]
    first = len(values) - len(shown)
    for i, v in enumerate(shown):
        x = (slots - len(shown) + i) * bar
        filled = int(round(np.clip((v - lo) / (hi - lo), 0, 1) * (height - 3)))
        color = (40, 160, 60) if v >= 25 else (230, 120, 20)
        image[height - 1 - filled : height - 1, x : x + bar - 1] = color
        if first + i in marks:
            image[0:2, x : x + bar - 1] = (30, 90, 220)
    return image


def command_slug(name: str) -> str:
    """A command's name as a CSS class part: "x+" -> "x-plus", "rz-" -> "rz-minus", "open" -> "open"."""
    return name[:-1] + {"+": "-plus", "-": "-minus"}[name[-1]] if name[-1] in "+-" else name


class DriveDemo(widgets.VBox):
    """Drive the real kitchen and a world model's dream with the same buttons (a `Drive`).

    real | dream | difference side by side, a keypad of hand commands (move, turn, gripper: the
    commands of kitchen_lib.inference.commands.COMMANDS), re-sync (the dream is handed the truth),
    reset (the env's start state for a seed) and "replay the expert" (a held-out recorded episode
    from its start state, `replay_steps` steps), a strip of the PSNR of the dream against the
    truth over the last steps (numbers and bars: the divergence; a blue tick marks a re-sync),
    and the time the dream took per frame.

    Buttons only, no keyboard keys: ipywidgets has no key events, and the one library that adds
    them (ipyevents) would be a new dependency for a few shortcuts.
    """

    KEYPAD = (  # rows of (command or None) per block; None leaves a gap
        ("move", (("z+", "y+", None), ("x-", None, "x+"), ("z-", "y-", None))),
        ("turn", (("rx+", "ry+", "rz+"), ("rx-", "ry-", "rz-"))),
        ("gripper", (("open",), ("close",))),
    )

    def __init__(self, drive, scale: int = 3, strip: int = 20, expert=None, replay_steps: int = 20) -> None:
        from kitchen_lib.inference.commands import COMMANDS

        self.drive, self._scale, self.strip, self.replay_steps = drive, scale, strip, replay_steps
        self._expert = expert  # a kitchen_lib.data.datasets.Episode; None: a held-out one, loaded when asked
        h, w = drive.history.real[0].shape[:2]
        titles = ["real (simulator)", "dream (model)", "difference"]
        self.images = [sized_image(h, w, scale) for _ in titles]
        panels = [widgets.VBox([widgets.Label(t, layout=widgets.Layout(width=f"{w * scale}px")), img],
                               layout=widgets.Layout(margin="0 12px 0 0"))
                  for t, img in zip(titles, self.images, strict=True)]
        self.buttons: dict[str, widgets.Button] = {}
        blocks = []
        for title, rows in self.KEYPAD:
            cells = []
            for row in rows:
                for name in row:
                    cells.append(self._command_button(name, COMMANDS[name].label) if name else
                                 widgets.Box(layout=widgets.Layout(width="48px")))
            width = max(48, *(14 * len(n) for row in rows for n in row if n))  # "close" is wider than "x+"
            grid = widgets.GridBox(cells, layout=widgets.Layout(grid_template_columns=f"repeat({len(rows[0])}, {width}px)",
                                                                grid_gap="2px"))
            blocks.append(widgets.VBox([widgets.Label(title), grid], layout=widgets.Layout(margin="0 16px 0 0")))
        self.resync_button = widgets.Button(description="re-sync", tooltip="hand the dream the real frames")
        self.reset_button = widgets.Button(description="reset", tooltip="the start state for the seed")
        self.seed = widgets.BoundedIntText(value=drive.seed, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="150px"))
        self.replay_button = widgets.Button(description="replay the expert", icon="play",
                                            tooltip=f"a held-out recorded episode, {replay_steps} steps from its start")
        self.resync_button.on_click(self._on_resync)
        self.reset_button.on_click(self._on_reset)
        self.replay_button.on_click(self.replay_expert)
        self.sparkline = sized_image(24, strip * 3, 2)
        self.divergence = widgets.Label()
        self.info = widgets.Label()
        super().__init__([
            widgets.HBox(panels),
            widgets.HBox(blocks),
            widgets.HBox([self.resync_button, self.reset_button, self.seed, self.replay_button]),
            widgets.HBox([self.sparkline, self.divergence]),
            self.info,
        ])
        self.add_class("kitchen-drive-demo")
        for part, name in ((self.images[0], "real"), (self.images[1], "dream"), (self.images[2], "difference"),
                           (self.resync_button, "resync"), (self.reset_button, "reset"),
                           (self.replay_button, "replay"), (self.sparkline, "sparkline"),
                           (self.divergence, "divergence"), (self.info, "info")):
            part.add_class(f"kitchen-{name}")
        self._show()

    def _command_button(self, name: str, tooltip: str) -> widgets.Button:
        b = widgets.Button(description=name, tooltip=tooltip, layout=widgets.Layout(width=f"{max(48, 14 * len(name))}px"))
        b.on_click(lambda _, name=name: self.press(name))
        b.add_class("kitchen-command")
        b.add_class(f"kitchen-cmd-{command_slug(name)}")
        self.buttons[name] = b
        return b

    def press(self, command) -> None:
        """One step of the drive (a command's name or a raw chunk), shown."""
        from kitchen_lib.base.errors import UserError

        try:
            self.drive.step(command)
        except UserError as e:
            self.info.value = str(e)
            return
        self._show()

    def _on_resync(self, button=None) -> None:
        self.drive.resync()
        self._show()

    def _on_reset(self, button=None) -> None:
        self.drive.reset(self.seed.value)
        self._show()

    def replay_expert(self, button=None) -> None:
        """Start from a held-out recorded episode's first state and replay its actions, showing each step."""
        from kitchen_lib.inference.drive import held_out_episode

        if self._expert is None:
            self.info.value = "loading a held-out episode..."
            self._expert = held_out_episode(self.drive.predictor)
        actions = self.drive.reset_to_episode(self._expert, 0)
        self._show()
        k = self.drive.k
        for i in range(min(self.replay_steps, len(actions) // k)):
            self.drive.step(actions[i * k : (i + 1) * k])
            self._show(f"replaying episode {self._expert.index}: ")

    def _show(self, prefix: str = "") -> None:
        d = self.drive
        real, dream = d.history.real[-1], d.history.shown[-1]
        for img, frame in zip(self.images, (real, dream, difference_image(real, dream)), strict=True):
            img.value = png_bytes(frame, self._scale)
        psnrs = [s.psnr for s in d.history.steps]
        marks = [t - 1 for t in d.history.resyncs]  # a re-sync after step t: a tick on that step's bar
        self.sparkline.value = png_bytes(psnr_sparkline(psnrs, slots=self.strip, marks=marks), 2)
        recent = psnrs[-self.strip:]
        self.divergence.value = ("PSNR dream vs real, last steps (dB): " + " ".join(f"{p:.1f}" for p in recent)
                                 if recent else "PSNR dream vs real: press a command")
        if d.history.steps:
            s = d.history.steps[-1]
            n = d.predictor.model.network_calls(d.sampler)
            self.info.value = (f"{prefix}step {s.step} ({s.step * d.k} env steps), {s.command}: dream "
                               f"{s.dream_seconds * 1000:.0f} ms a frame ({d.sampler.name}, {n} network passes), "
                               f"whole step {s.seconds * 1000:.0f} ms; PSNR {s.psnr:.2f} dB")
        else:
            self.info.value = f"{prefix}step 0: the dream starts from the real frame"
