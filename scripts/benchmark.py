#!/usr/bin/env python
"""Speed and memory benchmarks; prints one JSON object.

Training: iterations/s of one DomainAdaptationTrainer step per method (the loss terms wired
exactly as in ``bundles/r4mito/configs/train.json``), on synthetic in-memory batches so that data
loading is not timed, and the ratio of each method's median step time to a plain supervised step's
(every ratio is of medians, the statistic docs/results.md quotes). Semi-supervised:
iterations/s of one SemiSupervisedTrainer step of supervised-only, Mean Teacher, CPS and DualRel with
DualRelNet (terms wired as in ``bundles/dualrel/configs/train.json``; paper setting 512 x 512, batch 4
labelled + 4 unlabelled), and each one's time relative to supervised-only.

Inference: voxels/s of whole-stack segmentation (``StackSegmenter``, block-wise) from a TIFF or zarr
stack written to a temporary folder, and the peak memory of that process for two stack depths: peak
memory must not grow with the number of slices. ``--plain_forward`` also times the bare float32 forward
of the same network on whole slices, the reference the whole-stack throughput is compared with (before
the first and after the last of the ``--settings`` runs, interleaved, so that a changing machine load
shows). ``--memory_depths`` writes one zarr stack per depth first and reports the peak RSS of a process
that only segments it; ``--dask_compare`` also runs each setting on a 2-worker LocalCluster and compares
the outputs.

Examples::

    python scripts/benchmark.py --device cpu --crop 128 --batch 2 --iterations 10 \
        --ssl_crop 128 --ssl_depth 18 --ssl_embed 32 --ssl_decoder 128 64 32 16 16
    python scripts/benchmark.py --device cuda --crop 512 --batch 2 --iterations 50 --amp
    python scripts/benchmark.py --inference_only --channels 16 32 64 128 --slice 1024 --slice_y 768 \
        --roi 512 --max_window 2048 --depths 2 --input_format zarr --plain_forward --settings fp32 bf16_cl
    python scripts/benchmark.py --inference_only --network conv --slice 4096 --roi 512 --max_window 2048 \
        --memory_depths 8 64 --probabilities_dtype uint8     # peak RSS per depth, one process each
    python scripts/benchmark.py --inference_only --channels 4 8 16 32 --slice 1024 --slice_y 768 --roi 512 \
        --max_window 2048 --depths 4 --block_slices 1 --input_format zarr --dask_compare   # 1 process vs 2 workers
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "bundles" / "r4mito" / "configs" / "train.json"
SSL_TRAIN_CONFIG = REPO / "bundles" / "dualrel" / "configs" / "train.json"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _terms(method: str, overrides: dict, config: Path = TRAIN_CONFIG) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"method": method, **overrides})
    return parser.get_parsed_content("terms")


def bench_train(method: str, args) -> dict:
    from mito_monai.engines import DomainAdaptationTrainer
    from mito_monai.networks.nets import MitoUNet

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = MitoUNet(channels=tuple(args.channels)).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    h = w = args.crop
    g = torch.Generator().manual_seed(0)
    src = [
        {"image": torch.rand(args.batch, 1, h, w, generator=g), "label": (torch.rand(args.batch, 1, h, w, generator=g) > 0.7).long()}
    ]
    tgt_img = torch.rand(args.batch, 1, h, w, generator=g)
    tgt = [{"image_weak": tgt_img, "image_strong": (tgt_img + 0.05 * torch.randn_like(tgt_img)).clamp(0, 1)}]
    terms = {} if method == "supervised" else _terms(method, {"agent_pool_stride": args.pool_stride})
    for term in terms.values():
        term.to(device)
    from monai.losses import DiceCELoss

    trainer = DomainAdaptationTrainer(
        device=device,
        max_epochs=1,
        epoch_length=args.warmup + args.iterations,
        train_data_loader=src * (args.warmup + args.iterations),
        target_data_loader=tgt,
        network=net,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0),
        terms=terms,
        amp=args.amp,
        amp_dtype=torch.bfloat16 if args.amp else torch.float16,
    )
    return _timing_record(trainer, device, args.warmup, {"method": method}, terms)


def _median_ratio(result: dict, reference: dict) -> float:
    """How many times ``reference``'s median step time ``result``'s takes."""
    return result["seconds_per_iteration_median"] / reference["seconds_per_iteration_median"]


def _time_iterations(trainer, device: torch.device, warmup: int) -> np.ndarray:
    from ignite.engine import Events

    stamps: list[float] = []

    def _stamp(engine):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _stamp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    return np.diff(stamps[warmup - 1 :]) if warmup > 0 else np.diff([stamps[0]] + stamps)


def _timing_record(trainer, device: torch.device, warmup: int, setting: dict, terms: dict) -> dict:
    """Run ``trainer`` and return ``setting`` with its active terms, iterations/s and (CUDA) peak memory."""
    timed = _time_iterations(trainer, device, warmup)
    out = {
        **setting,
        "terms": sorted(name for name, t in terms.items() if t.active),
        "iterations_timed": len(timed),
        "iterations_per_s": float(1.0 / np.mean(timed)),
        "seconds_per_iteration_median": float(np.median(timed)),
    }
    if device.type == "cuda":
        out["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_ssl(method: str, args) -> dict:
    """One SemiSupervisedTrainer step of ``method`` with DualRelNet, terms wired as in bundles/dualrel."""
    from monai.losses import DiceCELoss
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from mito_monai.engines import SemiSupervisedTrainer, method_terms
    from mito_monai.networks.nets import DualRelNet

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = DualRelNet(
        encoder_depth=args.ssl_depth, embed_dim=args.ssl_embed, decoder_channels=tuple(args.ssl_decoder)
    ).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    h = w = args.ssl_crop
    g = torch.Generator().manual_seed(0)
    n = args.warmup + args.iterations
    labelled = [
        {
            "image": torch.rand(args.ssl_batch, 1, h, w, generator=g),
            "label": (torch.rand(args.ssl_batch, 1, h, w, generator=g) > 0.7).long(),
        }
    ] * n
    u = torch.rand(args.ssl_batch, 1, h, w, generator=g)
    unlabelled = [{"image_weak": u, "image_strong": (u + 0.05 * torch.randn_like(u)).clamp(0, 1)}]
    terms = _terms(method, {}, SSL_TRAIN_CONFIG)
    for term in terms.values():
        term.to(device)
    mt = "mt" in method_terms(method)
    teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True) if mt else None
    trainer = SemiSupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=n,
        train_data_loader=labelled,
        unlabelled_data_loader=unlabelled,
        network=net,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0),
        terms=terms,
        teacher=teacher,
        unlabelled_key="image_strong" if mt else "image_weak",
        teacher_key="image_weak",
        amp=args.amp,
        amp_dtype=torch.bfloat16 if args.amp else torch.float16,
    )
    setting = {
        "method": method,
        "network": f"DualRelNet(ResNet-{args.ssl_depth}, embed {args.ssl_embed})",
        "crop": args.ssl_crop,
        "batch": f"{args.ssl_batch} labelled + {args.ssl_batch} unlabelled",
    }
    return _timing_record(trainer, device, args.warmup, setting, terms)


def bench_inference(args, depth: int, extra: list[str] | None = None) -> dict:
    """Run in a fresh process so that the peak RSS is this measurement's own."""
    cmd = [sys.executable, __file__, "--_inference_depth", str(depth)] + _forward_args(args) + (extra or [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"inference benchmark failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _forward_args(args) -> list[str]:
    return [
        "--device", args.device, "--slice", str(args.slice), "--roi", str(args.roi),
        "--channels", *map(str, args.channels), "--settings", *args.settings,
        *(["--slice_y", str(args.slice_y)] if args.slice_y else []), "--input_format", args.input_format,
        "--block_slices", str(args.block_slices), "--block_tile", str(args.block_tile), "--overlap", str(args.overlap),
        *(["--max_window", str(args.max_window)] if args.max_window else []),
        *(["--plain_forward"] if args.plain_forward else []), "--network", args.network,
        "--probabilities_dtype", args.probabilities_dtype, *(["--dask_compare"] if args.dask_compare else []),
    ]


def _plain_forward(seg, shape: tuple[int, int], depth: int) -> float:
    """Voxels/s of the bare float32 network on whole slices (batch 1, no windows, no I/O), after one warm-up."""
    x = torch.rand(1, 1, *shape, device=seg.device)
    amp, seg.amp = seg.amp, False
    seg.predictor.forward_windows(x[..., : min(shape[0], 64), : min(shape[1], 64)])
    t0 = time.perf_counter()
    for _ in range(depth):
        seg.predictor.forward_windows(x)
    if seg.device.type == "cuda":
        torch.cuda.synchronize()
    seg.amp = amp
    return depth * shape[0] * shape[1] / (time.perf_counter() - t0)


def _time_network(seg) -> list[float]:
    """Make ``seg`` add the seconds its network runs to the returned one-element list."""
    spent, forward = [0.0], seg.predictor.forward_windows

    def timed(x):
        t0 = time.perf_counter()
        out = forward(x)
        spent[0] += time.perf_counter() - t0
        return out

    seg.predictor.forward_windows = timed
    return spent


#: stack setting -> (bfloat16 autocast, channels-last)
STACK_SETTINGS = {"fp32": (False, False), "bf16": (True, False), "bf16_cl": (True, True)}


def _network(args) -> torch.nn.Module:
    from mito_monai.networks.nets import MitoUNet

    torch.manual_seed(0)
    if args.network == "conv":  # a stand-in for measuring the data path's memory: one 3 x 3 convolution
        return torch.nn.Conv2d(1, 2, 3, padding=1)
    return MitoUNet(channels=tuple(args.channels))


def write_stack(path: Path, depth: int, shape: tuple[int, int], fmt: str = "zarr") -> Path:
    """A random uint8 (depth, Y, X) stack, written slice by slice (a 512 x 512 random tile shifted per slice)."""
    import tifffile
    import zarr

    tile = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    reps = (-(-shape[0] // 512), -(-shape[1] // 512))
    slices = (np.roll(np.tile(tile, reps), 7 * z, axis=1)[: shape[0], : shape[1]] for z in range(depth))
    if fmt == "zarr":
        arr = zarr.create_array(path, shape=(depth, *shape), chunks=(1, 512, 512), dtype="u1")
        for z, s in enumerate(slices):
            arr[z] = s
    else:
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for s in slices:
                tif.write(s, contiguous=True)
    return path


def _inference_child(args) -> None:
    from mito_monai.io import read_volume
    from mito_monai.inference import StackSegmenter

    depth = args._inference_depth
    shape = (args.slice_y or args.slice, args.slice)
    cuda = torch.device(args.device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(args._stack) if args._stack else write_stack(Path(tmp) / f"stack.{args.input_format}", depth, shape, args.input_format)
        base = _peak_rss_mib()
        net = _network(args)
        warm = write_stack(Path(tmp) / "warm.zarr", 1, (64, 64))  # imports and first-call costs, not timed
        StackSegmenter(net, roi_size=(args.roi, args.roi)).run(warm, Path(tmp) / "warm_out", preview=False,
                                                              output_format="zarr", progress=False)
        out: dict = {
            "stack_shape": [depth, *shape], "format": args.input_format, "network": args.network,
            "channels": args.channels if args.network == "unet" else None, "roi": [args.roi, args.roi],
            "overlap": args.overlap, "max_window": args.max_window, "block": [args.block_slices, args.block_tile, args.block_tile],
            "threads": torch.get_num_threads(), "probabilities_dtype": args.probabilities_dtype,
        }
        plain = []
        runs = {}
        for i, name in enumerate(args.settings):
            amp, channels_last = STACK_SETTINGS[name]
            seg = StackSegmenter(net, roi_size=(args.roi, args.roi), device=args.device, amp=amp,
                                 channels_last=channels_last, max_window=args.max_window)
            seg.overlap = args.overlap
            out["window"] = list(seg.windows(shape)[0])
            if args.plain_forward and i == 0:  # interleaved: before the first and after every stack run
                plain.append(_plain_forward(seg, shape, min(depth, 2)))
            network_s = _time_network(seg)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            schedulers = [("local", 1), ("dask", 2)] if args.dask_compare else [("local", 1)]
            for scheduler, workers in schedulers:
                t0 = time.perf_counter()
                w = seg.run(stack, Path(tmp) / f"out_{name}_{scheduler}", preview=False, output_format=args.input_format,
                            block_slices=args.block_slices, block_tile=args.block_tile, progress=False, scheduler=scheduler,
                            dask_workers=workers, probabilities_dtype=args.probabilities_dtype)
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                key = name if scheduler == "local" else f"{name}_dask_{workers}_workers"
                runs[key] = {"seconds": dt, "voxels_per_s": depth * shape[0] * shape[1] / dt}
                if scheduler == "local":
                    runs[key]["network_share"] = network_s[0] / dt  # the rest: statistics, I/O, blending
                    network_s[0] = 0.0
                if args.dask_compare:
                    runs[key]["probabilities"] = read_volume(w["probabilities"])
            if args.plain_forward:
                plain.append(_plain_forward(seg, shape, min(depth, 2)))
                runs[name]["stack_vs_adjacent_plain_fp32"] = runs[name]["voxels_per_s"] / float(np.mean(plain[-2:]))
            if net is not None and channels_last:
                net = net.to(memory_format=torch.contiguous_format)
        if args.dask_compare:
            for name in args.settings:
                ref = runs[name].pop("probabilities")
                other = runs[f"{name}_dask_2_workers"]
                other["max_abs_diff_vs_one_process"] = float(np.abs(other.pop("probabilities").astype(np.float64) - ref).max())
                other["time_vs_one_process"] = other["seconds"] / runs[name]["seconds"]
        if plain:
            out["plain_forward_fp32_voxels_per_s"] = plain
            for r in runs.values():
                r["stack_vs_mean_plain_fp32"] = r["voxels_per_s"] / float(np.mean(plain))
        out["runs"] = runs
        out["peak_rss_mib"] = _peak_rss_mib()
        out["rss_before_run_mib"] = base
        if cuda:
            out["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def bench_memory(args) -> list[dict]:
    """Peak RSS of block-wise inference on (N, Y, X) zarr stacks, one child process per N (stack written first)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.memory_depths:
            stack = write_stack(Path(tmp) / f"stack_{depth}.zarr", depth, (args.slice_y or args.slice, args.slice))
            t0 = time.perf_counter()
            r = bench_inference(args, depth, ["--_stack", str(stack), "--input_format", "zarr"])  # OME-Zarr out
            r["wall_s_with_start"] = time.perf_counter() - t0
            print(json.dumps(r), file=sys.stderr, flush=True)  # each depth as it finishes
            out.append(r)
            import shutil

            shutil.rmtree(stack)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--crop", type=int, default=512, help="training crop (paper: 512)")
    p.add_argument("--batch", type=int, default=2, help="training batch (paper: 2)")
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--methods", nargs="*", default=["supervised", "baseline", "r4mito"], help="domain-adaptation methods to time (none: skip)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pool_stride", type=int, default=4, help="agent map stride of the correlation/rank terms")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--slice", type=int, default=1024, help="inference: slice size (Y = X)")
    p.add_argument("--roi", type=int, default=512, help="inference: sliding-window size")
    p.add_argument("--depths", type=int, nargs="+", default=[2, 8], help="inference: stack depths to compare")
    p.add_argument("--slice_y", type=int, default=None, help="inference: slice height if not square (e.g. 768)")
    p.add_argument("--input_format", choices=["tif", "zarr"], default="tif", help="inference: stack (and output) format")
    p.add_argument("--block_slices", type=int, default=4, help="inference: slices per block")
    p.add_argument("--block_tile", type=int, default=4096, help="inference: tile size of a block")
    p.add_argument("--max_window", type=int, default=None, help="inference: grow the windows up to this size (StackSegmenter max_window)")
    p.add_argument("--settings", nargs="+", default=["fp32"], choices=sorted(STACK_SETTINGS),
                   help="inference: whole-stack runs, in this order (fp32, bf16 autocast, bf16 + channels-last)")
    p.add_argument("--network", choices=["unet", "conv"], default="unet", help="inference: MitoUNet(--channels) or one 3x3 conv")
    p.add_argument("--probabilities_dtype", choices=["float32", "uint8"], default="float32")
    p.add_argument("--memory_depths", type=int, nargs="*", default=[],
                   help="inference: peak RSS for zarr stacks of these depths (one process each), instead of --depths")
    p.add_argument("--dask_compare", action="store_true", help="inference: also run each setting on a 2-worker LocalCluster")
    p.add_argument("--_stack", default=None, help=argparse.SUPPRESS)
    p.add_argument("--overlap", type=float, default=0.5, help="inference: sliding-window overlap")
    p.add_argument("--channels_last", action="store_true", help="channels-last network (training)")
    p.add_argument("--plain_forward", action="store_true",
                   help="inference: also time the bare float32 forward on whole slices (the throughput reference)")
    p.add_argument("--inference_only", action="store_true", help="skip the training benchmarks")
    p.add_argument("--ssl_methods", nargs="*", default=["supervised", "mean_teacher", "cps", "dualrel"],
                   help="semi-supervised methods to time with DualRelNet (none: skip)")
    p.add_argument("--ssl_crop", type=int, default=512, help="DualRel crop (paper: 512)")
    p.add_argument("--ssl_batch", type=int, default=4, help="DualRel labelled (and unlabelled) batch (paper: 4)")
    p.add_argument("--ssl_depth", type=int, default=50, help="DualRel ResNet depth (paper: 50)")
    p.add_argument("--ssl_embed", type=int, default=64, help="DualRel embedding channels C")
    p.add_argument("--ssl_decoder", type=int, nargs=5, default=[256, 128, 64, 32, 16], help="DualRel decoder channels")
    p.add_argument("--skip_inference", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--_inference_depth", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._inference_depth is not None:
        _inference_child(args)
        return
    result = {
        "device": str(args.device),
        "device_name": torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "crop": args.crop,
        "batch": args.batch,
        "channels": args.channels,
        "amp": args.amp,
        "train": [] if args.inference_only else [bench_train(m, args) for m in args.methods],
        "semi_supervised": [] if args.inference_only else [bench_ssl(m, args) for m in args.ssl_methods],
    }
    sup = next((r for r in result["train"] if r["method"] == "supervised"), None)
    base = next((r for r in result["train"] if r["method"] == "baseline"), None)
    for r in result["train"]:
        if sup:
            r["time_vs_supervised"] = _median_ratio(r, sup)
        if base:
            r["time_vs_baseline"] = _median_ratio(r, base)
    ssl_sup = next((r for r in result["semi_supervised"] if r["method"] == "supervised"), None)
    for r in result["semi_supervised"]:
        if ssl_sup:
            r["time_vs_supervised"] = _median_ratio(r, ssl_sup)
    if args.memory_depths:
        result["memory"] = bench_memory(args)
    elif not args.skip_inference:
        result["inference"] = [bench_inference(args, d) for d in args.depths]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
