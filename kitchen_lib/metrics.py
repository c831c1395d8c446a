"""Image-quality measures, from scikit-image (nothing hand-rolled)."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio


def psnr(truth: np.ndarray, pred: np.ndarray) -> float:
    """PSNR in dB of one uint8 image against the truth; identical images give inf."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"image shapes differ: {truth.shape} vs {pred.shape}")
    if np.array_equal(truth, pred):
        return float("inf")
    return float(peak_signal_noise_ratio(truth, pred, data_range=255))


def mean_psnr(truths: np.ndarray, preds: np.ndarray, cap: float = 60.0) -> float:
    """Mean over images of per-image PSNR; identical pairs count as `cap` dB, not inf."""
    return float(np.mean([min(psnr(t, p), cap) for t, p in zip(truths, preds, strict=True)]))


def changed_fraction(a: np.ndarray, b: np.ndarray, threshold: float = 0.05) -> float:
    """Fraction of pixels whose largest channel change exceeds `threshold` (of the 0..1 range)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) / 255.0
    return float((diff > threshold).mean())
