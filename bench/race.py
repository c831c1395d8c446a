"""Race the standard recipe: diffusers' UNet2DModel + DDPMScheduler against our preset, the same pairs, the same minutes.

    pip install -e ".[race]"            # diffusers: for this benchmark only, never for the course
    python bench/race.py [--preset cpu-world|cpu] [--points 5 10 15 20] [--pairs 128] [--device auto]

One after the other on this machine (run nothing else meanwhile), from the preset's pairs cache:

(a) the standard recipe, as diffusers' training example (examples/unconditional_image_generation)
    sets it up: `UNet2DModel` shaped like our U-Net (same channels per level, res blocks, attention,
    time-embedding width, dropout, and for a world model the embedding's scale and shift of
    each res block's norm, `resnet_time_scale_shift="scale_shift"`, as ours; parameter count
    within 10% of ours, checked), epsilon
    prediction on `DDPMScheduler`'s linear betas with uniform timesteps, AdamW (lr 1e-4, betas
    0.95/0.999, weight decay 1e-6), 500 warm-up steps, gradients clipped at 1, EMA with warm-up
    (inv_gamma 1, power 3/4, max 0.9999), batch 16. The example's cosine decay runs over its 100
    epochs: within a CPU budget (a few epochs) it is the constant rate used here. Its inputs are
    ours: the current frame (and a world model's past frames) concatenated on the channels; a
    world model's action/joint vector, normalised as ours is, through diffusers'
    `TimestepEmbedding` MLP added to the time embedding (`class_embed_type="identity"`, the
    continuous-vector route `UNet2DModel` offers). Sampled with `DDIMScheduler` from pure noise:
    DDIM-50 (its default "leading" spacing), and few-step settings (--few_step: 2, 5 and 10 steps
    by default, with "trailing" spacing, which starts at t = 999 as few-step sampling needs), the
    best of which is reported.
(b) our preset, unchanged (its Trainer, its default sampler).

Each is scored at every --points minute of training time (scoring is not counted) on the same
--pairs test pairs spread over the test episodes: PSNR and moving-pixel PSNR over copying the
current frame, sharpness of the moving pixels, and seconds a frame (batch 1, at the last point).
Ours counts its whole Trainer wall time (validation and checkpoints included); the standard
recipe only its training steps: any bias favours the standard recipe.

Prints a table, writes bench/results/race-<preset>.json and race-<preset>.png (both curves on one
figure). About 2 x the last point of training, plus scoring (DDIM-50 on 128 pairs: a few minutes a point).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, machine, table, write_json  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kitchen_lib.base.device import pick_device  # noqa: E402
from kitchen_lib.base.example import to_device, to_tensors  # noqa: E402
from kitchen_lib.base.images import to_image  # noqa: E402
from kitchen_lib.base.paths import atomic_path, data_dir  # noqa: E402
from kitchen_lib.data.cache import PairsCache  # noqa: E402
from kitchen_lib.data.cache_builder import build_pairs  # noqa: E402
from kitchen_lib.data.examples import ExampleSet, gather  # noqa: E402
from kitchen_lib.inference.evaluate import evaluate  # noqa: E402
from kitchen_lib.inference.predictor import load_predictor  # noqa: E402
from kitchen_lib.model.samplers import SamplerConfig  # noqa: E402
from kitchen_lib.training.config import PRESETS, RunConfig, build_model, preset, with_overrides  # noqa: E402
from kitchen_lib.training.trainer import Trainer  # noqa: E402

# The standard recipe's optimisation: diffusers' examples/unconditional_image_generation defaults.
STANDARD = {"learning_rate": 1e-4, "adam_betas": (0.95, 0.999), "weight_decay": 1e-6, "adam_epsilon": 1e-8,
            "warmup_steps": 500, "batch_size": 16, "max_grad_norm": 1.0, "ema_inv_gamma": 1.0, "ema_power": 0.75,
            "ema_max_decay": 0.9999}
# (label, steps, timestep spacing): the reference sampler; the few-step candidates are --few_step's.
REFERENCE_SAMPLER = ("DDIM-50", 50, "leading")


def standard_samplers(few_step: list[int]) -> list[tuple[str, int, str]]:
    return [REFERENCE_SAMPLER] + [(f"DDIM-{n} trailing", n, "trailing") for n in few_step]


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        sys.exit('bench/race.py needs diffusers (a benchmark-only extra): pip install -e ".[race]"')
    return diffusers


class StandardNet(nn.Module):
    """UNet2DModel given our inputs: [x_t, current, context] on the channels, the vector (if any)
    through a TimestepEmbedding MLP added to the time embedding."""

    def __init__(self, rc: RunConfig, vector_stats: tuple[np.ndarray, np.ndarray] | None) -> None:
        super().__init__()
        from diffusers import UNet2DModel
        from diffusers.models.embeddings import TimestepEmbedding

        m, c = rc.model, rc.data.channels
        chans = tuple(m.base_channels * x for x in m.channel_mults)
        levels = range(len(chans))
        self.vector_dim = rc.conditioning.vector(rc.data.k).dim
        self.unet = UNet2DModel(
            sample_size=rc.data.size, in_channels=(2 + rc.conditioning.context_frames) * c, out_channels=c,
            block_out_channels=chans, layers_per_block=m.num_res_blocks,
            down_block_types=tuple("AttnDownBlock2D" if i in m.attention_levels else "DownBlock2D" for i in levels),
            up_block_types=tuple("AttnUpBlock2D" if i in m.attention_levels else "UpBlock2D" for i in reversed(levels)),
            norm_num_groups=m.groups, attention_head_dim=chans[-1] // m.heads, time_embedding_dim=m.time_mlp_dim,
            dropout=m.dropout, class_embed_type="identity" if self.vector_dim else None,
            # diffusers' own AdaGN, where ours has it (cpu-world): the embedding scales and shifts each res block's norm
            resnet_time_scale_shift="scale_shift" if m.adagn else "default")
        self.vector_embedding = TimestepEmbedding(self.vector_dim, m.time_mlp_dim) if self.vector_dim else None
        mean, std = vector_stats if vector_stats is not None else (np.zeros(self.vector_dim), np.ones(self.vector_dim))
        self.register_buffer("vector_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("vector_std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        frames = [x_t, inputs["current"]] + ([inputs["context"]] if "context" in inputs else [])
        emb = None
        if self.vector_embedding is not None:
            emb = self.vector_embedding((inputs["vector"] - self.vector_mean) / self.vector_std)
        return self.unet(torch.cat(frames, dim=1), t, class_labels=emb).sample


@dataclass
class StandardPredictor:
    """The standard recipe's EMA model behind the interface `evaluate` calls (Predictor's)."""

    net: StandardNet
    config: RunConfig  # the preset the race is run on: its data and conditioning
    device: torch.device
    train_config: dict  # the DDPMScheduler's config
    spacing: str = "leading"
    objective: str = "diffusion"

    @property
    def conditioning(self):
        return self.config.conditioning

    @property
    def vector(self):
        return self.conditioning.vector(self.config.data.k)

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig("ddim", 50)

    @property
    def model(self):
        return self  # evaluate asks predictor.model.network_calls(sampler)

    def network_calls(self, sampler: SamplerConfig) -> int:
        return sampler.steps

    def inputs(self, cache: PairsCache, rows: np.ndarray) -> dict[str, np.ndarray]:
        return gather(cache, rows, self.conditioning)

    @torch.no_grad()
    def predict(self, inputs: dict[str, np.ndarray], sampler: SamplerConfig | None = None, seed: int = 0,
                progress: bool = False, x0: bool = False) -> np.ndarray:
        """DDIM (eta 0) from pure noise with `sampler.steps` steps and this predictor's spacing."""
        from diffusers import DDIMScheduler

        steps = (sampler or self.sampler).steps
        sched = DDIMScheduler.from_config(self.train_config, timestep_spacing=self.spacing)
        sched.set_timesteps(steps)
        batch = to_tensors({k: np.asarray(v) for k, v in inputs.items() if k in ("current", "context", "vector")},
                           self.device)
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = torch.randn(batch["current"].shape, generator=g, device=self.device)
        for t in sched.timesteps:
            eps = self.net(x, t.to(self.device).expand(len(x)), batch)
            x = sched.step(eps, t, x).prev_sample
        return to_image(x.clamp(-1, 1))


