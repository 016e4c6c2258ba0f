"""Label-free model selection: keep the checkpoint that a criterion on the unlabelled target stack prefers."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mito_monai.runtime.distributed import is_main_process
from mito_monai.runtime.checkpoint_files import atomic_torch_save, unwrap_module
from mito_monai.handlers.evaluation import scalar_metrics
from mito_monai.metrics.label_free import LABEL_FREE_CRITERIA, LabelFreeScores
from mito_monai.runtime.precision import as_precision

__all__ = ["LabelFreeSelection"]


class LabelFreeSelection:
    """Every ``interval`` epochs score the network on unlabelled target images; keep the best weights.

    The score is a label-free criterion (:mod:`mito_monai.metrics.label_free`): ``"agreement"``, the Dice
    between the mask of each image and the mask of its transformed copy (both axes flipped, plus
    deterministic Gaussian noise of ``noise_std`` times the image's standard deviation), mapped back;
    or ``"entropy"``, the mean prediction entropy. ``data_loader`` must yield images only: the handler
    never reads a label (pass a dataset built with ``with_label=False``).

    When training completes, the selected weights are scored on the evaluation stack by ``evaluator``
    (the same one that scores the final model) and a ``selection`` block is added to the JSON at
    ``output_path`` (``final_metrics.json``)::

        {"criterion": "agreement", "iteration": N, "score": s, "metrics": {...},
         "history": [{"iteration": n, "entropy": ..., "agreement": ..., "foreground_fraction": ...,
                      "test": {...} (only with hindsight)}, ...],
         "best_in_hindsight": {"iteration": n, "IoU": ...} (only with hindsight)}

    With ``hindsight=True`` the evaluation stack is also scored at every check, for the report only
    (how far the label-free choice is from the best checkpoint in hindsight); it never influences the
    choice. Attach after :class:`~mito_monai.handlers.FinalEvaluation` (a later handler in the list).

    Args:
        network: the trained network (possibly DDP-wrapped).
        data_loader: unlabelled target batches ``{"image": (B, 1, H, W)}``.
        evaluator: evaluator of the evaluation stack (``validate#evaluator``).
        inferer: called as ``inferer(images, network)`` (e.g. a ``SlidingWindowInferer``); ``None``
            calls the network on the whole images.
        criterion: a key of :data:`~mito_monai.metrics.LABEL_FREE_CRITERIA`.
        interval: epochs between checks (the final model is always a candidate).
        start_iteration: checks before this iteration are recorded in the history but are no
            candidates (an early, barely adapted model can have the lowest entropy: measured once,
            ``docs/results.md``); the final model is a candidate whatever this is.
        output_path: ``final_metrics.json`` to extend (``None``: not written).
        save_path: where the selected weights go (``None``: not written).
        hindsight: also score the evaluation stack at every check (report only).
        noise_std: noise of the transformed copy, in units of each image's standard deviation.
        amp, amp_dtype: autocast while scoring: ``"auto"`` (chosen by the hardware for the device scored on,
            :func:`mito_monai.runtime.resolve_precision`), true/false, or a resolved ``Precision``.
        image_key: the batch key of the images.
        enabled: ``False`` makes :meth:`attach` a no-op (a config switch).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        data_loader: Iterable,
        evaluator: Engine | None = None,
        inferer: Any = None,
        criterion: str = "entropy",
        interval: int = 1,
        start_iteration: int = 0,
        output_path: str | os.PathLike | None = None,
        save_path: str | os.PathLike | None = None,
        hindsight: bool = False,
        noise_std: float = 0.1,
        amp: Any = "auto",
        amp_dtype: torch.dtype | str = "auto",
        image_key: str = "image",
        enabled: bool = True,
    ) -> None:
        if criterion not in LABEL_FREE_CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(LABEL_FREE_CRITERIA)}, got {criterion!r}.")
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1 epoch, got {interval}.")
        if int(start_iteration) < 0:
            raise ValueError(f"start_iteration must be >= 0, got {start_iteration}.")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        self.network = network
        self.data_loader = data_loader
        self.evaluator = evaluator
        self.inferer = inferer
        self.criterion = criterion
        self.interval = int(interval)
        self.start_iteration = int(start_iteration)
        self.output_path = Path(output_path) if output_path is not None else None
        self.save_path = Path(save_path) if save_path is not None else None
        self.hindsight = bool(hindsight)
        self.noise_std = float(noise_std)
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.image_key = image_key
        self.enabled = bool(enabled)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self.selection: dict[str, Any] | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.check)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.inferer(images, self.network) if self.inferer is not None else self.network(images)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits.float()
        return torch.softmax(logits, dim=1)[:, 1:2] if logits.shape[1] > 1 else torch.sigmoid(logits)

    def scores(self, device: torch.device | str) -> dict[str, float]:
        """The label-free scores of the network as it is now, on the whole ``data_loader``."""
        was_training = self.network.training
        self.network.eval()
        acc = LabelFreeScores()
        generator = torch.Generator().manual_seed(0)  # the same noise at every check
        device = torch.device(device)
        try:
            precision = as_precision(self.amp, self.amp_dtype, device=device)
            with torch.no_grad(), torch.autocast(device.type, dtype=precision.dtype, enabled=precision.amp):
                for batch in self.data_loader:
                    images = batch[self.image_key] if isinstance(batch, dict) else batch
                    images = torch.as_tensor(images).float()
                    std = images.flatten(1).std(dim=1).view(-1, *([1] * (images.ndim - 1)))
                    noise = torch.randn(images.shape, generator=generator) * std * self.noise_std
                    images = images.to(device)
                    p = self._predict(images)
                    q = self._predict(torch.flip(images, dims=(-2, -1)) + noise.to(device))
                    acc.update(p.cpu(), torch.flip(q, dims=(-2, -1)).cpu())
        finally:
            self.network.train(was_training)
        return acc.compute()

    def check(self, engine: Engine, final: bool = False) -> None:
        """Score the network now; keep its weights if it is the best candidate so far."""
        if self.history and self.history[-1]["iteration"] == engine.state.iteration:
            return
        record: dict[str, Any] = {"iteration": engine.state.iteration, **self.scores(engine.state.device)}
        if self.hindsight and self.evaluator is not None:
            state = self.evaluator.state
            if getattr(state, "epoch", 0) != engine.state.epoch or not state.metrics:  # not validated this epoch
                self.evaluator.run(engine.state.epoch)
            record["test"] = scalar_metrics(self.evaluator.state.metrics)
        record["candidate"] = final or engine.state.iteration >= self.start_iteration
        self.history.append(record)
        if record["candidate"]:
            self._consider(record, engine)
        self.logger.info(
            f"label-free selection at iteration {engine.state.iteration}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float))
            + (f" (best: iteration {self.best['iteration']})" if self.best else " (not a candidate yet)")
        )

    def _consider(self, record: dict[str, Any], engine: Engine) -> None:
        """Keep the network's current weights if ``record`` (a check of them) beats the best so far."""
        value = record[self.criterion]
        larger = LABEL_FREE_CRITERIA[self.criterion]
        if self.best is None or (value > self.best["score"] if larger else value < self.best["score"]):
            self.best = {"iteration": engine.state.iteration, "score": value}
            self._best_state = {k: v.detach().clone() for k, v in unwrap_module(self.network).state_dict().items()}

    def completed(self, engine: Engine) -> None:
        """Check the final model, score the selected weights on the evaluation stack and report them."""
        self.check(engine, final=True)
        last = self.history[-1]
        if not last["candidate"]:  # the final model was checked before start_iteration (a short run)
            last["candidate"] = True
            self._consider(last, engine)
        assert self.best is not None and self._best_state is not None
        metrics: dict[str, Any] = {}
        if self.evaluator is not None:
            if self.best["iteration"] == engine.state.iteration and self.evaluator.state.metrics:
                metrics = scalar_metrics(self.evaluator.state.metrics)  # the final model, scored already
            if not metrics:
                module = unwrap_module(self.network)
                final_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                module.load_state_dict(self._best_state)
                try:
                    self.evaluator.run(engine.state.epoch)
                    metrics = scalar_metrics(self.evaluator.state.metrics)
                finally:
                    module.load_state_dict(final_state)
        self.selection = {
            "criterion": self.criterion,
            "iteration": self.best["iteration"],
            "score": self.best["score"],
            "metrics": metrics,
            "history": self.history,
        }
        tested = [r for r in self.history if "IoU" in r.get("test", {})]
        if tested:
            top = max(tested, key=lambda r: r["test"]["IoU"])
            self.selection["best_in_hindsight"] = {"iteration": top["iteration"], "IoU": top["test"]["IoU"]}
        if not is_main_process():
            return
        if self.save_path is not None:
            atomic_torch_save(self._best_state, self.save_path)
        if "IoU" in metrics:
            print(f"label-free selection ({self.criterion}): iteration {self.best['iteration']}, IoU {100 * metrics['IoU']:.2f}", flush=True)
        if self.output_path is not None:
            record = json.loads(self.output_path.read_text()) if self.output_path.is_file() else {}
            record["selection"] = self.selection
            tmp = self.output_path.with_name(f".{self.output_path.name}.tmp")
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
            os.replace(tmp, self.output_path)
