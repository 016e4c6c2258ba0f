"""A training run's history as a JSON-lines file: loss terms and weights per iteration, validation metrics.

One record per line, written while the run trains (see :class:`mito_monai.handlers.TrainingHistory`):

- ``{"event": "train", "iteration": 12, "epoch": 1, "values": {"loss": 0.71, "loss_sup": 0.69, "weight_cf": 0.02}}``
- ``{"event": "validation", "iteration": 300, "epoch": 3, "values": {"IoU": 0.42, "Dice": 0.59}}``

Iterations count finished iterations of the trainer (ignite's ``state.iteration``). A later record for the same
event and iteration replaces an earlier one (a resumed run, or the final evaluation repeating the last one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mito_monai.io.errors import DataError

__all__ = ["EVENTS", "HISTORY_FILE", "RunHistory", "append_history_record", "read_history"]

#: file name of the history inside a run's ``eval/`` folder
HISTORY_FILE = "history.jsonl"
#: the kinds of record
EVENTS = ("train", "validation")


@dataclass
class RunHistory:
    """Series of one run: ``train[key]`` and ``validation[key]`` map iteration -> value."""

    train: dict[str, dict[int, float]] = field(default_factory=dict)
    validation: dict[str, dict[int, float]] = field(default_factory=dict)

    def add(self, event: str, iteration: int, values: Mapping[str, float]) -> None:
        """Record ``values`` of ``event`` (``"train"`` or ``"validation"``) at ``iteration`` (replacing earlier ones)."""
        if event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {event!r}.")
        table = self.train if event == "train" else self.validation
        for key, value in values.items():
            table.setdefault(key, {})[int(iteration)] = float(value)

    def series(self, event: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(iterations, values)`` of one key, sorted by iteration (empty arrays when it was never recorded)."""
        table = (self.train if event == "train" else self.validation).get(key, {})
        its = np.array(sorted(table), dtype=np.int64)
        return its, np.array([table[i] for i in its], dtype=np.float64)

    def keys(self, event: str, prefix: str = "") -> list[str]:
        """Recorded keys of ``event`` that start with ``prefix``, sorted."""
        table = self.train if event == "train" else self.validation
        return sorted(k for k in table if k.startswith(prefix))

    def __bool__(self) -> bool:
        return bool(self.train or self.validation)


def append_history_record(
    path: str | os.PathLike, event: str, iteration: int, values: Mapping[str, float], epoch: int | None = None
) -> None:
    """Append one record to the history file at ``path`` (its folder is created); non-finite values become null."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}.")
    record = {
        "event": event,
        "iteration": int(iteration),
        "epoch": None if epoch is None else int(epoch),
        "values": {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_history(path: str | os.PathLike, max_iteration: int | None = None) -> RunHistory:
    """Read a history file; ``max_iteration`` drops records after it (what a resumed run keeps).

    Raises:
        DataError: a line that is not a history record, naming the file and the line.
    """
    path = Path(path)
    history = RunHistory()
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                event, iteration, values = record["event"], int(record["iteration"]), record["values"]
                if event not in EVENTS or not isinstance(values, dict):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"{path}, line {number}: expected a history record "
                    '{"event": "train"|"validation", "iteration": N, "values": {...}}.'
                ) from None
            if max_iteration is not None and iteration > max_iteration:
                continue
            history.add(event, iteration, {k: (math.nan if v is None else v) for k, v in values.items()})
    return history
