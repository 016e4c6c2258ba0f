"""Ignite / MONAI-workflow metric of the label-free scores, for evaluators of unlabelled images.

:class:`LabelFreeMetrics` accumulates, over an evaluation run, what :class:`~mito_monai.metrics.LabelFreeScores`
computes for the selection handler (:mod:`mito_monai.metrics.label_free`): the mean prediction entropy, the predicted
foreground fraction and, when the output also holds a prediction on transformed copies, the mask agreement. It reads
no label, so an evaluator can score a model on a volume that has none. :func:`evaluation_key_metric` picks this
metric or :class:`~mito_monai.metrics.SegmentationMetrics` for a bundle's evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.utils import CommonKeys

from mito_monai.metrics.ignite_metrics import SegmentationMetrics, from_logits_output
from mito_monai.metrics.label_free import _check_prob, binary_entropy, mask_agreement

__all__ = ["LABEL_FREE_KEYS", "LabelFreeMetrics", "evaluation_key_metric", "probability_output"]

#: the keys :meth:`LabelFreeMetrics.compute` can return (``agreement`` only with transformed copies)
LABEL_FREE_KEYS = ("entropy", "foreground_fraction", "agreement", "num_slices")
_STATE = ("_entropy_sum", "_foreground", "_pixels", "_num_slices", "_intersection", "_total", "_paired")


def probability_output(output: Any) -> torch.Tensor:
    """The foreground probability (B, 1, H, W) of an evaluator output whose ``pred`` holds logits (B, C, H, W).

    2-channel logits give ``softmax(...)[:, 1:2]``, 1-channel logits ``sigmoid``. The output's ``label`` entry,
    if any, is ignored (it is None for images without labels). Use it as the ``output_transform`` of
    :class:`LabelFreeMetrics` behind an evaluator that keeps raw logits (``decollate=False``).
    """
    if isinstance(output, Mapping):
        if CommonKeys.PRED not in output:
            raise ValueError(f"expected an engine output with a {CommonKeys.PRED!r} entry, got keys {sorted(output)}.")
        output = output[CommonKeys.PRED]
    if isinstance(output, (list, tuple)):
        output = torch.stack([torch.as_tensor(o) for o in output])
    logits = torch.as_tensor(output).float()
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (B, C, H, W), got {tuple(logits.shape)}.")
    return torch.softmax(logits, dim=1)[:, 1:2] if logits.shape[1] > 1 else torch.sigmoid(logits)


class LabelFreeMetrics(Metric):
    """The label-free scores of a model on unlabelled images, accumulated over an evaluation run.

    Every batch item is one whole 2D slice; no label is read. ``update`` takes, after ``output_transform``:

    - ``p``: the foreground probability (B, 1, H, W) in [0, 1] on the images, or
    - ``(p, q)``: ``p`` and ``q`` (B, 1, H, W), the probability on transformed copies of the images mapped back to
      their geometry (``q`` may be None).

    ``compute()`` returns, over all pixels of all slices seen (pooled, as :class:`~mito_monai.metrics.LabelFreeScores`):

    - ``entropy``: the mean binary entropy of ``p`` in nats (:func:`~mito_monai.metrics.binary_entropy`);
    - ``foreground_fraction``: the fraction of pixels with ``p >= threshold``;
    - ``agreement`` (only when some ``q`` was given): the Dice of the masks of ``p`` and ``q`` summed over all
      batches (:func:`~mito_monai.metrics.mask_agreement`; two empty masks score 0);
    - ``num_slices``: the number of slices scored.

    These are not segmentation accuracies: a model that predicts nothing has a low entropy too.

    Publishing to ``engine.state.metrics`` (``completed``), as :class:`~mito_monai.metrics.SegmentationMetrics`: every
    key (prefixed by ``prefix``) as a scalar; when the attach name is not a key, it gets ``metric_name``'s value.

    Distributed (ignite ``idist``): the state is a set of sums (entropy, foreground and total pixels, slices, the
    agreement's numerator and denominator), all-reduced before ``compute``; each process may see a different number
    of slices.

    Args:
        threshold: the mask is ``p >= threshold``, in (0, 1).
        metric_name: key whose value is published under the attach name when that name is not itself a key.
        prefix: prepended to every key published in ``engine.state.metrics``.
        output_transform: maps the engine's output to ``p`` or ``(p, q)``; see :func:`probability_output`.
        device: device of the accumulated state.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        metric_name: str | None = None,
        prefix: str = "",
        output_transform: Callable = probability_output,
        device: str | torch.device = torch.device("cpu"),
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}.")
        if metric_name is not None and metric_name not in LABEL_FREE_KEYS:
            raise ValueError(f"metric_name must be one of {LABEL_FREE_KEYS} or None, got {metric_name!r}.")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}.")
        self.threshold = float(threshold)
        self.metric_name = metric_name
        self.prefix = prefix
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        for name in _STATE:
            setattr(self, name, torch.zeros((), dtype=torch.float64, device=self._device))

    @staticmethod
    def _as_batch(x: Any, name: str) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.stack([torch.as_tensor(item) for item in x])
        x = torch.as_tensor(x).detach()
        if x.ndim == 3:  # one item (1, H, W)
            x = x[None]
        _check_prob(x, name)
        return x.float()

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        if isinstance(output, Sequence) and not isinstance(output, torch.Tensor) and len(output) == 2:
            p, q = output
        else:
            p, q = output, None
        p = self._as_batch(p, "p")
        if not torch.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise ValueError("p must be a foreground probability in [0, 1] (apply softmax or sigmoid to logits).")
        device = self._device
        self._entropy_sum += binary_entropy(p).double().sum().to(device)
        self._foreground += (p >= self.threshold).sum().double().to(device)
        self._pixels += float(p.numel())
        self._num_slices += float(p.shape[0])
        if q is not None:
            q = self._as_batch(q, "q")
            inter, total = mask_agreement(p, q, self.threshold)
            self._intersection += inter
            self._total += total
            self._paired += float(p.shape[0])

    @sync_all_reduce(*_STATE)
    def compute(self) -> dict[str, float | int]:
        if float(self._pixels) == 0:
            raise NotComputableError("LabelFreeMetrics must have at least one example before it can be computed.")
        pixels = float(self._pixels)
        out: dict[str, float | int] = {
            "entropy": float(self._entropy_sum) / pixels,
            "foreground_fraction": float(self._foreground) / pixels,
        }
        if float(self._paired) > 0:
            total = float(self._total)
            out["agreement"] = float(self._intersection) / total if total > 0 else 0.0
        out["num_slices"] = int(round(float(self._num_slices)))
        return out

    def completed(self, engine: Engine, name: str) -> None:
        """Put every (prefixed) key of ``compute()`` into ``engine.state.metrics``; see the class docstring."""
        result = {f"{self.prefix}{k}": v for k, v in self.compute().items()}
        engine.state.metrics.update(result)
        if name not in result and self.metric_name is not None:
            engine.state.metrics[name] = result[f"{self.prefix}{self.metric_name}"]


def evaluation_key_metric(label_free: bool, threshold: float = 0.5) -> dict[str, Metric]:
    """The ``key_val_metric`` of a bundle's evaluator: ``{"IoU": SegmentationMetrics}`` on labelled slices, or
    ``{"entropy": LabelFreeMetrics}`` when the evaluation reads no label (``label_free``).

    Both read raw logits from the evaluator's output (``from_logits_output`` / :func:`probability_output`).
    """
    if not isinstance(label_free, bool):
        raise TypeError(f"label_free must be a bool, got {label_free!r}.")
    if label_free:
        return {"entropy": LabelFreeMetrics(threshold=threshold, output_transform=probability_output)}
    return {"IoU": SegmentationMetrics(threshold=threshold, output_transform=from_logits_output)}
