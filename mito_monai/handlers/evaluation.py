"""End-of-training evaluation of the final model, printed as a table and written as JSON."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from mito_monai.runtime.distributed import is_main_process

__all__ = [
    "LABEL_FREE_NOTE",
    "EvaluationReport",
    "FinalEvaluation",
    "format_metrics_table",
    "report_metrics",
    "scalar_metrics",
]

#: metrics shown as percentages, in this order (UDA convention first, then SSL, then calibration)
DEFAULT_COLUMNS = ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE")
#: what the record and the printed table of a label-free evaluation say about its scores
LABEL_FREE_NOTE = (
    "label-free: no label was read; entropy (nats, lower = more confident) and foreground_fraction (predicted "
    "mitochondria) of the final model on unlabelled target slices. These are not segmentation scores (no IoU)."
)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The plain-number entries of an engine's ``state.metrics`` (dict-valued entries are dropped)."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            out[key] = value
    return out


def format_metrics_table(metrics: Mapping[str, Any], title: str = "", columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A fixed-width table: one row per metric, values in percent (as the papers report them)."""
    values = scalar_metrics(metrics)
    shown = [c for c in columns if c in values] + sorted(k for k in values if k not in columns)
    width = max([len(k) for k in shown] + [6])
    lines = [title] if title else []
    lines.append(f"{'metric'.ljust(width)} | value")
    lines.append(f"{'-' * width}-+-------")
    for key in shown:
        v = values[key]
        if key in columns and isinstance(v, float):
            text = "  n/a" if math.isnan(v) else f"{100.0 * v:6.2f}"
        elif isinstance(v, float):
            text = f"{v:.4f}"
        else:
            text = f"{v}"
        lines.append(f"{key.ljust(width)} | {text}")
    return "\n".join(lines)


class EvaluationReport:
    """Attach to an evaluator: when it completes, print its metrics as a table and write them as JSON.

    Args:
        output_path: JSON file (``None`` = not written).
        title: heading of the printed table.
        extra: more fields for the JSON (e.g. the checkpoint and the data evaluated).
    """

    def __init__(
        self, output_path: str | os.PathLike | None = None, title: str = "evaluation", extra: Mapping[str, Any] | None = None
    ) -> None:
        self.output_path = Path(output_path) if output_path is not None else None
        self.title = title
        self.extra = dict(extra or {})
        self.metrics: dict[str, float | int] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.metrics = report_metrics(engine.state.metrics, self.title, self.output_path, self.extra)


class FinalEvaluation(EvaluationReport):
    """When training completes, make sure ``evaluator`` has scored the final model, then report it.

    Validation during training is for monitoring only: the reported figures are always those of the
    final model (no checkpoint is chosen by its score on the evaluation stack). In a multi-process
    run attach it on every rank (the evaluator's metrics are all-reduced over the ranks' shares of
    the stack); rank 0 alone prints and writes the result.

    With ``label_free=True`` (an evaluator of unlabelled images with
    :class:`~mito_monai.metrics.LabelFreeMetrics`) the printed table and the JSON say so: the JSON gains
    ``"labels_used": false`` and ``"evaluation"`` (:data:`LABEL_FREE_NOTE`), the table a line under its title; a
    segmentation metric in such an evaluator's results is an error (it would need labels).

    Args:
        evaluator: the validation evaluator (e.g. ``validate#evaluator``).
        output_path: JSON file for the final metrics (``None`` = not written).
        title: heading of the printed table.
        extra: more fields for the JSON (e.g. method, seed).
        label_free: the evaluator reads no label and reports label-free scores.
    """

    def __init__(
        self,
        evaluator: Engine,
        output_path: str | os.PathLike | None = None,
        title: str = "final model on the evaluation stack",
        extra: Mapping[str, Any] | None = None,
        label_free: bool = False,
    ) -> None:
        super().__init__(output_path, title, extra)
        self.evaluator = evaluator
        self.label_free = bool(label_free)

    def __call__(self, engine: Engine) -> None:
        state = self.evaluator.state
        if getattr(state, "epoch", 0) != engine.state.epoch or not state.metrics:
            self.evaluator.run(engine.state.epoch)
        title, extra = f"{self.title} (iteration {engine.state.iteration})", {"iteration": engine.state.iteration}
        if self.label_free:
            segmentation = sorted(set(scalar_metrics(self.evaluator.state.metrics)) & set(DEFAULT_COLUMNS))
            if segmentation:
                raise ValueError(f"a label-free evaluation cannot report segmentation metrics, got {segmentation}.")
            title = f"{title}\n{LABEL_FREE_NOTE}"
            extra.update(labels_used=False, evaluation=LABEL_FREE_NOTE)
        if not is_main_process():
            self.metrics = scalar_metrics(self.evaluator.state.metrics)
            return
        self.metrics = report_metrics(
            self.evaluator.state.metrics, title=title, output_path=self.output_path, extra={**extra, **self.extra}
        )


def report_metrics(
    metrics: Mapping[str, Any],
    title: str,
    output_path: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, float | int]:
    """Print ``metrics`` as a table (and log it); write ``{**extra, "metrics": ...}`` atomically as JSON."""
    values = scalar_metrics(metrics)
    table = format_metrics_table(values, title=title)
    print(table, flush=True)
    if output_path is not None:
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        record = {**dict(extra or {}), "metrics": values}
        tmp = output_path.with_name(f".{output_path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, output_path)
    return values
