"""Training throughput against a peer U-Net, and sampling time per sampler, on this machine.

    python bench/speed.py [--presets cpu seed] [--skip_ddpm] [--try_bf16] [--try_compile]
    python bench/speed.py --device cuda [--batch N]     # on a GPU: every variant below, always

- Training: samples/s of one AdamW step (forward, backward, clip, step) of
  each preset's U-Net on random frames of its size and batch, best of 3 timed runs. Ours runs
  as the Trainer runs it (channels-last weights). The peer is diffusers' UNet2DModel with the
  same channels, blocks, attention, time-embedding width and dropout, timed in the same run in
  its default layout and channels-last (diffusers is installed for this benchmark only:
  `pip install diffusers`; without it those rows say so). Also timed: ours in the default
  layout, and with --try_bf16 / --try_compile, bf16 autocast and torch.compile. On CUDA every
  variant runs: fp32, AMP fp16 (with a GradScaler, as the Trainer), bf16 autocast, the default
  layout, torch.compile; `--batch` times another batch than the preset's (a GPU wants more).
- Sampling (target 2's speed half): seconds per predicted frame, batch of one, 64x64, for
  DDPM-1000 and DDIM with 50, 20, 10 and 5 steps, with the `cpu` preset's network and
  diffusion settings. Untrained weights: the time does not depend on them.
Prints a table and writes bench/results/speed.json (speed-cuda.json on a GPU), rewritten after every
figure (`"complete": false` until the end), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

from kitchen_lib.model.diffusion import Diffusion  # noqa: E402
from kitchen_lib.model.samplers import SamplerConfig  # noqa: E402
from kitchen_lib.model.unet import ConditionalUNet, channels_last, count_parameters  # noqa: E402
from kitchen_lib.training.config import preset  # noqa: E402

SAMPLERS = [SamplerConfig("ddpm"), SamplerConfig("ddim", 50), SamplerConfig("ddim", 20), SamplerConfig("ddim", 10),
            SamplerConfig("ddim", 5)]


def train_throughput(model: torch.nn.Module, batch: int, channels: int, size: int, steps: int = 3, call=None,
                     precision: str = "fp32", device: str = "cpu") -> float:
    """Samples per second of full training steps (best of 3 runs of `steps` steps); precision
    "bf16" or "fp16" runs the step under autocast (fp16 with a GradScaler, as the Trainer does)."""
    d = Diffusion(preset("cpu").diffusion)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0, current = (torch.randn(batch, channels, size, size, device=device) for _ in range(2))
    inputs = {"current": current}
    call = call if call is not None else model
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def one():
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = d.training_loss(call, inputs, x0)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(1 if device == "cpu" else 5):  # warm-up (and compilation, for torch.compile)
        one()
    best = float("inf")
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        sync()
        best = min(best, time.perf_counter() - t0)
    return batch * steps / best


def diffusers_peer(rc, last: bool):
    """diffusers' UNet2DModel shaped like our U-Net, or None if diffusers is not installed."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    cfg, size, channels = rc.model, rc.data.size, rc.data.channels
    chans = tuple(cfg.base_channels * m for m in cfg.channel_mults)
    levels = range(len(chans))
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(levels))
    net = UNet2DModel(sample_size=size, in_channels=2 * channels, out_channels=channels,
                      block_out_channels=chans, layers_per_block=cfg.num_res_blocks, down_block_types=down,
                      up_block_types=up, norm_num_groups=cfg.groups, attention_head_dim=chans[-1] // cfg.heads,
                      time_embedding_dim=cfg.time_mlp_dim, dropout=cfg.dropout)
    if last:
        net = channels_last(net)
    fmt = torch.channels_last if last else torch.contiguous_format
    return net, (lambda xt, t, inputs: net(torch.cat([xt, inputs["current"]], 1).contiguous(memory_format=fmt), t).sample)


def unet(rc) -> ConditionalUNet:
    return ConditionalUNet(rc.model, rc.data.size, rc.data.channels, context_frames=0, vector_dim=0)


def contenders(rc, bf16: bool, compile_: bool, fp16: bool = False) -> list[tuple]:
    """(key, label, make() -> (net, call), precision) for everything timed beside ours."""
    out = [("ours_default_layout", "  ours, default layout", lambda: (unet(rc), None), "fp32")]
    if fp16:
        out.append(("ours_fp16", "  ours, AMP fp16", lambda: (channels_last(unet(rc)), None), "fp16"))
    if bf16:
        out.append(("ours_bf16", "  ours, bf16 autocast", lambda: (channels_last(unet(rc)), None), "bf16"))
    if diffusers_peer(rc, False) is not None:
        for last in (False, True):
            out.append((f"diffusers{'_channels_last' if last else ''}",
                        f"  diffusers UNet2DModel, same shape{', channels-last' if last else ''}",
                        lambda last=last: diffusers_peer(rc, last), "fp32"))
        if fp16:
            out.append(("diffusers_fp16", "  diffusers UNet2DModel, same shape, AMP fp16",
                        lambda: diffusers_peer(rc, False), "fp16"))
    if compile_:  # last: its compilation takes the longest
        def compiled():
            net = channels_last(unet(rc))
            return net, torch.compile(net)
        out.append(("ours_compiled", "  ours, torch.compile", compiled, "fp32"))
    return out


