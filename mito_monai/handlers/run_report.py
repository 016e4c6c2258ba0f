"""At the end of training: draw the run report (figures + HTML) and log it as MLflow artifacts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mito_monai.runtime.distributed import is_main_process
from mito_monai.metrics import from_logits_output
from mito_monai.visualize.history import HISTORY_FILE
from mito_monai.visualize.run_report import FIGURE_FILES, METRICS_FILE, write_report
from mito_monai.visualize.run_report_data import (
    REPORT_DATA_FILE,
    ReportData,
    SliceStatistics,
    agent_maps,
    as_numpy_slice,
    center_crop,
    dualrel_maps,
    pick_examples,
    prototype_similarity,
)

__all__ = ["RunReport"]

logger = logging.getLogger(__name__)


class RunReport:
    """Draws the run report when training completes; with ``--tracking mlflow`` logs it into the run.

    While ``evaluator`` runs it keeps each slice's IoU and the calibration bins, or, when the evaluator's slices have
    no labels (``--target_eval_split none``), each slice's mean prediction entropy. The report uses the first
    evaluation at the trainer's final iteration: that is the final model's (the epoch's validation, or
    :class:`~mito_monai.handlers.FinalEvaluation`; list this handler after it), whatever later runs score
    (e.g. the selected weights of :class:`~mito_monai.handlers.LabelFreeSelection`).
    At ``COMPLETED`` it predicts the best, median and worst slices again (without labels: the most confident, median
    and least confident by entropy, drawn as image and prediction), computes the method's maps on the
    median slice (a central crop of at most ``max_crop``), and writes into ``output_dir``:
    ``report_data.npz`` and ``report/`` (the PNGs and a self-contained ``report.html``; see
    :func:`mito_monai.visualize.write_report`). The method's maps depend on the trainer's network:

    - a :class:`~mito_monai.networks.nets.DualRelNet`: the K activation maps and the prototype reliabilities;
    - a network with ``return_features`` (``MitoUNet``): the cosine similarity of the slice's features to the
      source prototypes of one labelled training batch, thresholded at ``tau`` (R4MITO Fig. 5; left out when the
      training batches have no labels, as in a source-free run), and the agents' correlation maps (Fig. 6) with the
      agent settings of the run.

    When MONAI's ``MLFlowHandler`` is on the trainer, the report, its PNGs, ``history.jsonl``,
    ``final_metrics.json`` and ``report_data.npz`` go to the run's artifacts under ``artifact_path``.
    A failure while drawing is logged and does not fail the finished training (its model is already saved).
    In a multi-process run only the main process draws, from its share of the evaluation stack.

    Args:
        evaluator: the validation evaluator (``validate#evaluator``).
        output_dir: the run's output folder (``@output_dir``).
        tau: reliability threshold of the prototype pseudo-labels.
        num_agents, agent_pool_stride, agent_temperature, agent_normalize, agent_strategy: as for the agent loss.
        shown_agents: agents whose correlation maps are drawn.
        max_crop: the largest crop the method's maps are computed on.
        artifact_path: MLflow artifact folder.
        enabled: False turns the handler off (a config switch).
    """

    def __init__(
        self,
        evaluator: Engine,
        output_dir: str | os.PathLike,
        tau: float = 0.7,
        num_agents: int = 128,
        agent_pool_stride: int = 4,
        agent_temperature: float = 1.0,
        agent_normalize: bool = False,
        agent_strategy: str = "orthogonal",
        shown_agents: int = 4,
        max_crop: int = 256,
        artifact_path: str = "report",
        enabled: bool = True,
    ) -> None:
        self.evaluator = evaluator
        self.output_dir = Path(output_dir)
        self.tau = float(tau)
        self.agent_options = {
            "num_agents": int(num_agents),
            "pool_stride": int(agent_pool_stride),
            "temperature": float(agent_temperature),
            "normalize": bool(agent_normalize),
            "strategy": agent_strategy,
        }
        self.shown_agents = int(shown_agents)
        self.max_crop = int(max_crop)
        self.artifact_path = artifact_path
        self.enabled = bool(enabled)
        self.statistics = SliceStatistics()
        self._first_at: dict[int, SliceStatistics] = {}  # trainer iteration -> its first evaluation
        self._trainer: Engine | None = None
        self._mlflow: tuple[Any, str] | None = None
        self.report_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self._trainer = engine
        self.evaluator.add_event_handler(Events.STARTED, lambda _: setattr(self, "statistics", SliceStatistics()))
        self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._evaluated)
        self.evaluator.add_event_handler(Events.COMPLETED, self._evaluation_completed)
        engine.add_event_handler(Events.COMPLETED, self)

    def _evaluated(self, evaluator: Engine) -> None:
        prob, label = from_logits_output(evaluator.state.output)
        self.statistics.update(prob, label)

    def _evaluation_completed(self, evaluator: Engine) -> None:
        iteration = self._trainer.state.iteration if self._trainer is not None else 0
        if iteration not in self._first_at:
            self._first_at = {iteration: self.statistics}  # only the latest iteration's is needed

    def set_mlflow_run(self, client: Any, run_id: str) -> None:
        """The MLflow run to log the report into (told by :class:`~mito_monai.handlers.MLflowRunExtras`)."""
        self._mlflow = (client, run_id)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        try:
            data = self.collect(engine)
            data.save(self.output_dir / REPORT_DATA_FILE)
            self.report_path = write_report(self.output_dir, self.output_dir / "report" / "report.html", overwrite=True)
            print(f"run report: {self.report_path}", flush=True)
        except Exception:  # the trained model is saved already; a figure must not fail the run
            logger.exception("could not draw the run report in %s", self.output_dir)
            return
        if self._mlflow is not None:
            self.log_artifacts(*self._mlflow)

    def log_artifacts(self, client: Any, run_id: str) -> None:
        """Log the report, its PNGs and its inputs into MLflow run ``run_id``."""
        report_dir = self.output_dir / "report"
        files = [report_dir / "report.html"] + [report_dir / name for name, _ in FIGURE_FILES.values()]
        files += [self.output_dir / name for name in (HISTORY_FILE, METRICS_FILE, REPORT_DATA_FILE)]
        for path in files:
            if path.is_file():
                client.log_artifact(run_id, str(path), self.artifact_path)

    @torch.no_grad()
    def collect(self, engine: Engine) -> ReportData:
        """Compute the report's arrays from the final model (see the class docstring)."""
        stats = self._first_at.get(engine.state.iteration, self.statistics)
        data = ReportData(slice_iou=stats.iou, slice_entropy=stats.entropy, calibration=stats.calibration())
        evaluator = self.evaluator
        dataset = getattr(evaluator.data_loader, "dataset", None)
        labelled = not stats.entropy
        if labelled:
            picks = pick_examples(stats.iou)
        else:
            picks = pick_examples([-e for e in stats.entropy], names=("most confident", "median", "least confident"))
        if dataset is None or not picks:
            return data
        eval_net, train_net = evaluator.network, engine.network
        modes = (eval_net.training, train_net.training)
        eval_net.eval()
        train_net.eval()
        device = evaluator.state.device if getattr(evaluator.state, "device", None) is not None else evaluator.device
        try:
            images = {}
            for name, index in picks:
                item = dataset[index]
                image = torch.as_tensor(item["image"]).float()[None].to(device)
                prob = torch.softmax(evaluator.inferer(image, eval_net).float(), dim=1)[:, 1]
                images[name] = image
                example = {"name": name, "index": index, "image": as_numpy_slice(image), "prob": as_numpy_slice(prob)}
                if labelled:
                    example.update(iou=stats.iou[index], label=as_numpy_slice(item["label"]) > 0.5)
                else:
                    example["entropy"] = stats.entropy[index]
                data.examples.append(example)
            target = images.get("median", next(iter(images.values())))
            self._method_maps(data, engine, train_net, target, device)
        finally:
            eval_net.train(modes[0])
            train_net.train(modes[1])
        return data

    def _method_maps(self, data: ReportData, engine: Engine, network: torch.nn.Module, image: torch.Tensor, device) -> None:
        from mito_monai.networks.nets import DualRelNet

        if isinstance(network, DualRelNet):
            crop = center_crop(image, self.max_crop, 32)
            if crop is not None:
                data.dualrel = {"image": as_numpy_slice(crop), **dualrel_maps(network, crop)}
            return
        divisor = getattr(network, "divisor", None)
        crop = center_crop(image, self.max_crop, divisor) if divisor else None
        if crop is None:
            return
        _, features = network(crop, return_features=True)
        data.agents = {
            "image": as_numpy_slice(crop),
            **agent_maps(features, shown=self.shown_agents, **self.agent_options),
        }
        batch = next(iter(engine.data_loader))
        if isinstance(batch, list):
            batch = batch[0]
        if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
            return  # no labelled training batch (a source-free run): no source prototypes to draw
        source, labels = batch["image"].float().to(device), batch["label"].to(device)
        _, source_features = network(source, return_features=True)
        data.prototypes = {
            "image": as_numpy_slice(crop),
            "similarity": prototype_similarity(source_features, labels, features),
            "tau": self.tau,
        }
