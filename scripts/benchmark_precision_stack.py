#!/usr/bin/env python
"""Float32 against bfloat16 (+ channels-last) through the whole-stack segmenter on a real stack.

Segments ``--slices`` evenly spaced slices of ``--input`` (copied into a temporary zarr stack) with the
network of a bundle's ``inference.json`` and its trained weights, block-wise, as ``inference`` does, in
float32 and in bfloat16 autocast + channels-last, and with the windows grown to the slice
(``max_window``) against the bundle's fixed window. Prints one JSON object: for each setting the seconds,
the largest foreground-probability difference against the float32 grown-window run, the fraction of
pixels whose mask flips, and the foreground IoU against ``--labels``.

    python scripts/benchmark_precision_stack.py --input /work/shared/data/lucchi_pp/Test_In \
        --labels /work/shared/data/lucchi_pp/Test_Out --slices 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--bundle", default=str(REPO / "bundles" / "r4mito"))
    p.add_argument("--max_window", type=int, default=2048)
    p.add_argument("--fixed_window", action="store_true", help="also run the bundle's fixed window in float32")
    args = p.parse_args()
    import zarr
    from monai.bundle import ConfigParser

    from mito_monai.io import read_volume
    from mito_monai.inference import StackSegmenter

    parser = ConfigParser()
    parser.read_config(str(Path(args.bundle) / "configs" / "inference.json"))
    roi, overlap = parser["infer_roi"], parser["overlap"]
    ckpt = Path(args.bundle) / "models" / "model.pt"
    image, label = read_volume(args.input), read_volume(args.labels) > 0
    picked = np.linspace(0, len(image) - 1, args.slices).round().astype(int)
    settings = {"float32": (False, False, args.max_window), "bfloat16_channels_last": (True, True, args.max_window)}
    if args.fixed_window:
        settings[f"float32_window_{roi[0]}"] = (False, False, None)
    out: dict = {"input": args.input, "slices": picked.tolist(), "shape": list(image[picked].shape),
                 "bundle": args.bundle, "roi": roi, "overlap": overlap, "max_window": args.max_window, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "stack.zarr"
        zarr.create_array(stack, shape=image[picked].shape, chunks=(1, 512, 512), dtype=image.dtype)[:] = image[picked]
        reference = None
        for name, (amp, channels_last, max_window) in settings.items():
            net = parser.get_parsed_content("network_def", instantiate=True)
            seg = StackSegmenter(net, roi_size=roi, amp=amp, channels_last=channels_last, checkpoint=ckpt, max_window=max_window)
            seg.overlap = float(overlap)
            t0 = time.perf_counter()
            w = seg.run(stack, Path(tmp) / name, output_format="zarr", preview=False, progress=False)
            seconds = time.perf_counter() - t0
            prob = read_volume(w["probabilities"]).astype(np.float32)
            mask, truth = prob >= 0.5, label[picked]
            reference = prob if reference is None else reference
            out[name] = {
                "window": list(seg.windows(image.shape[1:])[0]),
                "seconds": round(seconds, 2),
                "max_abs_prob_diff_vs_float32": float(np.abs(prob - reference).max()),
                "mask_pixels_flipped_vs_float32": float((mask != (reference >= 0.5)).mean()),
                "iou": float((mask & truth).sum() / max((mask | truth).sum(), 1)),
            }
    first = out["float32"]["iou"]
    for name in settings:
        out[name]["iou_change_vs_float32"] = out[name]["iou"] - first
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
