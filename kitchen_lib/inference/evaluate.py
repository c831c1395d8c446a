"""Held-out evaluation of a model against the baselines.

Methods, each a way to guess the future frame:
    diffusion                   one sample of the diffusion model (with a chosen sampler)
    diffusion_mean              the mean of `mean_of` samples: nearer the conditional mean, blurrier
    diffusion_x0                the network's one-step estimate from pure noise (one call)
    diffusion_shuffled_actions  one sample with each pair's actions swapped for another pair's
                                (action-conditioned models): its gap to "diffusion" says how much
                                the model uses the actions
    copy                        the current frame
    regression                  the deterministic U-Net, when a checkpoint is given or found beside
PSNR rewards the conditional mean, so a blurry average beats a sharp guess of one future: the
sharpness ratio on the moving pixels (gradient energy of the prediction over the truth's, 1 is as
sharp as reality) shows what PSNR hides.

The JSON layout (stable, for other tools):

    {"dataset": str, "split": str, "pairs": int, "k": int, "size": int,
     "sampler": str, "sampling_steps": int,           # the diffusion model's sampler, network calls per frame
     "guidance": float,                               # its guidance on the actions (1: none; else 2 calls a step)
     "mean_of": int,                                  # samples averaged for diffusion_mean
     "methods": {"diffusion":  {"psnr", "ssim", "psnr_moving", "ssim_moving", "sharpness_moving", "seconds_per_frame"},
                 "copy":       {... same keys ...}, ...},    # the methods above that apply
     "per_task": {"microwave": {"pairs": int, "methods": {... as above, without seconds ...}}, ...}}

PSNR in dB (capped at 60), SSIM in [-1, 1]; "_moving" scores are over pixels where the current
and true future frames differ by more than 0.05, averaged over pairs that have any.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kitchen_lib.base.errors import UserError
from kitchen_lib.data.cache import PairsCache
from kitchen_lib.data.examples import shuffled_actions
from kitchen_lib.data.kitchen import COMPLETE_TASKS, TASK_QPOS_INDICES
from kitchen_lib.inference.baselines import copy_frame
from kitchen_lib.inference.metrics import SCORE_KEYS, BatchScorer, summarise_table
from kitchen_lib.inference.predictor import Predictor, load_predictor
from kitchen_lib.model.frame_model import X0_SAMPLER
from kitchen_lib.model.samplers import SamplerConfig
from kitchen_lib.training.runs import regression_beside

# A task "moves" in a pair when its joints change by more than this between t and t+k.
TASK_MOTION = 0.01


def moving_tasks(cache: PairsCache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """For each task, a bool per pair: do its joints move between step t and t+k? (From the
    cache's per-frame joint positions: the episodes are not read again.)"""
    current = cache.first_frames(rows[:, 0]) + rows[:, 1]
    objects = cache.array("objects")  # (F, 21): MuJoCo's qpos[9:30]
    out = {}
    for task in COMPLETE_TASKS:
        idx = np.asarray(TASK_QPOS_INDICES[task]) - 9
        delta = np.linalg.norm(objects[current + cache.k][:, idx] - objects[current][:, idx], axis=1)
        out[task] = delta > TASK_MOTION
    return out


def _predict(p: Predictor, inputs: dict[str, np.ndarray], sampler: SamplerConfig, seed: int,
             x0: bool = False) -> tuple[np.ndarray, float]:
    """One batch's predictions and the seconds they took."""
    t0 = time.perf_counter()
    return p.predict(inputs, sampler, seed=seed, x0=x0), time.perf_counter() - t0


def _mean_of(first: tuple[np.ndarray, float], p: Predictor, inputs: dict[str, np.ndarray], sampler: SamplerConfig,
             seed: int, n: int) -> tuple[np.ndarray, float]:
    """The mean of n samples, the first of which is the single sample already drawn (same seed)."""
    samples = [first] + [_predict(p, inputs, sampler, seed + 100_000 * j) for j in range(1, n)]
    mean = np.mean([s.astype(np.float32) for s, _ in samples], axis=0)
    return np.rint(mean).astype(np.uint8), sum(t for _, t in samples)


def _batch_predictions(predictor: Predictor, regression: Predictor | None, cache: PairsCache, rows: np.ndarray,
                       inputs: dict[str, np.ndarray], swapped: np.ndarray | None, sampler: SamplerConfig, seed: int,
                       mean_of: int, x0: bool) -> dict[str, tuple[np.ndarray, float]]:
    """Every method's predictions for one batch (the batch starting at row i is seeded seed + i)."""
    preds = {"diffusion": _predict(predictor, inputs, sampler, seed)}
    if mean_of > 1 and predictor.objective == "diffusion":
        preds["diffusion_mean"] = _mean_of(preds["diffusion"], predictor, inputs, sampler, seed, mean_of)
    if x0 and predictor.objective == "diffusion":
        # Sampling with the x0 estimate's own sampler (DDIM-1) is that estimate, with the same seed: reused.
        preds["diffusion_x0"] = preds["diffusion"] if sampler == X0_SAMPLER else \
            _predict(predictor, inputs, sampler, seed, x0=True)
    if swapped is not None:
        preds["diffusion_shuffled_actions"] = _predict(predictor, inputs | {"vector": swapped}, sampler, seed)
    preds["copy"] = (copy_frame(inputs["current"]), 0.0)
    if regression is not None:
        same = regression.conditioning == predictor.conditioning  # its twin: the same examples
        preds["regression"] = _predict(regression, inputs if same else regression.inputs(cache, rows), sampler, seed)
    return preds


def evaluate(predictor: Predictor, cache: PairsCache, split: str = "test", sampler: SamplerConfig | None = None,
             regression: Predictor | None = None, max_pairs: int | None = None, seed: int = 0, batch: int = 64,
             progress: bool = True, details: bool = False, mean_of: int = 4, x0: bool = True,
             shuffled: bool = True, part: str | None = None, rows: np.ndarray | None = None) -> dict:
    """Score the model and the baselines on the pairs of a split (of one of the cache's joined
    datasets if `part` names one: result["dataset"] is then that one); returns the documented dict.
    `rows`: (N, 2) (episode, step) rows of the split to score instead of all of them (e.g. chosen
    held-out episodes, bench/unseen.py); max_pairs and part then only label them.

    `sampler` defaults to the one the model's run chose. mean_of < 2 leaves out diffusion_mean
    (it costs `mean_of` - 1 more samples: the first is the single sample), x0=False diffusion_x0
    (one more network call a frame; none at DDIM-1, which is that estimate), shuffled=False
    diffusion_shuffled_actions (one more sample).

    Streams: `batch` pairs are gathered, predicted by every method and scored at a time
    (BatchScorer: frame_scores' numbers for the whole batch at once), so memory does not grow
    with the split (only each pair's five scores are kept). The numbers do
    not depend on `batch` beyond the seeds: the batch starting at row i is sampled with seed + i.

    details=True adds result["details"]: the (episode, step) rows, the frames, each method's
    predictions and per-pair scores (arrays held for the whole split: for notebooks on small
    splits, not for JSON or large splits)."""
    from tqdm.auto import tqdm

    have = (cache.meta["config"]["size"], cache.frames.shape[-1], cache.k)
    for who, p in (("the model", predictor), ("the regression model", regression)):
        want = None if p is None else (p.config.data.size, p.config.data.channels, p.config.data.k)
        if want is not None and want != have:
            raise UserError(f"{who} was trained on (size, channels, k) = {want} but these pairs are {have}: "
                            f"build pairs with its settings")
    sampler = sampler or predictor.sampler
    if rows is None:
        rows = cache.select(split, max_pairs, dataset=part)
    swapped = None
    if shuffled and predictor.conditioning.actions:
        # The permutation spans the whole split (pairs swap actions across batches): built once from
        # the per-frame arrays, a few numbers a pair.
        vector = predictor.vector.build(cache, cache.first_frames(rows[:, 0]) + rows[:, 1])
        swapped = shuffled_actions(vector, predictor.vector, seed)
    scores: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    kept: dict[str, list[np.ndarray]] = {}
    for i in tqdm(range(0, len(rows), batch), desc="evaluate", disable=not progress, leave=False):
        inputs = predictor.inputs(cache, rows[i : i + batch])
        preds = _batch_predictions(predictor, regression, cache, rows[i : i + batch], inputs,
                                   None if swapped is None else swapped[i : i + batch], sampler, seed + i, mean_of, x0)
        scorer, scored = BatchScorer(inputs["current"], inputs["future"]), {}
        for m, (pred, secs) in preds.items():
            if id(pred) not in scored:  # a prediction two methods share (x0 at DDIM-1) is scored once
                scored[id(pred)] = scorer(pred)
            scores.setdefault(m, []).append(scored[id(pred)])
            seconds[m] = seconds.get(m, 0.0) + secs
            if details:
                kept.setdefault(m, []).append(pred)
        if details:
            kept.setdefault("current", []).append(inputs["current"])
            kept.setdefault("future", []).append(inputs["future"])
        cache.release()  # the frames read so far: mapped pages would count as ours up to the file's size
    table = {m: np.concatenate(s) for m, s in scores.items()}
    methods = {m: summarise_table(s) | {"seconds_per_frame": seconds[m] / len(rows)} for m, s in table.items()}
    per_task = {}
    for task, moving in moving_tasks(cache, rows).items():
        sel = np.flatnonzero(moving)
        per_task[task] = {"pairs": int(len(sel)),
                          "methods": {m: summarise_table(s[sel]) if len(sel) else {} for m, s in table.items()}}
    result = {
        "dataset": part or cache.meta["config"]["dataset"], "split": split, "pairs": int(len(rows)), "k": have[2], "size": have[0],
        "sampler": sampler.name, "sampling_steps": predictor.model.network_calls(sampler), "guidance": sampler.guidance,
        "mean_of": mean_of,
        "methods": methods, "per_task": per_task,
    }
    if details:
        result["details"] = {"rows": rows, "current": np.concatenate(kept["current"]),
                             "future": np.concatenate(kept["future"]),
                             "pred": {m: np.concatenate(kept[m]) for m in table},
                             "scores": {m: [dict(zip(SCORE_KEYS, map(float, r), strict=True)) for r in s]
                                        for m, s in table.items()}}
    return result


def format_table(result: dict) -> str:
    """The methods as a plain-text table."""
    head = f"{'method':27s} {'PSNR':>7s} {'SSIM':>6s} {'PSNR mov':>9s} {'SSIM mov':>9s} {'sharp mov':>9s} {'s/frame':>8s}"
    w = result.get("guidance", 1.0)
    how = f"{result['sampler']}-{result['sampling_steps']}" if w == 1 else \
        f"{result['sampler']} with guidance {w:g} ({result['sampling_steps']} network passes)"
    lines = [f"{result['dataset']} / {result['split']}: {result['pairs']} pairs, k={result['k']}, {result['size']}px, "
             f"diffusion sampled with {how}", head, "-" * len(head)]
    for m, r in result["methods"].items():
        lines.append(f"{m:27s} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['psnr_moving']:9.2f} {r['ssim_moving']:9.3f} "
                     f"{r['sharpness_moving']:9.3f} {r['seconds_per_frame']:8.3f}")
    lines.append("moving-pixel PSNR by task (pairs where the task's object moves):")
    for task, r in result["per_task"].items():
        vals = ", ".join(f"{m} {v['psnr_moving']:.2f}" for m, v in r["methods"].items() if v)
        lines.append(f"  {task:14s} {r['pairs']:5d} pairs  {vals or '-'}")
    return "\n".join(lines)


def load_with_regression(checkpoint: str | Path, regression: str | Path | None = None, device: str = "auto"):
    """The diffusion predictor and, if given or found beside it, the regression one."""
    p = load_predictor(checkpoint, device=device)
    if p.objective != "diffusion":
        raise UserError(f"{checkpoint} is a {p.objective} model; pass the diffusion checkpoint and the regression one "
                         f"with --regression")
    reg_path = Path(regression) if regression else regression_beside(checkpoint)
    reg = load_predictor(reg_path, device=device) if reg_path else None
    if reg is not None and reg.objective != "regression":
        raise UserError(f"{reg_path} is not a regression checkpoint (objective {reg.objective})")
    return p, reg


def plot_time_to_quality(result: dict):
    """Held-out PSNR against training minutes, model and copy, full frame and moving pixels.

    `result` is bench/quality.py's JSON (its "curve" list); returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    curve = result["curve"]
    minutes = [0.0] + [c["minutes"] for c in curve]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    for ax, key, title in zip(axes, ("psnr", "psnr_moving"), ("full frame", "moving pixels"), strict=True):
        # Minute 0: the untrained network is not scored; its line starts at the first point.
        ax.plot(minutes[1:], [c["model"][key] for c in curve], "o-", label="diffusion model")
        ax.plot(minutes, [curve[0]["copy"][key]] * len(minutes), "--", color="gray", label="copy current frame")
        ax.set(title=f"{title}", xlabel="training minutes (2-core CPU)", ylabel="PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Held-out PSNR vs training time, {result.get('preset', 'cpu')} preset, {result.get('default_sampler', '')}",
                 fontsize=10)
    fig.tight_layout()
    return fig
