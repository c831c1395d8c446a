"""Kitchen Diffusion: predict Franka Kitchen frames k steps ahead with a conditional DDPM."""

import os
import sys


def _pick_headless_gl() -> None:
    # MuJoCo reads MUJOCO_GL once, when it is first imported, so this runs before any
    # submodule imports mujoco. A user's own MUJOCO_GL always wins.
    if "MUJOCO_GL" in os.environ or not sys.platform.startswith("linux"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["MUJOCO_GL"] = "egl"


_pick_headless_gl()

__version__ = "0.1.0"
