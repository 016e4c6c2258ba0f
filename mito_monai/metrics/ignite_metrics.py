"""Ignite / MONAI-workflow metric accumulating :func:`~mito_monai.metrics.segmentation_metrics` slice by slice."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.handlers.utils import from_engine
from monai.utils import CommonKeys

from mito_monai.metrics.segmentation import (
    SEGMENTATION_KEYS,
    _Accumulator,
    _check_num_bins,
    _check_threshold,
    _validate_prob_label,
)

__all__ = ["SegmentationMetrics", "default_output_transform", "from_logits_output"]

_STATE = tuple(f"_{name}" for name in _Accumulator.names)


def default_output_transform(output: Any) -> Any:
    """Pick ``(y_pred, y)`` from an engine's output.

    - MONAI workflows with ``decollate=True`` (a list of per-item dicts): ``from_engine(["pred", "label"])``.
    - a dict with ``"pred"`` and ``"label"`` (MONAI without decollation): ``(output["pred"], output["label"])``.
    - anything else (ignite's ``(y_pred, y)`` tuple, or a dict with ``"y_pred"``/``"y"``) is returned as is.
    """
    if isinstance(output, Mapping):
        if CommonKeys.PRED in output and CommonKeys.LABEL in output:
            return output[CommonKeys.PRED], output[CommonKeys.LABEL]
        return output
    if isinstance(output, Sequence) and len(output) > 0 and all(isinstance(o, Mapping) for o in output):
        return from_engine([CommonKeys.PRED, CommonKeys.LABEL])(output)
    return output


def from_logits_output(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(foreground probability (B, 1, H, W), label)`` from an output whose ``pred`` holds logits.

    Logits with 2 channels give ``softmax(...)[:, 1:2]``; with 1 channel ``sigmoid``. Use it as the
    ``output_transform`` of :class:`SegmentationMetrics` behind an evaluator that keeps raw logits.
    """
    y_pred, y = default_output_transform(output)
    if isinstance(y_pred, (list, tuple)):
        y_pred = torch.stack([torch.as_tensor(p) for p in y_pred])
        y = torch.stack([torch.as_tensor(t) for t in y])
    y_pred = torch.as_tensor(y_pred).float()
    if y_pred.ndim != 4:
        raise ValueError(f"expected logits of shape (B, C, H, W), got {tuple(y_pred.shape)}.")
    prob = torch.softmax(y_pred, dim=1)[:, 1:2] if y_pred.shape[1] > 1 else torch.sigmoid(y_pred)
    return prob, y


class SegmentationMetrics(Metric):
    """All metrics of :func:`~mito_monai.metrics.segmentation_metrics`, accumulated over an evaluation run.

    Every batch item is one whole 2D slice. The prediction is the **foreground probability** in [0, 1]
    (apply ``sigmoid`` to a 1-channel logit, or keep channel 1 of a 2-class softmax, e.g. with MONAI's
    ``Activationsd`` + ``SplitDimd``/a lambda, in the evaluator's postprocessing):

    - ``y_pred``: (B, 1, H, W), or one item (1, H, W) (ignite unrolls MONAI's decollated lists into items),
      or a list of (1, H, W) items.
    - ``y``: binary label of the same shape, or without the channel dimension.

    ``compute()`` returns the dict of :func:`segmentation_metrics` over all slices seen: per-slice means of
    mAP (slices with foreground only), F1, MCC, IoU; volume Dice and Jaccard from the accumulated TP/FP/FN;
    ECE from the accumulated calibration bins; ``num_slices`` and ``num_slices_without_foreground``.
    The result equals the function applied to the stack of all slices.

    Publishing to ``engine.state.metrics`` (``completed``): every key of the dict (prefixed by ``prefix``) is put
    into ``engine.state.metrics`` as a scalar. The dict itself is not stored under the attach name (a non-scalar
    entry breaks MLflow logging); instead:

    - if the attach name is one of the (prefixed) keys, that key already holds the scalar. So MONAI's
      ``SupervisedEvaluator(key_val_metric={"IoU": SegmentationMetrics()})`` makes ``IoU`` the key metric (best
      checkpoint, ``best_metric``) and also reports every other key.
    - otherwise, with ``metric_name`` set, the attach name gets that key's value: e.g.
      ``key_val_metric={"val_mean_iou": SegmentationMetrics(metric_name="IoU")}``.

    Distributed (ignite ``idist``): the state is a set of sums (per-slice metric sums, slice counts, confusion
    counts, calibration bins), all-reduced before ``compute``; each process may see a different number of slices.

    Args:
        threshold: the mask is ``prob >= threshold``.
        num_bins: number of ECE bins.
        metric_name: key whose value is published under the attach name when that name is not itself a key.
        prefix: prepended to every key published in ``engine.state.metrics`` (to attach several instances, e.g.
            ``"source_"`` and ``"target_"``).
        output_transform: maps the engine's output to ``(y_pred, y)``; see :func:`default_output_transform`.
        device: device of the accumulated state (the per-slice computation runs on the data's device).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        num_bins: int = 15,
        metric_name: str | None = None,
        prefix: str = "",
        output_transform: Callable = default_output_transform,
        device: str | torch.device = torch.device("cpu"),
    ) -> None:
        _check_threshold(threshold)
        _check_num_bins(num_bins)
        if metric_name is not None and metric_name not in SEGMENTATION_KEYS:
            raise ValueError(f"metric_name must be one of {SEGMENTATION_KEYS} or None, got {metric_name!r}.")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}.")
        self.threshold = float(threshold)
        self.num_bins = int(num_bins)
        self.metric_name = metric_name
        self.prefix = prefix
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        acc = _Accumulator(self.num_bins, device=self._device)
        for name, attr in zip(_Accumulator.names, _STATE):
            setattr(self, attr, getattr(acc, name))

    def _accumulator(self) -> _Accumulator:
        acc = _Accumulator.__new__(_Accumulator)
        acc.num_bins = self.num_bins
        for name, attr in zip(_Accumulator.names, _STATE):
            setattr(acc, name, getattr(self, attr))
        return acc

    @staticmethod
    def _slices(y_pred: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(y_pred, (list, tuple)):
            y_pred = torch.stack([torch.as_tensor(item) for item in y_pred])
        if isinstance(y, (list, tuple)):
            y = torch.stack([torch.as_tensor(item) for item in y])
        y_pred = torch.as_tensor(y_pred)
        y = torch.as_tensor(y)
        if y_pred.ndim == 3:  # one item (1, H, W)
            y_pred = y_pred[None]
            y = y[None] if y.ndim in (2, 3) else y
        if y_pred.ndim != 4 or y_pred.shape[1] != 1:
            raise ValueError(
                "y_pred must be the foreground probability of shape (B, 1, H, W) or (1, H, W), "
                f"got shape {tuple(y_pred.shape)} (for 2-class outputs keep channel 1 of the softmax)."
            )
        if y.ndim == 3:
            y = y[:, None]
        if tuple(y.shape) != tuple(y_pred.shape):
            raise ValueError(
                f"y must have the shape of y_pred {tuple(y_pred.shape)} (or lack its channel dimension), "
                f"got {tuple(y.shape)}."
            )
        return y_pred[:, 0], y[:, 0]

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        y_pred, y = output[0], output[1]
        y_pred, y = self._slices(y_pred, y)
        prob, label = _validate_prob_label(y_pred.detach(), y.detach())
        self._accumulator().update(prob.reshape(prob.shape[0], -1), label.reshape(label.shape[0], -1), self.threshold)

    @sync_all_reduce(*_STATE)
    def compute(self) -> dict[str, float | int]:
        if float(self._num_slices) == 0:
            raise NotComputableError("SegmentationMetrics must have at least one example before it can be computed.")
        return self._accumulator().results()

    def completed(self, engine: Engine, name: str) -> None:
        """Put every (prefixed) key of ``compute()`` into ``engine.state.metrics``; see the class docstring."""
        result = {f"{self.prefix}{k}": v for k, v in self.compute().items()}
        engine.state.metrics.update(result)
        if name not in result and self.metric_name is not None:
            engine.state.metrics[name] = result[f"{self.prefix}{self.metric_name}"]
