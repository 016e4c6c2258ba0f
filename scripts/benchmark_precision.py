#!/usr/bin/env python
"""Float32 against bfloat16 autocast (and channels-last) for the U-Net's training step and whole-slice inference.

Prints one JSON object: seconds per training step (forward + backward + Adam) at ``--crop`` x ``--crop``,
batch ``--batch``, and seconds per whole ``--slice_hw`` slice in inference, for float32, bfloat16 and
bfloat16 + channels-last, with the largest difference of the foreground probability against float32.
On a CPU with AVX-512 BF16 / AMX bfloat16 pays off; elsewhere it may not.

    python scripts/benchmark_precision.py --channels 16 32 64 128 --crop 256 --batch 4 --slice_hw 768 1024
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mito_monai.networks.nets import MitoUNet

SETTINGS = {"float32": (False, False), "bfloat16": (True, False), "bfloat16_channels_last": (True, True)}


def _net(channels, channels_last: bool, device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = MitoUNet(channels=tuple(channels)).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--slice_hw", type=int, nargs=2, default=[768, 1024])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.crop, args.crop, generator=g).to(device)
    y = (torch.rand(args.batch, args.crop, args.crop, generator=g) > 0.8).long().to(device)
    slice_ = torch.rand(1, 1, *args.slice_hw, generator=g).to(device)
    from mito_monai.runtime import cpu_native_bf16, resolve_precision

    out: dict = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        # what the timings below depend on: bfloat16 is fast only where the CPU computes it natively
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_native_bf16(),
        "auto_precision": resolve_precision(device=device, log=False).as_dict(), **vars(args),
    }
    reference = None
    for name, (amp, channels_last) in SETTINGS.items():
        net = _net(args.channels, channels_last, device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        steps = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - t)
        net = _net(args.channels, channels_last, device).eval()
        infers = []
        for _ in range(max(3, args.repeats // 2)):
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                prob = torch.softmax(net(slice_).float(), dim=1)[:, 1]
            if device.type == "cuda":
                torch.cuda.synchronize()
            infers.append(time.perf_counter() - t)
        if reference is None:
            reference = prob
        out[name] = {
            "train_step_s": round(_median(steps[2:]), 4),
            "inference_slice_s": round(_median(infers[1:]), 4),
            "max_abs_prob_diff_vs_float32": float((prob - reference).abs().max()),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
