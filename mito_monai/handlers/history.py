"""Record a run's loss terms, their weights and the validation metrics to ``eval/history.jsonl`` while it trains."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mito_monai.runtime.distributed import is_main_process
from mito_monai.handlers.evaluation import scalar_metrics
from mito_monai.visualize.history import HISTORY_FILE, RunHistory, append_history_record, read_history

__all__ = ["TrainingHistory", "output_scalars"]


def output_scalars(output: Any, prefixes: Sequence[str]) -> dict[str, float]:
    """Scalar entries of an engine output dict whose key starts with one of ``prefixes`` (one-element tensors included)."""
    if isinstance(output, list) and output and isinstance(output[0], Mapping):
        output = output[0]
    if not isinstance(output, Mapping):
        return {}
    values = {}
    for key, value in output.items():
        if not isinstance(key, str) or not key.startswith(tuple(prefixes)):
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            values[key] = float(value)
    return values


class TrainingHistory:
    """Writes the run's history (see :mod:`mito_monai.visualize.history`) as JSON lines while it trains.

    Every ``log_every`` iterations: the total ``loss`` and every ``loss_<term>`` / ``weight_<term>`` the trainers
    put into ``engine.state.output``. Whenever ``evaluator`` completes: its scalar metrics, at the trainer's
    iteration. A run that starts from iteration 0 starts a new file; a resumed run keeps the records up to the
    iteration it resumes from. Only the main process writes. (With ``--tracking mlflow`` the same series also
    go to MLflow, through :class:`~mito_monai.handlers.MLflowRunExtras` and MONAI's ``MLFlowHandler``.)

    Args:
        output_path: the JSON-lines file, normally ``<output_dir>/history.jsonl``; a folder means ``folder/history.jsonl``.
        evaluator: the validation evaluator (``validate#evaluator``), or None.
        prefixes: output keys recorded per iteration (``"loss"`` also matches ``loss_<term>``).
        log_every: iteration interval.
    """

    def __init__(
        self,
        output_path: str | os.PathLike,
        evaluator: Engine | None = None,
        prefixes: Sequence[str] = ("loss", "weight_"),
        log_every: int = 1,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}.")
        path = Path(output_path)
        self.path = path / HISTORY_FILE if path.is_dir() else path
        self.evaluator = evaluator
        self.prefixes = tuple(prefixes)
        self.log_every = log_every
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self._trainer = engine
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self.iteration_completed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self.validation_completed)

    def started(self, engine: Engine) -> None:
        if not is_main_process():
            return
        start = engine.state.iteration
        kept = read_history(self.path, max_iteration=start) if start > 0 and self.path.is_file() else RunHistory()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("")
        for event in ("train", "validation"):
            table = kept.train if event == "train" else kept.validation
            for iteration in sorted({i for series in table.values() for i in series}):
                values = {k: series[iteration] for k, series in table.items() if iteration in series}
                append_history_record(tmp, event, iteration, values)
        os.replace(tmp, self.path)

    def iteration_completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        values = output_scalars(engine.state.output, self.prefixes)
        if values:
            append_history_record(self.path, "train", engine.state.iteration, values, epoch=engine.state.epoch)

    def validation_completed(self, evaluator: Engine) -> None:
        if not is_main_process() or self._trainer is None:
            return
        values = {k: float(v) for k, v in scalar_metrics(evaluator.state.metrics).items()}
        if values:
            state = self._trainer.state
            append_history_record(self.path, "validation", state.iteration, values, epoch=state.epoch)
