"""The report's figures, drawn with matplotlib from plain arrays (no pyplot state: safe in threads and headless).

Every function returns a ``matplotlib.figure.Figure``; :func:`figure_png` turns one into PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mito_monai.visualize.history import RunHistory

__all__ = [
    "ERROR_COLOURS",
    "agents_figure",
    "compare_figure",
    "dualrel_figure",
    "error_overlay",
    "figure_png",
    "loss_figure",
    "prototype_figure",
    "reliability_figure",
    "slice_examples_figure",
    "validation_figure",
]

#: RGB colours of true positives, false positives and false negatives (Okabe-Ito, colour-blind safe)
ERROR_COLOURS = {"TP": (0.0, 0.62, 0.45), "FP": (0.90, 0.62, 0.0), "FN": (0.0, 0.45, 0.70)}
#: validation metrics, in the papers' order (UDA per slice, SSL per volume, calibration)
METRIC_ORDER = ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE")
#: label-free validation scores (an evaluation without labels), drawn on their own scale
LABEL_FREE_ORDER = ("entropy", "foreground_fraction", "agreement")


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _image(ax, image: np.ndarray, title: str, cmap: str = "gray", **kwargs: Any):
    im = ax.imshow(image, cmap=cmap, interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def loss_figure(history: RunHistory) -> Figure:
    """The total loss and every ``loss_<term>`` (top) and every ``weight_<term>`` (bottom) against iteration."""
    fig = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    keys = [k for k in ("loss",) if k in history.train] + history.keys("train", "loss_")
    positive = True
    for key in keys:
        its, values = history.series("train", key)
        top.plot(its, values, label="total" if key == "loss" else key[len("loss_") :], lw=1.2 if key == "loss" else 0.9)
        positive &= bool(np.all(values[np.isfinite(values)] > 0))
    if keys:
        if positive:
            top.set_yscale("log")
        top.legend(fontsize=8, ncol=2)
        top.set_ylabel("loss (unweighted term)")
    else:
        _note(top, "no losses recorded")
    top.set_title("training losses", fontsize=10)
    weights = history.keys("train", "weight_")
    for key in weights:
        its, values = history.series("train", key)
        bottom.plot(its, values, label=key[len("weight_") :])
    if weights:
        bottom.legend(fontsize=8, ncol=2)
        bottom.set_ylabel("current weight")
    else:
        _note(bottom, "no weighted terms in this run")
    bottom.set_xlabel("iteration")
    bottom.set_title("weights of the terms (with ramp-up)", fontsize=10)
    return fig


def validation_figure(history: RunHistory) -> Figure:
    """Validation metrics (percent) against the training iteration at which they were measured.

    A run evaluated without labels records label-free scores instead (entropy in nats, foreground fraction,
    agreement): they are drawn as they are, under a title that says no label was used.
    """
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    keys = [k for k in METRIC_ORDER if k in history.validation]
    label_free = [k for k in LABEL_FREE_ORDER if k in history.validation]
    if not keys and label_free:
        for key in label_free:
            its, values = history.series("validation", key)
            ax.plot(its, values, marker="o", ms=3, label=key)
        ax.legend(fontsize=8, ncol=3)
        ax.set_xlabel("iteration")
        ax.set_ylabel("score (entropy in nats, fractions)")
        ax.set_title("label-free scores on the unlabelled target (no labels; not segmentation accuracy)", fontsize=10)
        return fig
    for key in keys:
        its, values = history.series("validation", key)
        ax.plot(its, 100.0 * values, marker="o", ms=3, label=key)
    if keys:
        ax.legend(fontsize=8, ncol=4)
        ax.set_xlabel("iteration")
        ax.set_ylabel("%")
    else:
        _note(ax, "no validation recorded")
    ax.set_title("validation on the evaluation stack (monitoring only; never selects a checkpoint)", fontsize=10)
    return fig


def reliability_figure(count: np.ndarray, correct: np.ndarray, confidence: np.ndarray) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, the bins' share of voxels, and the ECE.

    Args:
        count, correct, confidence: per-bin voxel counts, correct predictions and summed confidences
            (:class:`mito_monai.metrics.CalibrationBins` as arrays); equal-width bins over [0, 1].
    """
    import torch

    from mito_monai.metrics import CalibrationBins, expected_calibration_error_from_bins

    count, correct, confidence = (np.asarray(a, dtype=np.float64) for a in (count, correct, confidence))
    ece = expected_calibration_error_from_bins(
        CalibrationBins(torch.from_numpy(count), torch.from_numpy(correct), torch.from_numpy(confidence))
    )
    n = count.size
    edges = np.linspace(0.0, 1.0, n + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    filled = count > 0
    accuracy = np.divide(correct, count, out=np.zeros_like(count), where=filled)
    mean_conf = np.divide(confidence, count, out=centres.copy(), where=filled)
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(centres[filled], accuracy[filled], width=1.0 / n, edgecolor="k", lw=0.5, label="accuracy")
    top.bar(
        centres[filled], mean_conf[filled] - accuracy[filled], bottom=accuracy[filled], width=1.0 / n,
        color="tab:red", alpha=0.35, label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"reliability diagram, ECE = {100.0 * ece:.2f} %", fontsize=10)
    total = max(count.sum(), 1.0)
    bottom.bar(centres, count / total, width=1.0 / n, color="0.5")
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence max(p, 1 - p)")
    bottom.set_ylabel("share of voxels")
    return fig


def error_overlay(image: np.ndarray, label: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: the grey image with TP, FP and FN pixels tinted in :data:`ERROR_COLOURS`."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = float(image.min()), float(image.max())
    grey = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    label, mask = np.asarray(label).astype(bool), np.asarray(mask).astype(bool)
    for name, where in (("TP", label & mask), ("FP", ~label & mask), ("FN", label & ~mask)):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(ERROR_COLOURS[name])
    return rgb


def slice_examples_figure(
    examples: Sequence[Mapping[str, Any]], threshold: float = 0.5
) -> Figure:
    """One row per example slice: image, label, foreground probability, TP/FP/FN overlay.

    Examples without a label (an evaluation without labels) get three columns: image, foreground probability and
    the predicted mask over the image; their heading gives the slice's mean entropy instead of an IoU.

    Args:
        examples: dicts with ``name`` (e.g. "best"), ``index`` (slice number), (H, W) arrays ``image`` and ``prob``
            (foreground probability), and ``iou`` and a binary (H, W) ``label``, or ``entropy`` without labels.
        threshold: the mask is ``prob >= threshold``.
    """
    rows = max(len(examples), 1)
    if examples and not any("label" in ex for ex in examples):
        return _unlabelled_examples_figure(examples, threshold)
    fig = Figure(figsize=(12, 3.2 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 4))
    if not examples:
        for ax in axes.ravel():
            _note(ax, "no test slices recorded")
        return fig
    for row, ex in zip(axes, examples):
        head = f"{ex['name']}: slice {ex['index']}, IoU {100.0 * float(ex['iou']):.1f} %"
        _image(row[0], ex["image"], head)
        _image(row[1], ex["label"], "label", vmin=0, vmax=1)
        im = _image(row[2], ex["prob"], "P(mitochondria)", cmap="magma", vmin=0, vmax=1)
        fig.colorbar(im, ax=row[2], fraction=0.046)
        _image(row[3], error_overlay(ex["image"], ex["label"], np.asarray(ex["prob"]) >= threshold), "errors")
    handles = [Patch(color=c, label=n) for n, c in ERROR_COLOURS.items()]
    axes[0, 3].legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.8)
    return fig


def _unlabelled_examples_figure(examples: Sequence[Mapping[str, Any]], threshold: float) -> Figure:
    """Image, foreground probability and predicted mask of example slices without labels."""
    fig = Figure(figsize=(9, 3.2 * len(examples)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(examples), 3))
    colour = np.asarray(ERROR_COLOURS["TP"])
    for row, ex in zip(axes, examples):
        head = f"{ex['name']}: slice {ex['index']}, entropy {float(ex['entropy']):.3f} nats (no label)"
        _image(row[0], ex["image"], head)
        im = _image(row[1], ex["prob"], "P(mitochondria)", cmap="magma", vmin=0, vmax=1)
        fig.colorbar(im, ax=row[1], fraction=0.046)
        mask = np.asarray(ex["prob"]) >= threshold
        overlay = error_overlay(ex["image"], np.zeros_like(mask), np.zeros_like(mask), alpha=0.0)
        overlay[mask] = 0.4 * overlay[mask] + 0.6 * colour
        _image(row[2], overlay, f"predicted mask ({100.0 * float(mask.mean()):.1f} % of pixels)")
    return fig


def prototype_figure(image: np.ndarray, similarity: np.ndarray, tau: float) -> Figure:
    """R4MITO's reliable prototype pseudo-labels on a target slice (paper Fig. 5).

    Args:
        image: (H, W) target image.
        similarity: (2, H, W) cosine similarity of each pixel's feature to the source prototypes
            (background, mitochondria).
        tau: reliability threshold: a pixel is a reliable pseudo-label of class k when ``S_k > tau`` and k is
            its most similar class.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    best, cls = similarity.max(axis=0), similarity.argmax(axis=0)
    reliable = best > tau
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    _image(axes[0], image, "target image")
    for k, name in enumerate(("background", "mitochondria")):
        im = _image(axes[1 + k], similarity[k], f"cos(F, p_{name}^s)", cmap="coolwarm", vmin=-1, vmax=1)
        axes[1 + k].contour(similarity[k] > tau, levels=[0.5], colors="k", linewidths=0.6)
    fig.colorbar(im, ax=axes[1:3], fraction=0.03)
    colours = np.array([[0.0, 0.45, 0.70], [0.90, 0.62, 0.0]])
    overlay = error_overlay(image, np.zeros_like(reliable), np.zeros_like(reliable), alpha=0.0)
    for k in (0, 1):
        where = reliable & (cls == k)
        overlay[where] = 0.35 * overlay[where] + 0.65 * colours[k]
    shares = [100.0 * float((reliable & (cls == k)).mean()) for k in (0, 1)]
    _image(axes[3], overlay, f"reliable pseudo-labels (S > tau = {tau:g})")
    axes[3].legend(
        handles=[
            Patch(color=colours[0], label=f"background ({shares[0]:.1f} %)"),
            Patch(color=colours[1], label=f"mitochondria ({shares[1]:.1f} %)"),
            Patch(color="0.6", label=f"unreliable ({100.0 - sum(shares):.1f} %)"),
        ],
        fontsize=7, loc="lower right", framealpha=0.8,
    )
    return fig


def agents_figure(image: np.ndarray, correlations: np.ndarray, positions: np.ndarray, all_positions: np.ndarray) -> Figure:
    """The agent-level correlation of every pixel to a few agents (R4MITO Fig. 6).

    Args:
        image: (H, W) target image.
        correlations: (A, H, W) ``c_{i,k}`` of every pixel to each shown agent k (softmax over all agents).
        positions: (A, 2) (row, column) of the shown agents in image pixels.
        all_positions: (K, 2) (row, column) of every selected agent.
    """
    shown = len(correlations)
    fig = Figure(figsize=(3.2 * (shown + 1), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, shown + 1))
    _image(axes[0], image, f"{len(all_positions)} agents on the target slice")
    if len(all_positions):
        axes[0].scatter(all_positions[:, 1], all_positions[:, 0], s=8, c="tab:cyan", edgecolors="k", linewidths=0.3)
    for a, ax in enumerate(axes[1:]):
        _image(ax, correlations[a], f"correlation to agent {a + 1}", cmap="viridis")
        ax.scatter([positions[a, 1]], [positions[a, 0]], marker="*", s=120, c="tab:red", edgecolors="w", linewidths=0.6)
    return fig


def dualrel_figure(image: np.ndarray, activations: np.ndarray, reliability: np.ndarray) -> Figure:
    """DualRel's K activation maps, mitochondria half and background half, and each prototype's reliability.

    Args:
        image: (H, W) image.
        activations: (K, H, W) ``A_k`` in [0, 1]; the first K/2 vote for mitochondria, the rest for background.
        reliability: (K,) ``r_k`` in (0, 1].
    """
    k = len(activations)
    half = k // 2
    cols = max(half, k - half) + 1
    fig = Figure(figsize=(2.2 * cols, 7.4), layout="constrained")
    grid = fig.add_gridspec(3, cols, height_ratios=(1, 1, 0.9))
    _image(fig.add_subplot(grid[0, 0]), image, "image")
    fig.add_subplot(grid[1, 0]).axis("off")
    for i in range(k):
        row, col = (0, 1 + i) if i < half else (1, 1 + i - half)
        ax = fig.add_subplot(grid[row, col])
        part = "mito" if i < half else "bg"
        _image(ax, activations[i], f"A_{i + 1} ({part}), r={float(reliability[i]):.2f}", cmap="inferno", vmin=0, vmax=1)
    ax = fig.add_subplot(grid[2, :])
    colours = ["tab:orange" if i < half else "tab:blue" for i in range(k)]
    ax.bar(np.arange(1, k + 1), reliability, color=colours, edgecolor="k", lw=0.5)
    ax.set_xticks(np.arange(1, k + 1))
    ax.set_ylim(0, 1)
    ax.set_xlabel("prototype k")
    ax.set_ylabel("reliability r_k")
    ax.legend(handles=[Patch(color="tab:orange", label="mitochondria half"), Patch(color="tab:blue", label="background half")], fontsize=8)
    return fig


def compare_figure(rows: Sequence[Mapping[str, Any]], metric: str) -> Figure:
    """A bar per method (mean over its runs) with each run's value as a point labelled by its seed.

    Args:
        rows: one dict per run with ``method``, ``seed`` and ``metric`` (a fraction; NaN = not recorded).
        metric: the metric to plot.
    """
    by_method: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        value = float(row.get(metric, math.nan))
        if math.isfinite(value):
            by_method.setdefault(str(row.get("method", "")) or "?", []).append((str(row.get("seed", "")), value))
    fig = Figure(figsize=(max(4.0, 1.4 * len(by_method) + 2), 4), layout="constrained")
    ax = fig.subplots()
    if not by_method:
        _note(ax, f"no run has {metric}")
        return fig
    methods = list(by_method)
    means = [100.0 * float(np.mean([v for _, v in by_method[m]])) for m in methods]
    ax.bar(range(len(methods)), means, color="0.8", edgecolor="k", lw=0.6)
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        for seed, value in by_method[m]:
            x = i + rng.uniform(-0.2, 0.2)
            ax.scatter([x], [100.0 * value], c="tab:blue", s=20, zorder=3)
            ax.annotate(seed, (x, 100.0 * value), fontsize=7, xytext=(3, 2), textcoords="offset points")
    for i, mean in enumerate(means):
        ax.annotate(f"{mean:.1f}", (i, mean), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} per method: bar = mean, points = runs (labelled by seed)", fontsize=10)
    return fig
