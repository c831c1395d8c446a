"""The drive's widget for notebook 09: `DriveDemo`, the real kitchen and a world model's dream under
the same buttons (kitchen_lib.inference.drive), with the PSNR strip it draws.

With kitchen_lib.frontend.widgets, the only modules that import ipywidgets.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.base.images import difference_image, png_bytes
from kitchen_lib.frontend.widgets import sized_image
from kitchen_lib.inference.commands import COMMANDS


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
