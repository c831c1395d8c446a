"""Telling a blow-up from noise: the checks a training run makes, and the error that stops it.

Each check returns what went wrong, or None. A run that blew up saves nothing after it: the
error drops the metrics rows after the last checkpoint and says how to go on.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from kitchen_lib.base.errors import UserError
from kitchen_lib.training import runlog
from kitchen_lib.training.runs import saved_checkpoints


class TrainingDiverged(UserError, RuntimeError):
    """The run blew up (a non-finite or exploding loss, gradient or weights); nothing was saved after it."""


# A loss this many times the run's early median, or a validation loss this many times its best,
# is a blow-up, not noise: healthy runs stay within a few times their first losses.
DIVERGENCE_FACTOR = 100.0
REFERENCE_STEPS = 20  # the first optimizer steps whose median loss is the run's reference


def loss_problem(loss: float, early_losses: list[float]) -> str | None:
    """A non-finite training loss, or one over DIVERGENCE_FACTOR x the median of the run's first losses."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if len(early_losses) >= 2 and loss > DIVERGENCE_FACTOR * statistics.median(early_losses):
        return (f"loss {loss:.3g} is over {DIVERGENCE_FACTOR:g}x the run's early median "
                f"{statistics.median(early_losses):.3g}")
    return None


def grad_norm_problem(grad_norm: float, amp: bool) -> str | None:
    """A non-finite gradient norm (under AMP the grad scaler skips such steps itself)."""
    if not math.isfinite(grad_norm) and not amp:
        return f"gradient norm became {grad_norm}"
    return None


def val_loss_problem(val_loss: float, best_val_loss: float) -> str | None:
    """A non-finite validation loss, or one over DIVERGENCE_FACTOR x the best so far."""
    if not math.isfinite(val_loss) or (math.isfinite(best_val_loss) and val_loss > DIVERGENCE_FACTOR * best_val_loss):
        return f"validation loss {val_loss:.3g} (best so far {best_val_loss:.3g})"
    return None


def weights_problem(net: torch.nn.Module) -> str | None:
    """Parameters holding a NaN or infinity (checked before every save, so none is ever saved)."""
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return f"weights became non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    return None


def diverged_error(run_dir: Path, what: str, step: int, epoch: int, saved_step: int,
                   learning_rate: float, truncate: bool = True) -> TrainingDiverged:
    """The error to stop a run with; first drops the metrics rows after the last saved step,
    so the log matches the checkpoints that are kept (truncate=False: another rank writes the log)."""
    if truncate:
        runlog.truncate_metrics(run_dir, saved_step)
    kept = [p.name for p in saved_checkpoints(run_dir)]
    then = (f"The checkpoints saved before it ({', '.join(kept)}) are intact: resume with a lower learning rate, "
            f"e.g. --resume_from_checkpoint latest --learning_rate {learning_rate / 10:g}" if kept
            else "No checkpoint had been saved yet: start again with a lower --learning_rate, e.g. "
                 f"{learning_rate / 10:g}")
    return TrainingDiverged(f"training diverged at optimizer step {step} (epoch {epoch}): {what}; "
                            f"nothing was saved after step {saved_step}. {then}.")
