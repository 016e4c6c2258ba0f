"""Log a run's parameters and every loss term into the MLflow run that MONAI's ``MLFlowHandler`` opened."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

from mito_monai.engines import LossTerm
from mito_monai.handlers.history import output_scalars

__all__ = ["MLflowRunExtras", "flatten_params", "term_params"]

_PARAM_TYPES = (bool, numbers.Number, str, type(None))


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


def term_params(terms: Mapping[str, LossTerm]) -> dict[str, dict[str, Any]]:
    """What each loss term of a run is: its switch, weight, ramp-up, loss class and the loss's settings.

    The settings are the loss module's public attributes that are plain values (numbers, strings, booleans,
    None, lists of those), so a new loss option is logged without listing it anywhere.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, term in terms.items():
        loss = term.loss
        settings = {
            key: value
            for key, value in vars(loss).items()
            if not key.startswith("_")
            and key != "training"
            and (
                isinstance(value, _PARAM_TYPES)
                or (isinstance(value, (list, tuple)) and all(isinstance(v, _PARAM_TYPES) for v in value))
            )
        }
        out[name] = {
            "enabled": term.enabled,
            "weight": term.weight,
            "rampup_iterations": term.rampup_iterations,
            "loss": type(loss).__name__,
            **settings,
        }
    return out


def _find_mlflow_handler(handlers: Sequence[Any]) -> Any | None:
    """The first MONAI ``MLFlowHandler`` among ``handlers`` (what ``--tracking mlflow`` appends), or None."""
    from monai.handlers import MLFlowHandler

    return next((h for h in handlers if isinstance(h, MLFlowHandler)), None)


class MLflowRunExtras:
    """Complements ``--tracking mlflow``: the run's parameters and per-iteration loss terms.

    MONAI's stock ``MLFlowHandler`` (appended to the trainer's handlers by ``--tracking mlflow``) logs
    the total loss and the validation metrics. This handler looks for that handler among ``handlers``
    (the same list the trainer was given; in a bundle ``"@train#handlers"``, so this handler is attached
    from the ``run`` list, not listed there itself) and, through its run and the public MLflow client,
    logs ``params`` once and, every ``log_every`` iterations, every scalar output whose key starts with
    one of ``prefixes`` (``loss_*`` terms and their current ``weight_*``). Without tracking it does
    nothing, so bundles can always attach it.

    Args:
        params: run parameters (nested dicts are flattened to ``a.b``).
        terms: the run's loss terms (name -> :class:`~mito_monai.engines.LossTerm`), logged as
            ``terms.<name>.*`` by :func:`term_params`: every term, its switch, weight, ramp-up and loss settings.
        prefixes: output keys to log per iteration.
        log_every: iteration interval.
        handlers: the handler objects of the engine this one is attached to, searched for MONAI's
            ``MLFlowHandler``.
        share_run_with: objects with ``set_mlflow_run(client, run_id)`` (e.g. the
            :class:`~mito_monai.handlers.RunReport`, which logs its figures as artifacts of the run) that are
            told the run once it is known.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        terms: Mapping[str, LossTerm] | None = None,
        prefixes: Sequence[str] = ("loss_", "weight_"),
        log_every: int = 1,
        handlers: Sequence[Any] = (),
        share_run_with: Sequence[Any] = (),
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}.")
        self.params = flatten_params({**(params or {}), **({"terms": term_params(terms)} if terms else {})})
        self.prefixes = tuple(prefixes)
        self.log_every = log_every
        self.handlers = list(handlers or ())
        self.share_run_with = list(share_run_with or ())
        self._shared = False
        self._handler: Any | None = None
        self._params_logged = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self)

    def _values(self, output: Any) -> dict[str, float]:
        return output_scalars(output, self.prefixes)

    def __call__(self, engine: Engine) -> None:
        if self._handler is None:
            self._handler = _find_mlflow_handler(self.handlers)
            if self._handler is None:
                return
        run, client = getattr(self._handler, "cur_run", None), getattr(self._handler, "client", None)
        if run is None or client is None:
            return
        run_id = run.info.run_id
        if not self._shared:
            for obj in self.share_run_with:
                obj.set_mlflow_run(client, run_id)
            self._shared = True
        if not self._params_logged and self.params:
            from mlflow.entities import Param

            existing = client.get_run(run_id).data.params
            new = [Param(k, v) for k, v in self.params.items() if k not in existing]
            if new:
                client.log_batch(run_id, params=new)
            self._params_logged = True
        values = self._values(engine.state.output)
        if values:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            client.log_batch(
                run_id, metrics=[Metric(k, v, stamp, engine.state.iteration) for k, v in values.items()]
            )
