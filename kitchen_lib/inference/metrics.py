"""Image-quality measures. PSNR and SSIM come from scikit-image (nothing hand-rolled).

Most of a kitchen frame does not move in k steps, so full-frame scores mostly measure the
static background. The *moving* pixels are those where the current and the true future frame
differ by more than a threshold; scores on them say whether a model predicts motion.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

MOVING_THRESHOLD = 0.05  # of the 0..1 range, largest change over the channels
PSNR_CAP = 60.0  # dB; identical images would be infinite


def psnr(truth: np.ndarray, pred: np.ndarray) -> float:
    """PSNR in dB of one uint8 image (or pixel set) against the truth; identical gives inf."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"image shapes differ: {truth.shape} vs {pred.shape}")
    if np.array_equal(truth, pred):
        return float("inf")
    return float(peak_signal_noise_ratio(truth, pred, data_range=255))


def capped_psnr(truth: np.ndarray, pred: np.ndarray, cap: float = PSNR_CAP) -> float:
    """PSNR in dB, with identical images counted as `cap` rather than infinite."""
    return min(psnr(truth, pred), cap)


def ssim_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (H, W) of two uint8 (H, W, C) images, averaged over channels."""
    _, full = structural_similarity(truth, pred, data_range=255, channel_axis=-1, full=True, win_size=7)
    return full.mean(axis=-1)


def moving_mask(current: np.ndarray, future: np.ndarray, threshold: float = MOVING_THRESHOLD) -> np.ndarray:
    """(H, W) bool: pixels whose largest channel change exceeds `threshold`."""
    diff = np.abs(current.astype(np.int16) - future.astype(np.int16)).max(axis=-1) / 255.0
    return diff > threshold


def changed_fraction(a: np.ndarray, b: np.ndarray, threshold: float = MOVING_THRESHOLD) -> float:
    return float(moving_mask(a, b, threshold).mean())


def mean_psnr(truths: np.ndarray, preds: np.ndarray, cap: float = PSNR_CAP) -> float:
    """Mean over images of per-image PSNR; identical pairs count as `cap` dB, not inf."""
    return float(np.mean([capped_psnr(t, p, cap) for t, p in zip(truths, preds, strict=True)]))


def gradient_energy(image: np.ndarray, mask: np.ndarray) -> float:
    """Sum over the masked pixels of the squared finite-difference gradient (x and y, all channels)."""
    x = image.astype(np.float32)
    gy, gx = np.zeros_like(x), np.zeros_like(x)
    gy[1:], gx[:, 1:] = x[1:] - x[:-1], x[:, 1:] - x[:, :-1]
    return float(((gx**2 + gy**2).sum(axis=-1))[mask].sum())


def sharpness(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Gradient energy of the prediction over the truth's on the masked pixels: 1 is as sharp as
    reality, below 1 is blur, above 1 is invented detail or noise."""
    return gradient_energy(pred, mask) / max(gradient_energy(truth, mask), 1e-6)


def frame_scores(current: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of one prediction, full frame and on the moving pixels, and its sharpness on
    the moving pixels (NaN if none move)."""
    smap = ssim_map(truth, pred)
    mask = moving_mask(current, truth)
    scores = {"psnr": capped_psnr(truth, pred), "ssim": float(smap.mean())}
    if mask.any():
        scores["psnr_moving"] = capped_psnr(truth[mask], pred[mask])
        scores["ssim_moving"] = float(smap[mask].mean())
        scores["sharpness_moving"] = sharpness(truth, pred, mask)
    else:
        scores["psnr_moving"] = scores["ssim_moving"] = scores["sharpness_moving"] = float("nan")
    return scores


SCORE_KEYS = ("psnr", "ssim", "psnr_moving", "ssim_moving", "sharpness_moving")  # frame_scores' keys


def summarise_table(scores: np.ndarray) -> dict[str, float]:
    """(N, 5) scores, columns SCORE_KEYS -> the mean of each (NaN-aware for the moving-pixel scores)."""
    return {k: float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
            for k, col in zip(SCORE_KEYS, np.asarray(scores, dtype=float).reshape(-1, len(SCORE_KEYS)).T, strict=True)}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each score over frames (NaN-aware for the moving-pixel scores)."""
    return summarise_table(np.array([[r[k] for k in SCORE_KEYS] for r in rows], dtype=float))
