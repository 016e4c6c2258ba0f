"""Compare training runs recorded in MLflow: one row per run, the papers' table layout."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_STORES", "collect_runs", "default_tracking_uri", "download_run_report", "format_runs"]

UDA_COLUMNS = ("mAP", "F1", "MCC", "IoU")
SSL_COLUMNS = ("Dice", "Jaccard", "ECE")


#: the SQLite stores ``--tracking mlflow`` writes for the bundles run from the repository root
BUNDLE_STORES = ("bundles/r4mito/eval/mlruns.db", "bundles/dualrel/eval/mlruns.db")


def default_tracking_uri(experiment: str | None = None) -> str:
    """The bundle store (see :data:`BUNDLE_STORES`) that holds ``experiment``; the r4mito store if none does.

    A store is only opened when it exists, so this never creates one.
    """
    uris = ["sqlite:///" + str(Path(p).resolve()) for p in BUNDLE_STORES]
    if experiment is not None:
        import mlflow

        for uri in uris:
            if Path(uri[len("sqlite:///") :]).is_file():
                if mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is not None:
                    return uri
    return uris[0]


def _open_experiment(experiment: str, tracking_uri: str | None) -> tuple[Any, Any]:
    """``(MlflowClient, experiment)`` for ``experiment`` in the store (see :func:`collect_runs` for the default)."""
    import mlflow

    explicit = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = explicit or default_tracking_uri(experiment)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        where = uri if explicit else " or ".join(str(Path(p).resolve()) for p in BUNDLE_STORES)
        raise FileNotFoundError(f"no MLflow store at {where}: train with --tracking mlflow first, or pass --tracking_uri.")
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
    except mlflow.exceptions.MlflowException as e:
        raise ValueError(f"cannot read the MLflow store {uri}: {e.message}") from e
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment {experiment!r} in {uri}; experiments there: {names}.")
    return client, exp


def collect_runs(experiment: str, tracking_uri: str | None = None, columns: Sequence[str] = UDA_COLUMNS + SSL_COLUMNS) -> list[dict[str, Any]]:
    """One dict per run of ``experiment``: run name, status, method, seed and the latest value of each metric.

    The latest value is the final model's: the bundles score the final model last.
    """
    client, exp = _open_experiment(experiment, tracking_uri)
    rows = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        params, metrics = run.data.params, run.data.metrics
        row: dict[str, Any] = {
            "run": run.info.run_name,
            "status": run.info.status,
            "method": params.get("method", ""),
            "seed": params.get("seed", ""),
        }
        for c in columns:
            row[c] = metrics.get(c, math.nan)
        rows.append(row)
    return rows


def format_runs(rows: list[dict[str, Any]], fmt: str = "markdown", columns: Sequence[str] = UDA_COLUMNS + SSL_COLUMNS) -> str:
    """Rows as a Markdown table (metrics in percent, one decimal as in the papers) or CSV (raw fractions)."""
    head = ["run", "method", "seed", *columns]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=head + ["status"], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt != "markdown":
        raise ValueError(f"format must be 'markdown' or 'csv', got {fmt!r}.")

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{100.0 * v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(r.get(h, "")) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def download_run_report(experiment: str, run_name: str, destination: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Put the report inputs of MLflow run ``run_name`` of ``experiment`` into ``destination``; returns that folder.

    A run trained with the run report has them as artifacts (``report/``: ``history.jsonl``,
    ``final_metrics.json``, ``report_data.npz``). For an older run the history is rebuilt from its metric
    histories (``loss*``/``weight_*`` per iteration, the validation metrics per MLflow step, which MONAI's validation handler counts in epochs) and the final metrics are
    its latest values. With several runs of that name the newest is used.
    """
    from mito_monai.visualize.history import HISTORY_FILE, append_history_record

    client, exp = _open_experiment(experiment, tracking_uri)
    runs = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if r.info.run_name == run_name]
    if not runs:
        names = sorted({r.info.run_name for r in client.search_runs([exp.experiment_id])})
        raise ValueError(f"no run {run_name!r} in experiment {experiment!r}; runs there: {names}.")
    run = runs[0]
    run_id = run.info.run_id
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    stored = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
    for name in stored & {HISTORY_FILE, "final_metrics.json", "report_data.npz"}:
        local = Path(client.download_artifacts(run_id, f"report/{name}", str(destination / ".download")))
        os.replace(local, destination / name)
    if HISTORY_FILE not in stored:
        for key in sorted(run.data.metrics):
            event = "train" if key.startswith(("loss", "weight_")) or key == "train_loss" else "validation"
            if event == "validation" and key not in UDA_COLUMNS + SSL_COLUMNS:
                continue
            for m in client.get_metric_history(run_id, key):
                append_history_record(destination / HISTORY_FILE, event, m.step, {"loss" if key == "train_loss" else key: m.value})
    if "final_metrics.json" not in stored:
        params = run.data.params
        record = {"method": params.get("method", ""), "seed": params.get("seed", ""), "run": run_name, "metrics": dict(run.data.metrics)}
        (destination / "final_metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    return destination
