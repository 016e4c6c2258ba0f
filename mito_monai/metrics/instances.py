"""Instance metrics of 3D mitochondria: MitoEM-style average precision at IoU 0.50 and 0.75.

The MitoEM challenge (Wei et al., MICCAI 2020) scores 3D instances with COCO's average precision,
computed on whole volumes: predicted instances are taken in order of decreasing score, each is matched
to the not yet matched label instance of highest IoU if that IoU reaches the threshold (a true
positive), otherwise it is a false positive; AP is the mean over the 101 recall points 0, 0.01, ..., 1
of the interpolated precision (the largest precision at that recall or beyond).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["instance_overlaps", "instance_average_precision", "instance_metrics"]


def instance_overlaps(prediction: np.ndarray, label: np.ndarray):
    """IDs, sizes and pairwise intersections of the instances of two label volumes (0 = background).

    Returns:
        ``(pred_ids, pred_sizes, label_ids, label_sizes, intersection)`` with ``intersection`` a dense
        (num_pred, num_label) array of voxel counts.
    """
    prediction, label = np.asarray(prediction).ravel(), np.asarray(label).ravel()
    if prediction.shape != label.shape:
        raise ValueError(f"prediction and label differ in size: {prediction.size} vs {label.size} voxels.")
    pred_ids, pred_sizes = np.unique(prediction[prediction != 0], return_counts=True)
    label_ids, label_sizes = np.unique(label[label != 0], return_counts=True)
    both = (prediction != 0) & (label != 0)
    pi = np.searchsorted(pred_ids, prediction[both])
    li = np.searchsorted(label_ids, label[both])
    inter = np.zeros((len(pred_ids), len(label_ids)), np.int64)
    np.add.at(inter, (pi, li), 1)
    return pred_ids, pred_sizes, label_ids, label_sizes, inter


def instance_average_precision(iou: np.ndarray, scores: Sequence[float], threshold: float) -> float:
    """COCO/MitoEM average precision of predictions with ``scores`` against labels, from their IoU matrix.

    Args:
        iou: (num_pred, num_label) IoU.
        scores: one confidence per prediction (higher is matched first; ties keep the given order).
        threshold: IoU at or above which a match counts.
    """
    num_pred, num_label = iou.shape
    if num_label == 0:
        return float("nan") if num_pred == 0 else 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    taken = np.zeros(num_label, bool)
    tp = np.zeros(num_pred, bool)
    for rank, p in enumerate(order):
        candidates = np.where(taken, -1.0, iou[p])
        best = int(np.argmax(candidates)) if num_label else -1
        if candidates[best] >= threshold:
            taken[best] = True
            tp[rank] = True
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, num_pred + 1)
    recall = ctp / num_label
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if num_pred else precision
    points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < num_pred else 0.0 for i in idx]))


def instance_metrics(
    prediction: np.ndarray, label: np.ndarray, probabilities: np.ndarray | None = None, thresholds: Sequence[float] = (0.5, 0.75)
) -> dict[str, float | int]:
    """MitoEM instance metrics of a 3D instance volume against a 3D label instance volume.

    Args:
        prediction: (Z, Y, X) instance IDs (0 = background).
        label: (Z, Y, X) label instance IDs.
        probabilities: optional foreground probabilities; an instance's score is its mean probability
            (MitoEM's convention). Without them the score is the instance's size.
        thresholds: IoU thresholds; the keys are ``AP50``, ``AP75``...

    Returns:
        ``AP50``, ``AP75`` (as fractions), ``num_predicted`` and ``num_labelled``.
    """
    pred_ids, pred_sizes, _, label_sizes, inter = instance_overlaps(prediction, label)
    union = pred_sizes[:, None] + label_sizes[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    if probabilities is not None:
        flat = np.asarray(prediction).ravel()
        fg = flat != 0
        sums = np.zeros(len(pred_ids))
        np.add.at(sums, np.searchsorted(pred_ids, flat[fg]), np.asarray(probabilities, np.float64).ravel()[fg])
        scores = sums / np.maximum(pred_sizes, 1)
    else:
        scores = pred_sizes.astype(np.float64)
    out: dict[str, float | int] = {
        f"AP{int(round(t * 100))}": instance_average_precision(iou, scores, t) for t in thresholds
    }
    out["num_predicted"], out["num_labelled"] = int(len(pred_ids)), int(len(label_sizes))
    return out
