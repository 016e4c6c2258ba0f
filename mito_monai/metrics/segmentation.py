"""Metrics of the mitochondria-segmentation literature (docs/design.md section 5), torch-vectorised.

Two conventions coexist and both are reported, named by their origin:

- **UDA convention** (DA-ISC, CAFA, R4MITO): metrics are computed on every 2D slice and then averaged
  over slices. ``mAP`` is the average precision of the foreground probability (scikit-learn's
  ``average_precision_score`` definition); ``F1``, ``MCC`` and ``IoU`` are those of the mask
  ``prob >= threshold``.
- **SSL convention** (DualRel and its baselines): ``Dice`` (DSC) and ``Jaccard`` (JAC) of the foreground,
  computed once on the whole volume.

Calibration is the binary expected calibration error ``ECE`` (DualRel, Table 5a).

Degenerate cases (all documented here once, and tested):

- ``average_precision`` of a slice without foreground is undefined: NaN. Such slices are left out of the
  ``mAP`` mean and counted in ``num_slices_without_foreground``; ``mAP`` is NaN when no slice has foreground.
- ``F1`` / ``IoU`` / ``Dice`` / ``Jaccard`` when label and prediction are both empty (TP = FP = FN = 0):
  1.0 (perfect agreement), i.e. scikit-learn's ``f1_score(..., zero_division=1.0)`` and
  ``jaccard_score(..., zero_division=1.0)``. Whenever ``TP + FP + FN > 0`` the usual formulas
  ``2TP / (2TP + FP + FN)`` and ``TP / (TP + FP + FN)`` apply (so an empty prediction on a slice with
  foreground scores 0).
- ``MCC`` with a zero denominator (label or prediction constant on the slice) is 0, scikit-learn's
  ``matthews_corrcoef`` convention (this includes a slice that is empty in both label and prediction).

All functions accept numpy arrays or torch tensors (any device); computations run in float64 with torch
on the input's device, and volumes are validated and scored a few slices at a time, so the working
memory stays bounded; the only full-size copies are of inputs in another dtype (``label`` not bool:
a bool copy, 1 byte a voxel; ``prob`` not float32/float64: a float32 copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CalibrationBins",
    "average_precision",
    "calibration_bins",
    "expected_calibration_error",
    "expected_calibration_error_from_bins",
    "segmentation_metrics",
    "ssl_metrics",
]

# process at most this many voxels per chunk of slices (the average-precision sort holds a few float64 and
# int64 copies of a chunk)
_MAX_CHUNK_VOXELS = 1 << 22


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        # strip MONAI MetaTensor (and other subclasses) to a plain tensor
        return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x
    if isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype.kind in "biuf":
            return torch.as_tensor(arr)
        raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {arr.dtype}.")
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.")


def _validate_prob_label(prob, label, ndims: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert and check ``prob`` (float in [0, 1]) and ``label`` (binary) of identical shape.

    Returns ``prob`` as a floating tensor and ``label`` as a bool tensor on ``prob``'s device. The checks
    work on chunks of at most ``_MAX_CHUNK_VOXELS`` voxels; the only full-size results are the returned
    tensors: a copy of ``prob`` when it is not float32/float64 (as float32) and of ``label`` when it is not
    bool (1 byte a voxel).
    """
    p = _to_tensor(prob, "prob")
    y = _to_tensor(label, "label")
    if tuple(p.shape) != tuple(y.shape):
        raise ValueError(
            f"prob and label must have the same shape, got prob {tuple(p.shape)} and label {tuple(y.shape)}."
        )
    if ndims is not None and p.ndim not in ndims:
        raise ValueError(
            f"expected prob and label with {' or '.join(str(n) for n in ndims)} dimensions, "
            f"got shape {tuple(p.shape)}."
        )
    if p.numel() == 0:
        raise ValueError(f"prob and label must not be empty, got shape {tuple(p.shape)}.")
    if p.is_complex():
        raise TypeError(f"prob must be real-valued, got dtype {p.dtype}.")
    if not p.is_floating_point() or p.dtype in (torch.float16, torch.bfloat16):
        p = p.to(torch.float32)
    y = y.to(p.device)
    if y.is_complex():
        raise TypeError(f"label must be real-valued, got dtype {y.dtype}.")
    # the checks run chunk by chunk, so their temporaries stay bounded whatever the volume's size
    flat_p, flat_y = p.reshape(-1), y.reshape(-1)
    p_min, p_max = float("inf"), float("-inf")
    for start in range(0, flat_p.numel(), _MAX_CHUNK_VOXELS):
        chunk = flat_p[start : start + _MAX_CHUNK_VOXELS]
        if torch.isnan(chunk).any():
            raise ValueError("prob contains NaN; expected foreground probabilities in [0, 1].")
        p_min, p_max = min(p_min, float(chunk.min())), max(p_max, float(chunk.max()))
        if y.dtype != torch.bool:
            labels = flat_y[start : start + _MAX_CHUNK_VOXELS]
            if ((labels != 0) & (labels != 1)).any():
                values = torch.unique(labels)[:8].tolist()
                raise ValueError(f"label must be binary with values in {{0, 1}}, got values including {values}.")
    if p_min < 0.0 or p_max > 1.0:
        raise ValueError(
            f"prob must hold foreground probabilities in [0, 1], got values in [{p_min:g}, {p_max:g}] "
            "(apply sigmoid/softmax to logits first)."
        )
    if y.dtype != torch.bool:
        y = y != 0
    return p, y


