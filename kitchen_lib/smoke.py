"""Smoke mode: `KITCHEN_SMOKE=1` makes every notebook run in about a minute (tiny data)."""

from __future__ import annotations

import os


def smoke_mode() -> bool:
    return os.environ.get("KITCHEN_SMOKE", "").strip().lower() not in ("", "0", "false", "no")