def sampling_time(sampler: SamplerConfig, device: str = "cpu") -> float:
    rc = preset("cpu")
    net = channels_last(unet(rc)).eval().to(device)
    d = Diffusion(rc.diffusion)
    inputs = {"current": torch.zeros(1, rc.data.channels, rc.data.size, rc.data.size, device=device)}
    g = torch.Generator(device=device).manual_seed(0)
    SamplerConfig("ddim", 3).build()(d, net, inputs, generator=g)  # warm-up
    best = float("inf")
    for _ in range(1 if sampler.name == "ddpm" else 3):
        t0 = time.perf_counter()
        sampler.build()(d, net, inputs, generator=g)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu", "seed"])
    ap.add_argument("--skip_ddpm", action="store_true", help="skip the 1000-step sample (the slow one)")
    ap.add_argument("--try_bf16", action="store_true", help="also time ours under bf16 autocast")
    ap.add_argument("--try_compile", action="store_true", help="also time ours under torch.compile")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: time every variant on the GPU")
    ap.add_argument("--batch", type=int, help="batch per step instead of each preset's")
    ap.add_argument("--skip_compile", action="store_true", help="on CUDA: leave torch.compile out (its compilation is slow)")
    ap.add_argument("--out", help="results file name under bench/results (default speed.json, speed-cuda.json on a GPU)")
    a = ap.parse_args()
    torch.manual_seed(0)
    gpu = a.device == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True  # what a long GPU run would use
    rows, res = [], {"machine": machine(), "complete": False, "train": {}, "sampling": {}}
    out = a.out or ("speed-cuda.json" if gpu else "speed.json")

    def save() -> Path:  # after every figure: a run cut short keeps what it measured
        return write_json(out, res)

    if gpu:
        res["machine"]["gpu"] = torch.cuda.get_device_name()
    for name in a.presets:
        rc = preset(name)
        size, batch = rc.data.size, a.batch or rc.train.batch_size
        shape = (batch, rc.data.channels, size)
        r = res["train"][name] = {"size": size, "batch": batch}
        ours = channels_last(unet(rc))
        r["parameters"] = count_parameters(ours)
        steps = 20 if gpu else 3 if size <= 64 else 2  # a 128px step takes seconds on a CPU
        r["ours"] = train_throughput(ours, *shape, steps=steps, device=a.device)
        save()
        print(f"{name}: ours: {r['ours']:.1f} samples/s", flush=True)
        rows.append({"what": f"train {name} ({size}px, batch {batch}): ours", "params": f"{r['parameters']:,}",
                     "samples_per_s": round(r["ours"], 1)})
        variants = contenders(rc, a.try_bf16 or gpu, (gpu and not a.skip_compile) or (a.try_compile and name == "cpu"),
                              fp16=gpu)
        if not any(k.startswith("diffusers") for k, *_ in variants):
            rows.append({"what": "  diffusers UNet2DModel", "samples_per_s": "diffusers not installed"})
        for key, label, make, precision in variants:
            net, call = make()
            try:
                sps = train_throughput(net, *shape, steps=steps, call=call, precision=precision, device=a.device)
            except Exception as e:  # torch.compile needs a working C++ toolchain, for one
                r[key] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                rows.append({"what": label, "samples_per_s": r[key][:60]})
                continue
            r[key] = sps
            save()
            print(f"{name}: {label.strip()}: {sps:.1f} samples/s", flush=True)  # as it goes: a GPU run may be cut short
            rows.append({"what": label, "params": f"{count_parameters(net):,}", "samples_per_s": round(sps, 1),
                         "ours_over_this": round(r["ours"] / sps, 2)})
    timesteps = preset("cpu").diffusion.timesteps
    for sampler in SAMPLERS:
        if a.skip_ddpm and sampler.name == "ddpm":
            continue
        s = sampling_time(sampler, a.device)
        label = sampler.label(timesteps).lower()
        res["sampling"][label] = {"seconds_per_frame": s, "network_passes": sampler.calls(timesteps)}
        save()
    ddpm = res["sampling"].get("ddpm-1000", {}).get("seconds_per_frame")
    for label, s in res["sampling"].items():
        if ddpm:
            s["speedup_vs_ddpm"] = ddpm / s["seconds_per_frame"]
        rows.append({"what": f"sample {label}, 64px, batch 1, {a.device}", "s_per_frame": round(s["seconds_per_frame"], 3),
                     "x_vs_ddpm": round(s["speedup_vs_ddpm"], 1) if ddpm else ""})
    print(table(rows, ["what", "params", "samples_per_s", "ours_over_this", "s_per_frame", "x_vs_ddpm"]))
    res["complete"] = True
    print("wrote", save())


if __name__ == "__main__":
    main()
