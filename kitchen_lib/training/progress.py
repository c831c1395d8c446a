"""What a training run shows while it runs: a progress bar against its time budget, or its steps.

A run with a time budget (`max_minutes`) stops when the budget is spent, long before its
epochs are done: a bar counting steps would show "0% 0/34400" and a 10-hour ETA for a
20-minute run, so such a bar counts the budget's seconds instead.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from kitchen_lib.training.config import TrainConfig


def progress_bar(preset_name: str, tc: TrainConfig, steps_done: int, steps_total: int, enabled: bool = True) -> tqdm:
    """The bar of a run: the budget in seconds if it has one, else its optimizer steps."""
    if tc.max_minutes:
        # A resumed run gets a fresh budget, so its bar starts at 0 too.
        return tqdm(total=max(1, round(60 * tc.max_minutes)), desc=f"train {preset_name} ({tc.max_minutes:g} min budget)",
                    unit="s", disable=not enabled)
    return tqdm(total=steps_total, initial=steps_done, desc=f"train {preset_name}", unit="step", disable=not enabled)


def advance(bar: tqdm, tc: TrainConfig, started: float, step: int, epoch: int, loss: float) -> None:
    """One optimizer step done: a budget bar moves to the whole seconds since `started` (at most
    its total), a step bar by one step."""
    if tc.max_minutes:
        bar.update(min(int(time.time() - started), bar.total) - bar.n)
        bar.set_postfix({"step": step, "epoch": epoch, "loss": f"{loss:.4f}"})
    else:
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
