"""How long a dream stays better than holding the start frame still: rollouts on recorded actions.

    python bench/horizons.py [--checkpoints A.pt B.pt ...] [--dataset ID] [--starts 4]
                             [--horizon expert=40 explore=20] [--splits val test] [--tag NAME]

Each model dreams from evenly spread starts in every held-out episode (the val and test splits:
neither is trained on) of each dataset of the cache, driven by the episode's recorded actions and
fed its own predictions (kitchen_lib.inference.rollout), for the dataset's horizon in jumps of k
env steps: 40 for the expert's episodes, 20 for exploration's by default. At every step its PSNR
against the truth is set beside holding the start frame still. Per model and dataset: the mean
PSNR per step of both, the worst step's margin (model minus hold, of the means), the step where
the mean first falls to hold (none: never within the horizon) and the share of single rollouts
that beat hold at every step. Several checkpoints (e.g. trained with and without --context_noise)
are scored on the same starts with the same seeds. Prints a table, writes
bench/results/horizons[-TAG].json and a figure beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_json  # noqa: E402

from kitchen_lib.base.errors import UserError  # noqa: E402
from kitchen_lib.base.paths import atomic_path, data_dir  # noqa: E402
from kitchen_lib.data.policies import recorded_policy  # noqa: E402
from kitchen_lib.inference.predictor import load_predictor, pairs_for  # noqa: E402
from kitchen_lib.inference.rollout import mean_rollouts  # noqa: E402
from kitchen_lib.training.runs import default_run_dir  # noqa: E402

COLUMNS = ["model", "dataset", "rollouts", "horizon", "psnr_first", "psnr_last", "hold_last", "worst_margin",
           "falls_to_hold_at", "share_beating_hold"]


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), dpi=100, squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for name, per in results.items():
            s = per[ds]
            ax.plot(range(1, s["horizon"] + 1), s["psnr"], label=f"dream: {name}")
        ax.plot(range(1, s["horizon"] + 1), s["hold_psnr"], "k--", label="hold the start frame")
        ax.set_title(f"{ds.split('/')[-1]} ({s['rollouts']} rollouts)")
        ax.set_xlabel("rollout step (k env steps each)")
        ax.set_ylabel("PSNR against the truth (dB)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = default_run_dir("cpu-drive", "diffusion", data_dir()) / "latest.pt"
    ap.add_argument("--checkpoints", nargs="+", default=[str(default)], help=f"default: the cpu-drive run's, {default}")
    ap.add_argument("--dataset", default=None, help="the episodes to dream (default: the first model's datasets)")
    ap.add_argument("--starts", type=int, default=4, help="starts per held-out episode")
    ap.add_argument("--horizon", nargs="+", default=["expert=40", "explore=20"],
                    help="rollout steps per policy of a dataset (policy=steps; a dataset of no listed policy: the first)")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], choices=["train", "val", "test"])
    ap.add_argument("--names", nargs="+", default=None, help="a label per checkpoint (default: its folder's name)")
    ap.add_argument("--tag", default=None, help="writes horizons-TAG.json")
    a = ap.parse_args()
    try:
        horizons = {p: int(n) for p, n in (h.split("=") for h in a.horizon)}
        names = a.names or [Path(c).resolve().parent.name for c in a.checkpoints]
        if len(names) != len(a.checkpoints) or len(set(names)) != len(names):
            raise UserError(f"--names needs one distinct label per checkpoint ({len(a.checkpoints)})")
        preds = {name: load_predictor(c) for name, c in zip(names, a.checkpoints, strict=True)}
        first = next(iter(preds.values()))
        cache = pairs_for(first, a.dataset or first.config.data.dataset)
        results: dict[str, dict] = {name: {} for name in preds}
        for ds in cache.datasets:
            n = horizons.get(recorded_policy(ds), next(iter(horizons.values())))
            for name, p in preds.items():  # the same starts and seeds for every model
                results[name][ds] = mean_rollouts(p, cache, a.splits, a.starts, n, dataset=ds)
    except (UserError, ValueError) as e:
        sys.exit(f"error: {e}")
    rows = [{"model": name, "dataset": ds.split("/")[-1], "rollouts": s["rollouts"], "horizon": s["horizon"],
             "psnr_first": round(s["psnr"][0], 2), "psnr_last": round(s["psnr"][-1], 2),
             "hold_last": round(s["hold_psnr"][-1], 2), "worst_margin": round(s["worst_margin"], 2),
             "falls_to_hold_at": s["falls_to_hold_at"] or "never", "share_beating_hold": f"{s['share_beating_hold']:.0%}"}
            for name, per in results.items() for ds, s in per.items()]
    print(f"\nrollouts on recorded actions from {a.starts} starts in each {'/'.join(a.splits)} episode; "
          "PSNR in dB against the truth, margin: dream minus holding the start frame (means per step)")
    print(table(rows, COLUMNS))
    name = f"horizons-{a.tag}" if a.tag else "horizons"
    res = {"machine": machine(), "checkpoints": a.checkpoints, "cache": str(cache.path), "splits": a.splits,
           "starts_per_episode": a.starts, "models": results}
    print("wrote", write_json(f"{name}.json", res), "and", plot(results, RESULTS / f"{name}.png"))


if __name__ == "__main__":
    main()
