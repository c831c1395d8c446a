"""What a training run records: `metrics.jsonl` in its run folder, and TensorBoard events.

metrics.jsonl holds one JSON object per line: {"step", "epoch", "loss", "lr", "grad_norm"}
after every optimizer step, {"step", "epoch", "val_loss"} after every epoch. A resumed run
first cuts the file back to the step it resumes from, so the file always reads as one run.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from kitchen_lib.base.example import inputs_of
from kitchen_lib.base.paths import atomic_path

METRICS_FILE = "metrics.jsonl"


@dataclass
class Metrics:
    """A run's log, read back: per-step training rows and per-epoch validation rows."""

    train: list[dict]
    val: list[dict]

    def column(self, key: str) -> list:
        return [r[key] for r in (self.val if key == "val_loss" else self.train)]


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return rows


def read_metrics(run_dir: str | Path) -> Metrics:
    """Read a run folder's metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}: is it a training run's folder?")
    rows = _rows(path)
    return Metrics(train=[r for r in rows if "loss" in r], val=[r for r in rows if "val_loss" in r])


def append_metrics(run_dir: Path, **row) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the rows up to optimizer step `step` (and drop a line cut short by a kill)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [json.dumps(r) for r in _rows(path) if r.get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def add_graph(writer, net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Trace the network once for TensorBoard's graph tab, on a batch of one example (on the net's device)."""
    inputs = inputs_of(batch)
    x_t, t = torch.zeros_like(inputs["current"]), torch.zeros(1, dtype=torch.long, device=inputs["current"].device)
    was_training = net.training
    net.eval()
    with warnings.catch_warnings():  # tracing warns about the input-shape check; harmless
        warnings.simplefilter("ignore")
        writer.add_graph(net, (x_t, t, inputs))
    net.train(was_training)


def add_hparams(writer, config: dict, final_val_loss: float, best_val_loss: float, extra: dict | None = None) -> None:
    """The run's config, flattened (with `extra`, e.g. the global batch), beside its final and best validation loss."""
    flat = {f"{part}.{k}": v for part, fields in config.items() if isinstance(fields, dict) for k, v in fields.items()}
    flat |= extra or {}
    flat = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in flat.items()}
    writer.add_hparams(flat, {"hparam/final_val_loss": final_val_loss, "hparam/best_val_loss": best_val_loss}, run_name=".")
