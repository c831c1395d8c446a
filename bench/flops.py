"""How close to the machine: the training step's arithmetic rate against this CPU's fp32 peak.

    python bench/flops.py [--presets cpu cpu-world] [--steps 8] [--bf16]

For each preset: the FLOPs of one training step per sample (forward and backward of the
network, counted by torch.utils.flop_counter.FlopCounterMode: convolutions, matmuls and
attention; norms, activations and the optimizer are not counted), times the samples a second of
that step timed here (loss, backward, gradient clip, AdamW, on tensors shaped like the preset's
batch: the same arithmetic as the Trainer's step, without its data loading), and, for the whole
Trainer, times the samples a second it reached in bench/results/quickstart.json.

The peak is cores x clock x FLOPs a cycle: 2 FMA units x 8 fp32 lanes (AVX2, 256 bits) x 2 for
an x86 core with FMA and AVX2, 2 x 16 x 2 with AVX-512 (Intel server cores), at the clock
/proc/cpuinfo reports (the base clock; turbo can run higher, so the fraction is an upper bound).

--bf16 also times each step under bf16 autocast (TrainConfig.cpu_bf16), against the bf16 peak of
the CPU's matrix units where it has them (AMX: a 16 x 16 x 32 tile product of 8,192 FMAs every 16
cycles, 1,024 FLOPs a cycle a core; else AVX512-BF16: 2 units x 32 bf16 lanes x 2 a cycle).

Prints a table and writes bench/results/flops.json. About a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS, machine, table, write_json  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from kitchen_lib.base.device import cpu_has_native_bf16  # noqa: E402
from kitchen_lib.model.unet import channels_last  # noqa: E402
from kitchen_lib.training.config import PRESETS, build_model, preset  # noqa: E402


def cpu_peak() -> dict:
    """fp32 FLOPs a second at the reported clock: cores x GHz x FLOPs a cycle."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    if "avx512f" in flags:
        per_cycle, isa = 2 * 16 * 2, "AVX-512 FMA"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 2 * 8 * 2, "AVX2 FMA"
    else:
        per_cycle, isa = 4 * 2, "SSE"  # no FMA: a mul and an add of 4 lanes a cycle
    cores = torch.get_num_threads()
    ghz = (max(mhz) if mhz else 0.0) / 1000
    bf16 = 16 * 16 * 32 * 2 // 16 if "amx_bf16" in flags else 2 * 32 * 2 if "avx512_bf16" in flags else None
    return {"cpu": model, "isa": isa, "flops_per_cycle_per_core": per_cycle, "cores": cores, "ghz": ghz,
            "peak_gflops": cores * ghz * per_cycle,
            "bf16_isa": "AMX" if "amx_bf16" in flags else "AVX512-BF16" if bf16 else None,
            "bf16_peak_gflops": cores * ghz * bf16 if bf16 else None}


def fake_batch(rc) -> dict[str, torch.Tensor]:
    """Random tensors shaped like one of the preset's training batches."""
    b, s, c = rc.train.batch_size, rc.data.size, rc.data.channels
    batch = {"current": torch.rand(b, c, s, s) * 2 - 1, "future": torch.rand(b, c, s, s) * 2 - 1}
    if rc.conditioning.context_frames:
        batch["context"] = torch.rand(b, rc.conditioning.context_frames * c, s, s) * 2 - 1
    dim = rc.conditioning.vector(rc.data.k).dim
    if dim:
        batch["vector"] = torch.randn(b, dim)
    return batch


def measure(name: str, steps: int, bf16: bool = False) -> dict:
    rc = preset(name)
    torch.manual_seed(0)
    model = build_model(rc)
    model.net = channels_last(model.net)  # as the Trainer runs it
    model.train()
    opt = torch.optim.AdamW(model.net.parameters(), lr=rc.train.learning_rate)
    batch = fake_batch(rc)
    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(batch).backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), rc.train.grad_clip)
        opt.step()

    for _ in range(2):
        step()  # warm-up: allocator, oneDNN's kernels
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    b = rc.train.batch_size
    return {"preset": name + (" (bf16)" if bf16 else ""), "bf16": bf16, "batch": b, "parameters": sum(p.numel() for p in model.net.parameters()),
            "gflop_per_sample": flops / b / 1e9, "step_seconds_median": median, "step_seconds_best": times[0],
            "samples_per_second": b / median, "gflops": flops / median / 1e9}


def trainer_rate(name: str) -> float | None:
    """Samples a second the whole Trainer reached in the quickstart benchmark, if it ran."""
    path = RESULTS / "quickstart.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())["summary"]
    steps, seconds = s["models"].get(name, {}).get("steps"), s["stages"].get(f"train {name}")
    if steps and seconds:
        return steps * preset(name).train.batch_size / seconds
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu", "cpu-world"], choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per preset (the median is used)")
    ap.add_argument("--bf16", action="store_true", help="also time each step under bf16 autocast")
    a = ap.parse_args()
    peak = cpu_peak()
    res = {"machine": machine(), "peak": peak, "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "presets": []}
    for name, bf16 in [(n, b) for n in a.presets for b in ((False, True) if a.bf16 else (False,))]:
        r = measure(name, a.steps, bf16)
        top = peak["bf16_peak_gflops"] if bf16 else peak["peak_gflops"]
        r["fraction_of_peak"] = r["gflops"] / top if top else None
        # The quickstart's Trainer ran in the precision its preset gives on this CPU: its rate goes on that row.
        ran_bf16 = preset(name).train.cpu_bf16 and cpu_has_native_bf16()
        rate = trainer_rate(name) if bf16 == ran_bf16 else None
        if rate is not None:
            r["trainer_samples_per_second"] = rate
            r["trainer_gflops"] = rate * r["gflop_per_sample"]
            r["trainer_fraction_of_peak"] = r["trainer_gflops"] / top if top else None
        res["presets"].append(r)
        print(f"{r['preset']}: {r['gflop_per_sample']:.3f} GFLOP a sample, {r['samples_per_second']:.1f} samples/s, "
              f"{r['gflops']:.1f} GFLOP/s", flush=True)
    path = write_json("flops.json", res)
    print(f"\npeak: {peak['cores']} cores x {peak['ghz']:.2f} GHz x {peak['flops_per_cycle_per_core']} FLOPs a cycle "
          f"({peak['isa']}) = {peak['peak_gflops']:.0f} GFLOP/s fp32")
    if a.bf16 and peak["bf16_peak_gflops"]:
        print(f"bf16 peak ({peak['bf16_isa']}): {peak['bf16_peak_gflops']:.0f} GFLOP/s (the bf16 rows' of_peak)")
    print(table([{"preset": r["preset"], "params": f"{r['parameters'] / 1e6:.2f}M", "GFLOP/sample": f"{r['gflop_per_sample']:.3f}",
                  "step_s": f"{r['step_seconds_median']:.3f}", "samples/s": f"{r['samples_per_second']:.1f}",
                  "GFLOP/s": f"{r['gflops']:.1f}", "of_peak": f"{r['fraction_of_peak'] or float('nan'):.1%}",
                  "trainer_samples/s": f"{r.get('trainer_samples_per_second', float('nan')):.1f}",
                  "trainer_of_peak": f"{r.get('trainer_fraction_of_peak') or float('nan'):.0%}"} for r in res["presets"]],
                ["preset", "params", "GFLOP/sample", "step_s", "samples/s", "GFLOP/s", "of_peak", "trainer_samples/s",
                 "trainer_of_peak"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
