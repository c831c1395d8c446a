"""Image grids and PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kitchen_lib.paths import atomic_path


def image_grid(rows: list[list[np.ndarray]], pad: int = 2, value: int = 255) -> np.ndarray:
    """A grid of equally sized uint8 (H, W, C) images, rows by columns, with padding."""
    h, w, c = rows[0][0].shape
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, c), value, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    img = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp)
    return path