def _as_slices(p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z, Y, X) or (Y, X) -> (Z, Y*X)."""
    if p.ndim == 2:
        p, y = p[None], y[None]
    return p.reshape(p.shape[0], -1), y.reshape(y.shape[0], -1)


def _average_precision_rows(prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Average precision of every row of ``prob`` (S, N) against the bool ``label`` (S, N); NaN without positives.

    scikit-learn's definition: AP = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds in decreasing order,
    where tied scores form one threshold. Equivalently, every positive sample contributes ``P / num_pos`` with P the
    precision at the end of its tie group in the descending sort, which is what is computed here.
    """
    n = prob.shape[1]
    scores, order = torch.sort(prob.to(torch.float64), dim=1, descending=True)
    y = torch.gather(label.to(torch.float64), 1, order)
    tps = torch.cumsum(y, dim=1)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=prob.device)
    precision = tps / rank
    # index of the last element of each tie group: for each position, the first group end at or after it
    is_end = torch.ones_like(scores, dtype=torch.bool)
    is_end[:, :-1] = scores[:, 1:] != scores[:, :-1]
    idx = torch.arange(n, device=prob.device).expand_as(order)
    end_idx = torch.where(is_end, idx, torch.full_like(idx, n - 1))
    end_idx = torch.flip(torch.cummin(torch.flip(end_idx, dims=(1,)), dim=1).values, dims=(1,))
    precision_at_end = torch.gather(precision, 1, end_idx)
    num_pos = tps[:, -1]
    ap = (y * precision_at_end).sum(dim=1) / num_pos.clamp(min=1)
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float("nan")))


def _ratio_or_one(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 1.0 where the denominator is 0 (empty label and empty prediction)."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.ones_like(numerator))


def _confusion_rows(prob: torch.Tensor, label: torch.Tensor, threshold: float) -> torch.Tensor:
    """(S, 4) float64 counts TP, FP, FN, TN of ``prob >= threshold`` per row."""
    pred = prob >= threshold
    tp = (pred & label).sum(dim=1)
    fp = (pred & ~label).sum(dim=1)
    fn = (~pred & label).sum(dim=1)
    tn = label.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1).to(torch.float64)


