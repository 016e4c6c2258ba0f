#!/usr/bin/env python
"""Draw what several models segment on one labelled slice: the slice, then each model's TP / FP / FN overlay.

For a model's card or a results page: e.g. the shipped VNC III source model against the adapted model on a
Lucchi++ test slice. Each model predicts the whole slice in one window (as the evaluation does); the heading
of each panel gives that slice's IoU. Prints a JSON record (the slice, each model's IoU and foreground
fraction, the output path).

Example::

    python scripts/figure_models.py --stack lucchi_pp:../shared/data/lucchi_pp:test --slice 41 \\
        --model "source model (VNC III only)=bundles/r4mito/models/source_vnc3.pt" \\
        --model "adapted to Lucchi++ (R4MITO)=bundles/r4mito/models/model.pt" --output source_vs_adapted.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mito_monai.datasets import load_split, parse_split_spec
from mito_monai.inference import StackSegmenter
from mito_monai.metrics import segmentation_metrics
from mito_monai.networks import MitoUNet
from mito_monai.visualize.figures import ERROR_COLOURS, error_overlay


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, help="LAYOUT:DIR:SPLIT of a labelled stack, e.g. lucchi_pp:data/lucchi_pp:test")
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (model.pt); repeat for each model")
    parser.add_argument("--slice", type=int, default=None, help="z index of the slice (default: the middle one)")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="MitoUNet channels of the models")
    parser.add_argument("--output", required=True, help="PNG to write (kept unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    try:
        layout, root, split = parse_split_spec(args.stack, "--stack")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    models = []
    for item in args.model:
        name, eq, path = item.partition("=")
        if not (eq and name and path):
            raise SystemExit(f"--model {item!r}: expected NAME=CHECKPOINT")
        models.append((name, path))
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise SystemExit(f"{output} exists: pass --overwrite to replace it, or choose another --output.")
    images, labels = load_split(layout, root, split, with_label=True)
    if labels is None:
        raise SystemExit(f"{root} split {split!r} has no labels: this figure needs a labelled stack.")
    z = images.shape[0] // 2 if args.slice is None else args.slice
    if not 0 <= z < images.shape[0]:
        raise SystemExit(f"--slice {z}: the stack has slices 0 to {images.shape[0] - 1}.")
    image, label = np.asarray(images[z], dtype=np.float32), np.asarray(labels[z]).astype(bool)
    record = {"stack": args.stack, "slice": z, "models": {}, "output": str(output)}
    fig = Figure(figsize=(4.2 * (len(models) + 1), 4.4), layout="constrained")
    axes = fig.subplots(1, len(models) + 1)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title(f"{layout} {split}, slice {z}", fontsize=9)
    for ax, (name, path) in zip(axes[1:], models):
        network = MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=args.channels)
        segmenter = StackSegmenter(network, roi_size=image.shape, checkpoint=path)
        prob = segmenter.predict_slice(image)
        mask = prob >= segmenter.threshold
        iou = float(segmentation_metrics(prob, label, threshold=segmenter.threshold)["IoU"])
        record["models"][name] = {"checkpoint": path, "IoU": round(iou, 4), "foreground_fraction": round(float(mask.mean()), 4)}
        ax.imshow(error_overlay(image, label, mask))
        ax.set_title(f"{name}\nIoU {100 * iou:.1f} % on this slice", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    axes[-1].legend(handles=[Patch(color=c, label=n) for n, c in ERROR_COLOURS.items()], fontsize=8, loc="lower right")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
