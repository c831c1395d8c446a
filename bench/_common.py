"""Shared bits of the benchmarks: machine info, tables, JSON written atomically."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    from kitchen_lib.base.device import cpu_has_native_bf16

    return {
        "cpu": platform.processor() or platform.machine(),
        # The vector unit torch dispatches to, and bf16 in hardware: the machine changed between
        # sessions once (AVX2 to AVX-512 with AMX, 2.2x the steps a minute), and timings moved with it.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # malloc settings change CPU timings (docs/results.md)
    }


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def write_json(name: str, obj: dict) -> Path:
    from kitchen_lib.base.paths import atomic_path

    path = RESULTS / name
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))
    return path
