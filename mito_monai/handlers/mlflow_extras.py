"""Log a run's parameters and every loss term into the MLflow run that MONAI's ``MLFlowHandler`` opened."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

from mito_monai.handlers.history import output_scalars

__all__ = ["MLflowRunExtras", "flatten_params"]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``{"a.b": "value"}`` strings, as MLflow params must be."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        else:
            out[name] = str(value)
    return out


def _find_mlflow_handler(engine: Engine) -> Any | None:
    from monai.handlers import MLFlowHandler

    for handlers in getattr(engine, "_event_handlers", {}).values():
        for func, _, _ in handlers:
            owner = getattr(func, "__self__", None)
            if isinstance(owner, MLFlowHandler):
                return owner
    return None


class MLflowRunExtras:
    """Complements ``--tracking mlflow``: the run's parameters and per-iteration loss terms.

    MONAI's stock ``MLFlowHandler`` (added by ``--tracking mlflow``) logs the total loss and the
    validation metrics. This handler finds that handler on the same engine and, through its run,
    logs ``params`` once and, every ``log_every`` iterations, every scalar output whose key starts
    with one of ``prefixes`` (``loss_*`` terms and their current ``weight_*``). Without tracking it
    does nothing, so bundles can always list it.

    Args:
        params: run parameters (nested dicts are flattened to ``a.b``).
        prefixes: output keys to log per iteration.
        log_every: iteration interval.
    """

    def __init__(
        self, params: Mapping[str, Any] | None = None, prefixes: Sequence[str] = ("loss_", "weight_"), log_every: int = 1
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}.")
        self.params = flatten_params(params or {})
        self.prefixes = tuple(prefixes)
        self.log_every = log_every
        self._handler: Any | None = None
        self._params_logged = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self)

    def _values(self, output: Any) -> dict[str, float]:
        return output_scalars(output, self.prefixes)

    def __call__(self, engine: Engine) -> None:
        if self._handler is None:
            self._handler = _find_mlflow_handler(engine)
            if self._handler is None:
                return
        if getattr(self._handler, "cur_run", None) is None:
            return
        if not self._params_logged and self.params:
            existing = self._handler.client.get_run(self._handler.cur_run.info.run_id).data.params
            new = {k: v for k, v in self.params.items() if k not in existing}
            if new:
                self._handler._log_params(new)
            self._params_logged = True
        values = self._values(engine.state.output)
        if values:
            self._handler._log_metrics(values, step=engine.state.iteration)