def _f1_mcc_iou(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F1, MCC, IoU of (..., 4) TP/FP/FN/TN counts with the module's zero-division conventions."""
    tp, fp, fn, tn = counts.unbind(dim=-1)
    f1 = _ratio_or_one(2 * tp, 2 * tp + fp + fn)
    iou = _ratio_or_one(tp, tp + fp + fn)
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    mcc = torch.where(denominator > 0, (tp * tn - fp * fn) / torch.sqrt(safe), torch.zeros_like(denominator))
    return f1, mcc, iou


@dataclass
class CalibrationBins:
    """Per-bin calibration statistics, additive over data (sum two instances with ``+``).

    Attributes:
        count: (num_bins,) number of voxels whose confidence falls in each bin.
        correct: (num_bins,) number of those voxels whose predicted class is right.
        confidence: (num_bins,) sum of their confidences.
    """

    count: torch.Tensor
    correct: torch.Tensor
    confidence: torch.Tensor

    def __add__(self, other: CalibrationBins) -> CalibrationBins:
        if not isinstance(other, CalibrationBins):
            return NotImplemented
        if self.count.shape != other.count.shape:
            raise ValueError(
                f"cannot add CalibrationBins with {self.count.numel()} and {other.count.numel()} bins."
            )
        return CalibrationBins(
            self.count + other.count, self.correct + other.correct, self.confidence + other.confidence
        )


def _check_num_bins(num_bins: int) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")


def _calibration_bins(prob: torch.Tensor, label: torch.Tensor, num_bins: int) -> CalibrationBins:
    p = prob.reshape(-1).to(torch.float64)
    y = label.reshape(-1)
    pred = p >= 0.5
    confidence = torch.where(pred, p, 1.0 - p)
    correct = (pred == y).to(torch.float64)
    # equal-width bins (lower, upper] over [0, 1]; the first bin also holds 0
    boundaries = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    bin_index = torch.bucketize(confidence, boundaries, right=False)
    zeros = torch.zeros(num_bins, dtype=torch.float64, device=p.device)
    return CalibrationBins(
        count=zeros.index_add(0, bin_index, torch.ones_like(confidence)),
        correct=zeros.index_add(0, bin_index, correct),
        confidence=zeros.index_add(0, bin_index, confidence),
    )


def calibration_bins(prob, label, num_bins: int = 15) -> CalibrationBins:
    """Per-bin statistics of the binary expected calibration error, to accumulate over batches or volumes.

    The predicted class is 1 where ``prob >= 0.5`` and its confidence is ``max(prob, 1 - prob)``; confidences are
    binned into ``num_bins`` equal-width bins ``(k / num_bins, (k + 1) / num_bins]`` of [0, 1] (0 goes to the first).

    Args:
        prob: foreground probabilities in [0, 1], any shape (numpy array or torch tensor).
        label: binary ground truth, same shape.
        num_bins: number of bins.

    Returns:
        :class:`CalibrationBins` with float64 tensors of shape (num_bins,) on ``prob``'s device.
    """
    _check_num_bins(num_bins)
    p, y = _validate_prob_label(prob, label)
    return _calibration_bins(p, y, num_bins)


def expected_calibration_error_from_bins(bins: CalibrationBins) -> float:
    """ECE = sum over bins of ``|accuracy - mean confidence| * n_bin / N`` from accumulated :class:`CalibrationBins`."""
    total = float(bins.count.sum())
    if total == 0:
        return float("nan")
    return float((bins.correct - bins.confidence).abs().sum() / total)


def expected_calibration_error(prob, label, num_bins: int = 15) -> float:
    """Binary expected calibration error over all voxels of ``prob`` (see :func:`calibration_bins`).

    Args:
        prob: foreground probabilities in [0, 1], any shape.
        label: binary ground truth, same shape.
        num_bins: number of equal-width confidence bins over [0, 1].
    """
    return expected_calibration_error_from_bins(calibration_bins(prob, label, num_bins))


def average_precision(prob, label) -> float:
    """Average precision of the foreground probability of one slice, scikit-learn's definition.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct probability values taken as thresholds in decreasing
    order (tied values form a single threshold, as in ``sklearn.metrics.average_precision_score``).

    Args:
        prob: foreground probabilities in [0, 1], any shape (flattened: it is one slice).
        label: binary ground truth, same shape.

    Returns:
        The average precision, NaN when the slice has no foreground.
    """
    p, y = _validate_prob_label(prob, label)
    return float(_average_precision_rows(p.reshape(1, -1), y.reshape(1, -1))[0])


class _Accumulator:
    """Running sums behind every metric of this module; everything a distributed all-reduce can sum."""

    names = (
        "ap_sum",
        "ap_count",
        "f1_sum",
        "mcc_sum",
        "iou_sum",
        "num_slices",
        "confusion",
        "bin_count",
        "bin_correct",
        "bin_confidence",
    )

    def __init__(self, num_bins: int, device: torch.device | str = "cpu") -> None:
        self.num_bins = num_bins
        for name in self.names:
            shape = (4,) if name == "confusion" else (num_bins,) if name.startswith("bin_") else ()
            setattr(self, name, torch.zeros(shape, dtype=torch.float64, device=device))

    def update(
        self, prob: torch.Tensor, label: torch.Tensor, threshold: float, compute_ap: bool = True
    ) -> None:
        """Add slices ``prob`` (S, N) float, ``label`` (S, N) bool."""
        device = self.confusion.device
        rows_per_chunk = max(1, _MAX_CHUNK_VOXELS // max(1, prob.shape[1]))
        for start in range(0, prob.shape[0], rows_per_chunk):
            p = prob[start : start + rows_per_chunk]
            y = label[start : start + rows_per_chunk]
            if compute_ap:
                ap = _average_precision_rows(p, y)
                has_fg = ~torch.isnan(ap)
                self.ap_sum += ap[has_fg].sum().to(device)
                self.ap_count += has_fg.sum().to(device=device, dtype=torch.float64)
            counts = _confusion_rows(p, y, threshold)
            f1, mcc, iou = _f1_mcc_iou(counts)
            self.f1_sum += f1.sum().to(device)
            self.mcc_sum += mcc.sum().to(device)
            self.iou_sum += iou.sum().to(device)
            self.num_slices += float(p.shape[0])
            self.confusion += counts.sum(dim=0).to(device)
            bins = _calibration_bins(p, y, self.num_bins)
            self.bin_count += bins.count.to(device)
            self.bin_correct += bins.correct.to(device)
            self.bin_confidence += bins.confidence.to(device)

    def results(self) -> dict[str, float | int]:
        num_slices = int(self.num_slices)
        ap_count = int(self.ap_count)
        dice, _, jaccard = _f1_mcc_iou(self.confusion)
        return {
            "mAP": float(self.ap_sum / ap_count) if ap_count > 0 else float("nan"),
            "F1": float(self.f1_sum / num_slices),
            "MCC": float(self.mcc_sum / num_slices),
            "IoU": float(self.iou_sum / num_slices),
            "Dice": float(dice),
            "Jaccard": float(jaccard),
            "ECE": expected_calibration_error_from_bins(
                CalibrationBins(self.bin_count, self.bin_correct, self.bin_confidence)
            ),
            "num_slices": num_slices,
            "num_slices_without_foreground": num_slices - ap_count,
        }


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")


def _volume_results(prob, label, threshold: float, num_bins: int, compute_ap: bool = True) -> dict:
    _check_threshold(threshold)
    _check_num_bins(num_bins)
    p, y = _validate_prob_label(prob, label, ndims=(2, 3))
    p, y = _as_slices(p, y)
    acc = _Accumulator(num_bins, device=p.device)
    acc.update(p, y, threshold, compute_ap=compute_ap)
    return acc.results()


def _pick(results: Mapping, keys: tuple[str, ...]) -> dict:
    return {k: results[k] for k in keys}


SSL_KEYS = ("Dice", "Jaccard")
SEGMENTATION_KEYS = ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE", "num_slices", "num_slices_without_foreground")


def ssl_metrics(prob, label, threshold: float = 0.5) -> dict[str, float]:
    """Volume-level foreground Dice (DSC) and Jaccard (JAC) of the SSL papers (DualRel).

    Args:
        prob: (Z, Y, X) or (Y, X) foreground probabilities in [0, 1].
        label: binary ground truth of the same shape.
        threshold: the mask is ``prob >= threshold``.

    Returns:
        ``{"Dice": 2TP / (2TP + FP + FN), "Jaccard": TP / (TP + FP + FN)}`` over all voxels (1.0 when label and
        prediction are both empty).
    """
    return _pick(_volume_results(prob, label, threshold, num_bins=1, compute_ap=False), SSL_KEYS)


def segmentation_metrics(prob, label, threshold: float = 0.5, num_bins: int = 15) -> dict[str, float | int]:
    """Both conventions and calibration in one pass: what ``python -m mito_monai evaluate`` prints.

    Args:
        prob: (Z, Y, X) or (Y, X) foreground probabilities in [0, 1].
        label: binary ground truth of the same shape.
        threshold: the mask is ``prob >= threshold`` (ECE always takes class 1 where ``prob >= 0.5``).
        num_bins: number of ECE bins.

    Returns:
        ``{"mAP", "F1", "MCC", "IoU"}`` (UDA convention, per-slice means), ``{"Dice", "Jaccard"}`` (SSL convention,
        whole volume), ``"ECE"``, ``"num_slices"`` and ``"num_slices_without_foreground"``.
    """
    return _pick(_volume_results(prob, label, threshold, num_bins=num_bins), SEGMENTATION_KEYS)
