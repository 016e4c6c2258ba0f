"""Ignite event handlers: atomic checkpoints and resuming, the final evaluation report, MLflow extras, the run
history and report, label-free selection."""

from mito_monai.handlers.checkpoint import AtomicCheckpointSaver, resume_training, run_state_objects
from mito_monai.handlers.history import TrainingHistory, output_scalars
from mito_monai.handlers.mlflow_extras import MLflowRunExtras, flatten_params, term_params
from mito_monai.handlers.selection import LabelFreeSelection
from mito_monai.handlers.evaluation import (
    EvaluationReport,
    FinalEvaluation,
    format_metrics_table,
    report_metrics,
    scalar_metrics,
)
from mito_monai.handlers.run_report import RunReport

__all__ = [
    "AtomicCheckpointSaver",
    "EvaluationReport",
    "FinalEvaluation",
    "LabelFreeSelection",
    "MLflowRunExtras",
    "RunReport",
    "TrainingHistory",
    "flatten_params",
    "term_params",
    "format_metrics_table",
    "output_scalars",
    "report_metrics",
    "resume_training",
    "run_state_objects",
    "scalar_metrics",
]
