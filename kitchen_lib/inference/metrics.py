"""Image-quality measures. PSNR and SSIM come from scikit-image (nothing hand-rolled).

Most of a kitchen frame does not move in k steps, so full-frame scores mostly measure the
static background. The *moving* pixels are those where the current and the true future frame
differ by more than a threshold; scores on them say whether a model predicts motion.

`frame_scores` scores one frame; `BatchScorer` gives the same numbers, bit for bit, for a whole
batch at once (evaluate's path: calling scikit-image frame by frame, channel by channel, spends
most of its time in Python around 64x64 arrays). It runs scikit-image's SSIM arithmetic
(`structural_similarity` with a 7x7 uniform window, its defaults) on the batch in one go, and
its scores are checked against `frame_scores` by tests/test_evaluate.py.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter
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


# scikit-image's structural_similarity defaults, as ssim_map calls it: a 7x7 uniform window,
# K1 0.01, K2 0.03, the sample covariance, uint8 data range.
_SSIM_WIN = 7
_SSIM_COV_NORM = _SSIM_WIN**2 / (_SSIM_WIN**2 - 1)
_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _box(x: np.ndarray) -> np.ndarray:
    """(B, H, W, C) float64 -> the 7x7 mean over H and W of each frame and channel (scipy's
    uniform_filter per axis, as scikit-image filters one (H, W) channel)."""
    return uniform_filter(x, size=(1, _SSIM_WIN, _SSIM_WIN, 1))


def _energy_map(x: np.ndarray) -> np.ndarray:
    """(B, H, W, C) float32 -> (B, H, W) squared finite-difference gradient, gradient_energy's per pixel."""
    gy, gx = np.zeros_like(x), np.zeros_like(x)
    gy[:, 1:], gx[:, :, 1:] = x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]
    return (gx**2 + gy**2).sum(axis=-1)


class BatchScorer:
    """frame_scores for a batch, several predictions of the same frames: what depends only on the
    current and true frames (the moving pixels, the truth's filtered moments and gradient
    energy) is computed once, then each call scores one method's predictions.

        scorer = BatchScorer(current, truth)   # (B, H, W, C) uint8 each
        scorer(pred)                           # (B, 5) float, columns SCORE_KEYS

    The same arithmetic as frame_scores in the same order, so the same numbers (tests check it):
    the heavy parts (SSIM's filters and products, gradients) run on the whole batch, the
    per-frame sums over the moving pixels frame by frame."""

    def __init__(self, current: np.ndarray, truth: np.ndarray) -> None:
        current, truth = np.asarray(current), np.asarray(truth)
        if current.shape != truth.shape or current.ndim != 4:
            raise ValueError(f"current and truth must be (B, H, W, C) alike: {current.shape} vs {truth.shape}")
        self.truth = truth
        self.masks = np.abs(current.astype(np.int16) - truth.astype(np.int16)).max(axis=-1) / 255.0 > MOVING_THRESHOLD
        x = truth.astype(np.float64)
        self._x, self._ux = x, _box(x)
        self._vx = _SSIM_COV_NORM * (_box(x * x) - self._ux * self._ux)
        energy = _energy_map(truth.astype(np.float32))
        self._truth_energy = [float(e[m].sum()) for e, m in zip(energy, self.masks, strict=True)]

    def ssim_maps(self, pred: np.ndarray) -> np.ndarray:
        """(B, H, W, C) uint8 predictions -> (B, H, W) per-pixel SSIM against the truth (ssim_map's)."""
        ux, vx, y = self._ux, self._vx, pred.astype(np.float64)
        uy = _box(y)
        vy = _SSIM_COV_NORM * (_box(y * y) - uy * uy)
        vxy = _SSIM_COV_NORM * (_box(self._x * y) - ux * uy)
        a1, a2, b1, b2 = 2 * ux * uy + _SSIM_C1, 2 * vxy + _SSIM_C2, ux**2 + uy**2 + _SSIM_C1, vx + vy + _SSIM_C2
        return ((a1 * a2) / (b1 * b2)).mean(axis=-1)

    def __call__(self, pred: np.ndarray) -> np.ndarray:
        pred = np.asarray(pred)
        if pred.shape != self.truth.shape:
            raise ValueError(f"predictions are {pred.shape}, the frames {self.truth.shape}")
        smaps = self.ssim_maps(pred)
        energy = _energy_map(pred.astype(np.float32))
        out = np.full((len(pred), len(SCORE_KEYS)), np.nan)
        for i, (t, p, smap, mask) in enumerate(zip(self.truth, pred, smaps, self.masks, strict=True)):
            out[i, 0], out[i, 1] = _capped_psnr(t, p), float(smap.mean())
            if mask.any():
                out[i, 2] = _capped_psnr(t[mask], p[mask])
                out[i, 3] = float(smap[mask].mean())
                out[i, 4] = float(energy[i][mask].sum()) / max(self._truth_energy[i], 1e-6)
        return out


def _capped_psnr(truth: np.ndarray, pred: np.ndarray) -> float:
    """capped_psnr of uint8 pixels without scikit-image's per-call checks: its mean squared error
    of integers is an exact integer sum over the count, whatever the summation order."""
    sq = int(np.square(truth.astype(np.int64) - pred.astype(np.int64)).sum())
    if sq == 0:  # identical: psnr's inf
        return PSNR_CAP
    return min(float(10 * np.log10(255.0**2 / (sq / truth.size))), PSNR_CAP)


def summarise_table(scores: np.ndarray) -> dict[str, float]:
    """(N, 5) scores, columns SCORE_KEYS -> the mean of each (NaN-aware for the moving-pixel scores)."""
    return {k: float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
            for k, col in zip(SCORE_KEYS, np.asarray(scores, dtype=float).reshape(-1, len(SCORE_KEYS)).T, strict=True)}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each score over frames (NaN-aware for the moving-pixel scores)."""
    return summarise_table(np.array([[r[k] for k in SCORE_KEYS] for r in rows], dtype=float))
