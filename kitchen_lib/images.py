"""Image grids and PNG files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


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
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
