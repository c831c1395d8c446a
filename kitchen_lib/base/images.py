"""Frames as arrays, tensors and files: conversions, difference images, grids, PNGs.

Frames are uint8 (H, W, C) arrays (C = 3 for RGB, 1 for grayscale); the network sees float
tensors (C, H, W) in [-1, 1].
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kitchen_lib.base.paths import atomic_path

_RGB_TO_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma


def to_grayscale(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (..., 1) uint8."""
    return np.rint(frames.astype(np.float32) @ _RGB_TO_GRAY)[..., None].astype(np.uint8)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 torch tensor (..., C, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.array(frames)).float().div_(127.5).sub_(1.0)  # copy: memmaps are read-only
    return t.movedim(-1, -3)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of to_tensor: float (..., C, H, W) in [-1, 1] -> uint8 (..., H, W, C)."""
    x = tensor.detach().float().clamp(-1, 1).add(1).mul(127.5).round().movedim(-3, -1)
    return x.to("cpu").numpy().astype(np.uint8)


def difference_image(a: np.ndarray, b: np.ndarray, gain: int = 3) -> np.ndarray:
    """|a - b| of uint8 frames, brightened `gain` times so small errors show."""
    return np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * gain, 0, 255).astype(np.uint8)


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


def label_columns(grid: np.ndarray, labels: list[str], scale: int = 2, pad: int = 2, title: str | None = None) -> np.ndarray:
    """The grid of `image_grid` (equal columns, `pad` pixels apart) enlarged `scale` times, under
    a band naming each column (and a title line above, if given). uint8 RGB (H', W', 3)."""
    from PIL import ImageDraw, ImageFont

    img = to_pil(grid if grid.shape[-1] == 3 else np.repeat(grid, 3, axis=-1), scale)
    font = ImageFont.load_default(size=11)
    line = 15
    band = line + (line if title else 0) + 3
    out = Image.new("RGB", (img.width, img.height + band), (255, 255, 255))
    out.paste(img, (0, band))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((3, 1), title, fill=(0, 0, 0), font=font)
    col = (grid.shape[1] - pad) / len(labels) * scale
    for j, text in enumerate(labels):
        draw.text((pad * scale + j * col + 2, band - line - 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(out)


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """uint8 (H, W, C) -> a PIL image, enlarged `scale` times with sharp pixels."""
    img = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale != 1 else img


def png_bytes(frame: np.ndarray, scale: int = 1) -> bytes:
    """uint8 (H, W, C) frame -> PNG bytes, enlarged `scale` times with sharp pixels."""
    buf = io.BytesIO()
    to_pil(frame, scale).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        to_pil(image, scale).save(tmp)
    return path
