"""Training throughput and sampling time on this machine.

    python bench/speed.py [--presets seed cpu] [--skip_ddpm]

- Training: samples/s of one AdamW step (forward, backward, clip, step) of each preset's U-Net
  on random frames of its size, batch = the preset's; best of 3 timed runs of a few steps.
  If `diffusers` is installed, its UNet2DModel with matching channels, blocks and attention
  is timed in the same run (issue 5's comparison); otherwise that row says so.
- Sampling: seconds per predicted frame (batch of one) for DDPM-1000, DDIM-50 and DDIM-10 with
  the `cpu` preset's network (64x64). Untrained weights: the time does not depend on them.
Prints a table and writes bench/results/speed.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.diffusion import Diffusion  # noqa: E402
from kitchen_lib.train import RUN_PRESETS  # noqa: E402
from kitchen_lib.unet import ConditionalUNet, count_parameters  # noqa: E402


def train_throughput(model: torch.nn.Module, batch: int, channels: int, size: int, steps: int = 3, call=None) -> float:
    """Samples per second of full training steps (best of 3 runs of `steps` steps)."""
    d = Diffusion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0, cond = torch.randn(batch, channels, size, size), torch.randn(batch, channels, size, size)
    call = call or (lambda xt, t, c: model(xt, t, c))

    def one():
        loss = d.training_loss(call, x0, cond)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    one()  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        best = min(best, time.perf_counter() - t0)
    return batch * steps / best


def diffusers_peer(cfg):
    """diffusers' UNet2DModel shaped like our U-Net, or None if diffusers is not installed."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    chans = tuple(cfg.base_channels * m for m in cfg.channel_mults)
    res = cfg.resolutions()
    down = tuple("AttnDownBlock2D" if r in cfg.attention_resolutions else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r in cfg.attention_resolutions else "UpBlock2D" for r in reversed(res))
    net = UNet2DModel(sample_size=cfg.image_size, in_channels=2 * cfg.image_channels, out_channels=cfg.image_channels,
                      block_out_channels=chans, layers_per_block=cfg.num_res_blocks, down_block_types=down,
                      up_block_types=up, norm_num_groups=cfg.groups, attention_head_dim=chans[0] // cfg.heads)
    return net, (lambda xt, t, c: net(torch.cat([xt, c], 1), t).sample)


def sampling_time(sampler: str, steps: int | None) -> float:
    cfg = RUN_PRESETS["cpu"].model
    net = ConditionalUNet(cfg).eval()
    d = Diffusion()
    cond = torch.zeros(1, cfg.image_channels, cfg.image_size, cfg.image_size)
    g = torch.Generator().manual_seed(0)
    d.sample(net, cond, "ddim", 2, generator=g)  # warm-up
    t0 = time.perf_counter()
    d.sample(net, cond, sampler, steps, generator=g)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["seed", "cpu"])
    ap.add_argument("--skip_ddpm", action="store_true", help="skip the 1000-step sample (the slow one)")
    a = ap.parse_args()
    torch.manual_seed(0)
    rows, res = [], {"machine": machine(), "train": {}, "sampling": {}}
    for name in a.presets:
        rc = RUN_PRESETS[name]
        cfg, batch = rc.model, rc.train.batch_size
        net = ConditionalUNet(cfg)
        sps = train_throughput(net, batch, cfg.image_channels, cfg.image_size)
        res["train"][name] = {"size": cfg.image_size, "batch": batch, "parameters": count_parameters(net), "samples_per_s": sps}
        rows.append({"what": f"train {name} ({cfg.image_size}px, batch {batch})", "params": f"{count_parameters(net):,}",
                     "samples_per_s": round(sps, 1)})
        peer = diffusers_peer(cfg)
        if peer is None:
            rows.append({"what": "  diffusers UNet2DModel, same shape", "samples_per_s": "diffusers not installed"})
        else:
            pnet, call = peer
            psps = train_throughput(pnet, batch, cfg.image_channels, cfg.image_size, call=call)
            res["train"][name]["diffusers_samples_per_s"] = psps
            rows.append({"what": "  diffusers UNet2DModel, same shape", "params": f"{count_parameters(pnet):,}",
                         "samples_per_s": round(psps, 1), "ours_over_peer": round(sps / psps, 2)})
    for sampler, steps in ([] if a.skip_ddpm else [("ddpm", None)]) + [("ddim", 50), ("ddim", 10)]:
        s = sampling_time(sampler, steps)
        label = f"{sampler}-{steps or 1000}"
        res["sampling"][label] = {"seconds_per_frame": s, "network_passes": steps or 1000}
        rows.append({"what": f"sample {label}, 64px, batch 1", "s_per_frame": round(s, 3)})
    if "ddpm-1000" in res["sampling"]:
        for k in ("ddim-50", "ddim-10"):
            res["sampling"][k]["speedup_vs_ddpm"] = res["sampling"]["ddpm-1000"]["seconds_per_frame"] / res["sampling"][k]["seconds_per_frame"]
    print(table(rows, ["what", "params", "samples_per_s", "ours_over_peer", "s_per_frame"]))
    print("wrote", write_json("speed.json", res))


if __name__ == "__main__":
    main()