def standard_loss(net: StandardNet, sched, batch: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """diffusers' example: uniform t, noise the target, MSE on epsilon."""
    future = batch["future"]
    noise = torch.randn(future.shape, generator=g, device=future.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(future),), generator=g, device=future.device)
    return nn.functional.mse_loss(net(sched.add_noise(future, noise, t), t, batch), noise)


def race_standard(rc: RunConfig, cache: PairsCache, points: list[float], score, device: torch.device, seed: int = 0,
                  lr: float | None = None, batch_size: int | None = None) -> list[dict]:
    """Train the standard recipe, scoring its EMA weights with `score(predictor)` at each point (minutes)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    train = ExampleSet(cache, cache.pairs("train"), rc.conditioning)
    stats = train.vector_stats() if rc.conditioning.vector(rc.data.k).dim else None
    net = StandardNet(rc, stats).to(device)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(net.parameters(), lr=lr or STANDARD["learning_rate"], betas=STANDARD["adam_betas"],
                            weight_decay=STANDARD["weight_decay"], eps=STANDARD["adam_epsilon"])
    lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=STANDARD["warmup_steps"])
    ema = EMAModel(net.parameters(), decay=STANDARD["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=STANDARD["ema_inv_gamma"], power=STANDARD["ema_power"])
    g = torch.Generator(device=device).manual_seed(seed)
    bs = batch_size or STANDARD["batch_size"]
    def batches():  # epoch after epoch, each in its own fixed-seed order: the position carries over points
        epoch = 0
        while True:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).numpy()
            for i in range(0, len(order) - bs + 1, bs):
                yield epoch, order[i:i + bs]
            epoch += 1

    rows, trained, steps, epoch = [], 0.0, 0, 0
    stream = batches()
    bar = tqdm(total=points[-1] * 60, desc="train the standard recipe", unit="s", bar_format="{l_bar}{bar}| {postfix}")
    for point in points:
        while trained < point * 60:
            t0 = time.perf_counter()
            epoch, items = next(stream)
            net.train()
            loss = standard_loss(net, sched, to_device(train[items], device), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), STANDARD["max_grad_norm"])
            opt.step()
            lr_sched.step()
            ema.step(net.parameters())
            steps += 1
            dt = time.perf_counter() - t0
            trained += dt
            bar.update(min(dt, max(0.0, bar.total - bar.n)))
            bar.set_postfix(step=steps, loss=f"{loss.item():.4f}")
        scored = copy.deepcopy(net).eval()
        ema.copy_to(scored.parameters())
        rows.append({"minutes": trained / 60, "steps": steps, "epochs": epoch} | score(scored, sched.config))
    bar.close()
    return rows


def race_ours(rc: RunConfig, run_dir: Path, points: list[float], score) -> list[dict]:
    """Train our preset in segments ending at each point (the Trainer resumes exactly), scoring after each."""
    rows, trained = [], 0.0
    for p in points:
        r = Trainer(with_overrides(rc, train={"checkpoint_dir": str(run_dir), "max_minutes": p - trained}),
                    resume="latest" if trained else None).fit()
        trained += r.seconds / 60
        rows.append({"minutes": trained, "steps": r.optimizer_steps} | score(load_predictor(run_dir / "latest.pt")))
        if not r.stopped_early:
            break  # the preset's epochs ran out first
    return rows


def scores(ev: dict, method: str = "diffusion") -> dict:
    m, c = ev["methods"][method], ev["methods"]["copy"]
    return {"psnr": m["psnr"], "psnr_moving": m["psnr_moving"], "sharpness_moving": m["sharpness_moving"],
            "gain": m["psnr"] - c["psnr"], "gain_moving": m["psnr_moving"] - c["psnr_moving"],
            "copy_psnr": c["psnr"], "copy_psnr_moving": c["psnr_moving"], "seconds_per_frame_batched": m["seconds_per_frame"]}


def seconds_per_frame(predictor, inputs: dict[str, np.ndarray], sampler: SamplerConfig) -> float:
    """One frame (batch of one), best of 3 after a warm-up."""
    one = {k: v[:1] for k, v in inputs.items()}
    predictor.predict(one, sampler)
    best = math.inf
    for i in range(3):
        t0 = time.perf_counter()
        predictor.predict(one, sampler, seed=i)
        best = min(best, time.perf_counter() - t0)
    return best


def plot(res: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for ax, key, title in zip(axes, ("gain", "gain_moving"), ("full frame", "moving pixels"), strict=True):
        ours = res["ours"]
        ax.plot([r["minutes"] for r in ours], [r[key] for r in ours], "o-", color="C0",
                label=f"ours ({res['preset']}, {res['ours_sampler']})")
        std = res["standard"]
        ax.plot([r["minutes"] for r in std], [r["samplers"]["DDIM-50"][key] for r in std], "s-", color="C1",
                label="diffusers standard, DDIM-50")
        ax.plot([r["minutes"] for r in std], [r["samplers"][r["best_few_step"]][key] for r in std], "s--", color="C1",
                alpha=0.6, label="diffusers standard, best few-step")
        ax.axhline(0, color="gray", ls=":", label="copy the current frame")
        ax.set(title=title, xlabel="training minutes (same machine, one at a time)", ylabel="PSNR over copy (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Race on {res['pairs']} test pairs, {res['preset']}: our recipe against diffusers' standard recipe",
                 fontsize=10)
    fig.tight_layout()
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-world", choices=sorted(PRESETS))
    ap.add_argument("--points", type=float, nargs="+", default=[5, 10, 15, 20], help="training minutes at which to score")
    ap.add_argument("--pairs", type=int, default=128, help="test pairs scored (the same for both)")
    ap.add_argument("--few_step", type=int, nargs="+", default=[2, 5, 10],
                    help="the standard recipe's few-step DDIM candidates (trailing spacing); each costs its steps at every point")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--std_lr", type=float, default=None, help="the standard recipe's learning rate (default 1e-4)")
    ap.add_argument("--std_batch", type=int, default=None, help="the standard recipe's batch size (default 16)")
    ap.add_argument("--run_dir", default=None, help="our run's checkpoints (default data/checkpoints/bench-race-...)")
    ap.add_argument("--out", default=None, help="JSON name under bench/results (default race-<preset>.json)")
    a = ap.parse_args()
    require_diffusers()
    points = sorted(set(a.points))
    device = pick_device(a.device)
    rc = with_overrides(preset(a.preset), train={"device": a.device})
    cache = build_pairs(rc.data)
    rows = cache.select("test", a.pairs)
    ours_params = sum(p.numel() for p in build_model(rc).net.parameters())
    probe = StandardNet(rc, None)
    std_params = sum(p.numel() for p in probe.parameters())
    if abs(std_params / ours_params - 1) > 0.10:
        sys.exit(f"the standard U-Net has {std_params:,} parameters against our {ours_params:,}: more than 10% apart")
    out = a.out or f"race-{a.preset}.json"
    run_dir = Path(a.run_dir or data_dir() / "checkpoints" / f"bench-race-{a.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    res = {"machine": machine(), "preset": a.preset, "config": rc.to_dict(), "pairs": int(len(rows)), "points": points,
           "parameters": {"ours": ours_params, "standard": std_params}, "standard_recipe": STANDARD
           | {"learning_rate": a.std_lr or STANDARD["learning_rate"], "batch_size": a.std_batch or STANDARD["batch_size"],
              "samplers": standard_samplers(a.few_step)},
           "ours_sampler": rc.sampler.label(rc.diffusion.timesteps), "run_dir": str(run_dir), "complete": False}
    print(f"{a.preset}: ours {ours_params:,} parameters, the standard UNet2DModel {std_params:,}; "
          f"{len(rows)} test pairs; points {points} minutes", flush=True)

    def score_standard(net: StandardNet, train_config: dict) -> dict:
        out = {"samplers": {}}
        for label, steps, spacing in standard_samplers(a.few_step):
            p = StandardPredictor(net, rc, device, dict(train_config), spacing)
            ev = evaluate(p, cache, "test", SamplerConfig("ddim", steps), max_pairs=a.pairs, progress=False,
                          mean_of=0, x0=False, shuffled=False)
            out["samplers"][label] = scores(ev) | {"steps": steps, "spacing": spacing}
        few = {k: v for k, v in out["samplers"].items() if v["steps"] <= 10}
        out["best_few_step"] = max(few, key=lambda k: few[k]["psnr_moving"])
        s = out["samplers"]
        print(f"  standard: DDIM-50 {s['DDIM-50']['gain']:+.2f} / {s['DDIM-50']['gain_moving']:+.2f} dB over copy; "
              f"best few-step {out['best_few_step']} {s[out['best_few_step']]['gain']:+.2f} / "
              f"{s[out['best_few_step']]['gain_moving']:+.2f}", flush=True)
        out["_predictor"] = StandardPredictor(net, rc, device, dict(train_config))
        return out

    def score_ours(pred) -> dict:
        out = scores(evaluate(pred, cache, "test", None, max_pairs=a.pairs, progress=False, mean_of=0, x0=False,
                              shuffled=False))
        print(f"  ours: {out['gain']:+.2f} / {out['gain_moving']:+.2f} dB over copy", flush=True)
        return out | {"_predictor": pred}

    # The standard recipe first, then ours: one at a time, nothing else running.
    t0 = time.time()
    res["standard"] = race_standard(rc, cache, points, score_standard, device, lr=a.std_lr, batch_size=a.std_batch)
    res["ours"] = race_ours(rc, run_dir, points, score_ours)
    res["wall_minutes"] = (time.time() - t0) / 60

    # Seconds a frame at batch 1, last point: ours with its default sampler, the standard recipe with DDIM-50 and its best few-step.
    inputs = gather(cache, rows[:1], rc.conditioning)
    last_std, last_ours = res["standard"][-1], res["ours"][-1]
    std_pred = last_std.pop("_predictor")
    for label, steps, spacing in standard_samplers(a.few_step):
        if label in ("DDIM-50", last_std["best_few_step"]):
            std_pred.spacing = spacing
            last_std["samplers"][label]["seconds_per_frame"] = seconds_per_frame(std_pred, inputs, SamplerConfig("ddim", steps))
    last_ours["seconds_per_frame"] = seconds_per_frame(last_ours.pop("_predictor"), inputs, rc.sampler)
    for r in res["standard"] + res["ours"]:
        r.pop("_predictor", None)
    res["margin_moving_db"] = [{"minutes": p, "vs_ddim50": o["gain_moving"] - s["samplers"]["DDIM-50"]["gain_moving"],
                                "vs_best_few_step": o["gain_moving"] - s["samplers"][s["best_few_step"]]["gain_moving"]}
                               for p, o, s in zip(points, res["ours"], res["standard"], strict=False)]
    d50 = last_std["samplers"]["DDIM-50"]
    res["speedup_vs_ddim50"] = d50["seconds_per_frame"] / last_ours["seconds_per_frame"]
    res["targets"] = {"moving_2db_every_point": all(m["vs_ddim50"] >= 2 and m["vs_best_few_step"] >= 2
                                                    for m in res["margin_moving_db"]),
                      "10x_faster_at_equal_or_better_psnr": res["speedup_vs_ddim50"] >= 10 and last_ours["psnr"] >= d50["psnr"]}
    res["complete"] = True
    path = write_json(out, res)
    with atomic_path(RESULTS / Path(out).with_suffix(".png").name) as tmp:
        plot(res).savefig(tmp, dpi=100, bbox_inches="tight")

    print(f"\nRace, {a.preset}, {res['pairs']} test pairs (dB over copying the current frame, full / moving):")
    lines = []
    for o, s in zip(res["ours"], res["standard"], strict=False):
        b = s["samplers"][s["best_few_step"]]
        lines.append({"minutes": f"{o['minutes']:.1f}", "ours_steps": o["steps"], "ours": f"{o['gain']:+.2f} / {o['gain_moving']:+.2f}",
                      "std_steps": s["steps"],
                      "std_ddim50": f"{s['samplers']['DDIM-50']['gain']:+.2f} / {s['samplers']['DDIM-50']['gain_moving']:+.2f}",
                      "std_best_few": f"{s['best_few_step']}: {b['gain']:+.2f} / {b['gain_moving']:+.2f}",
                      "sharp_ours_std50": f"{o['sharpness_moving']:.2f} / {s['samplers']['DDIM-50']['sharpness_moving']:.2f}"})
    print(table(lines, ["minutes", "ours_steps", "ours", "std_steps", "std_ddim50", "std_best_few", "sharp_ours_std50"]))
    print(f"seconds a frame (batch 1): ours {last_ours['seconds_per_frame']:.3f}, standard DDIM-50 "
          f"{d50['seconds_per_frame']:.3f} ({res['speedup_vs_ddim50']:.0f}x)")
    print("targets:", res["targets"], f"\nwrote {path}")


if __name__ == "__main__":
    main()
