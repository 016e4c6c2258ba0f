"""A run report: the figures of a finished training run as PNG files and one self-contained HTML page.

Inputs are the files a bundle run leaves in its ``eval/`` folder: ``history.jsonl`` (loss terms, weights and
validation metrics per iteration), ``final_metrics.json`` (the final model's metrics) and ``report_data.npz``
(example slices, calibration bins, the method's maps), and ``segmentation/measurements.csv`` when the bundle's
inference ran with ``--measure true`` (the morphology figure). A missing input leaves its figures out, and the page says so.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mito_monai.io.errors import DataError
from mito_monai.visualize import figures
from mito_monai.visualize.history import HISTORY_FILE, RunHistory, read_history
from mito_monai.visualize.morphology import find_measurements, measurement_figure_from_files
from mito_monai.visualize.run_report_data import REPORT_DATA_FILE, ReportData, section

__all__ = ["FIGURE_FILES", "METRICS_FILE", "find_eval_dir", "render_html", "write_compare_plot", "write_report"]

METRICS_FILE = "final_metrics.json"
#: figure key -> (PNG file name, heading)
FIGURE_FILES = {
    "loss": ("loss.png", "Loss of every term and its weight"),
    "validation": ("validation.png", "Validation metrics during training"),
    "reliability": ("reliability.png", "Calibration of the final model"),
    "slices": ("slices.png", "Best, median and worst test slices (IoU)"),
    "prototypes": ("prototypes.png", "R4MITO: reliable prototype pseudo-labels on a target slice (paper Fig. 5)"),
    "agents": ("agents.png", "R4MITO: agent-level correlation of a few agents (paper Fig. 6)"),
    "dualrel": ("dualrel.png", "DualRel: activation maps (mitochondria / background halves) and prototype reliabilities"),
    "morphology": ("morphology.png", "Mitochondria morphology (inference --measure true): volume, sphericity, the largest objects"),
}
#: final-metric columns by convention (docs/design.md section 5)
CONVENTIONS = (
    ("UDA papers: per slice, averaged", ("mAP", "F1", "MCC", "IoU")),
    ("SSL papers: whole volume", ("Dice", "Jaccard")),
    ("calibration (15 bins)", ("ECE",)),
)


def find_eval_dir(run: str | os.PathLike) -> Path:
    """The folder holding a run's report inputs: ``run`` itself or ``run/eval``.

    Raises:
        DataError: neither holds ``history.jsonl``, ``final_metrics.json`` or ``report_data.npz``.
    """
    run = Path(run)
    wanted = (HISTORY_FILE, METRICS_FILE, REPORT_DATA_FILE)
    for candidate in (run, run / "eval"):
        if any((candidate / name).is_file() for name in wanted):
            return candidate
    raise DataError(f"{run} is not a training run: expected {', '.join(wanted)} in it or in {run / 'eval'}.")


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("metrics"), dict):
            raise ValueError
    except (ValueError, AttributeError):
        raise DataError(f"{path} is not a final-metrics file: expected JSON with a 'metrics' object.") from None
    return record


def _make_figures(history: RunHistory | None, data: ReportData | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if history:
        out["loss"] = figures.loss_figure(history)
        out["validation"] = figures.validation_figure(history)
    if data is not None:
        if data.calibration:
            out["reliability"] = figures.reliability_figure(**data.calibration)
        if data.examples:
            out["slices"] = figures.slice_examples_figure(data.examples)
        if section(data.prototypes, "image", "similarity", "tau"):
            out["prototypes"] = figures.prototype_figure(data.prototypes["image"], data.prototypes["similarity"], float(data.prototypes["tau"]))
        if section(data.agents, "image", "correlations", "positions", "all_positions"):
            out["agents"] = figures.agents_figure(**data.agents)
        if section(data.dualrel, "image", "activations", "reliability"):
            out["dualrel"] = figures.dualrel_figure(**data.dualrel)
    return out


#: headings of a run evaluated without labels, where they differ from :data:`FIGURE_FILES`
LABEL_FREE_HEADINGS = {
    "validation": "Label-free scores during training (no labels)",
    "slices": "Most confident, median and least confident unlabelled slices (entropy; no labels)",
}


def _label_free_table(metrics: Mapping[str, Any]) -> str:
    rows = [
        f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(f'{value:.4f}' if isinstance(value, float) else str(value))}</td></tr>"
        for key, value in metrics.items()
    ]
    return (
        "<p>Label-free evaluation: no label was read. These scores are not segmentation accuracy "
        "(a model that predicts nothing is confident too).</p>"
        "<table><thead><tr><th>label-free score</th><th>value</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _metrics_table(metrics: Mapping[str, Any], label_free: bool = False) -> str:
    if label_free:
        return _label_free_table(metrics)
    rows = []
    for convention, keys in CONVENTIONS:
        for key in keys:
            value = metrics.get(key)
            text = "n/a" if not isinstance(value, (int, float)) or math.isnan(value) else f"{100.0 * value:.2f}"
            rows.append(f"<tr><td>{html.escape(convention)}</td><td>{key}</td><td>{text}</td></tr>")
    extra = {k: v for k, v in metrics.items() if k not in {c for _, keys in CONVENTIONS for c in keys}}
    for key, value in sorted(extra.items()):
        rows.append(f"<tr><td>other</td><td>{html.escape(str(key))}</td><td>{html.escape(str(value))}</td></tr>")
    return (
        "<table><thead><tr><th>convention</th><th>metric</th><th>%</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { border: 1px solid #bbb; padding: 2px 10px; text-align: left; }
.missing { color: #888; font-style: italic; } .meta { color: #555; }
"""
# sets data-images-loaded / data-images-broken on <body> once the page has loaded (read by the browser test)
_CHECK_IMAGES = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-broken', String(imgs.length - ok));
});
"""


def render_html(
    title: str,
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any] | None,
    pngs: Mapping[str, bytes],
    notes: Sequence[str] = (),
    label_free: bool = False,
) -> str:
    """The report page: every PNG embedded as base64 (no file beside it is needed to view it).

    ``label_free``: the run was evaluated without labels; its final scores are shown as label-free scores.
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style><script>{_CHECK_IMAGES}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        parts.append("<p class='meta'>" + "; ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items()) + "</p>")
    parts.append("<h2>Final model</h2>")
    parts.append(_metrics_table(metrics, label_free) if metrics is not None else "<p class='missing'>no final_metrics.json in this run</p>")
    for key, (_, heading) in FIGURE_FILES.items():
        if key in pngs:
            heading = LABEL_FREE_HEADINGS.get(key, heading) if label_free else heading
            data = base64.b64encode(pngs[key]).decode("ascii")
            parts.append(f"<h2>{html.escape(heading)}</h2><img alt='{key}' src='data:image/png;base64,{data}'>")
    for note in notes:
        parts.append(f"<p class='missing'>{html.escape(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it, or choose another --output.")


def write_report(
    eval_dir: str | os.PathLike, output: str | os.PathLike | None = None, title: str | None = None, overwrite: bool = False
) -> Path:
    """Draw a run's report: PNG files and ``report.html`` (self-contained) in the folder of ``output``.

    Args:
        eval_dir: the run (its ``eval/`` folder, or a folder above it; see :func:`find_eval_dir`).
        output: the HTML file (default ``<eval_dir>/report/report.html``); the PNGs are written beside it.
        title: page heading (default: the method and seed of the run).
        overwrite: replace an existing HTML file / PNGs of the same names.

    Returns:
        the HTML path.
    """
    eval_dir = find_eval_dir(eval_dir)
    output = Path(output) if output is not None else eval_dir / "report" / "report.html"
    record = _read_metrics(eval_dir / METRICS_FILE) if (eval_dir / METRICS_FILE).is_file() else None
    history = read_history(eval_dir / HISTORY_FILE) if (eval_dir / HISTORY_FILE).is_file() else None
    data = ReportData.load(eval_dir / REPORT_DATA_FILE) if (eval_dir / REPORT_DATA_FILE).is_file() else None
    figs = _make_figures(history, data)
    measurements = find_measurements(eval_dir)  # written by the bundle's inference with --measure true
    if measurements is not None:
        figs["morphology"] = measurement_figure_from_files(measurements)
    pngs = {key: figures.figure_png(fig) for key, fig in figs.items()}
    targets = [output] + [output.with_name(FIGURE_FILES[key][0]) for key in pngs]
    for path in targets:
        _check_writable(path, overwrite)
    notes = []
    if history is None:
        notes.append(f"no {HISTORY_FILE}: loss and validation curves were not recorded for this run.")
    if data is None:
        notes.append(f"no {REPORT_DATA_FILE}: calibration, example slices and method figures were not recorded for this run.")
    meta = {k: record[k] for k in ("method", "seed", "iteration", "target", "evaluation") if record and k in record}
    if title is None:
        title = "run report" + (f": {meta.get('method')} (seed {meta.get('seed')})" if "method" in meta else "")
    output.parent.mkdir(parents=True, exist_ok=True)
    for key, png in pngs.items():
        output.with_name(FIGURE_FILES[key][0]).write_bytes(png)
    label_free = bool(record) and record.get("labels_used") is False
    page = render_html(title, meta, record["metrics"] if record else None, pngs, notes, label_free=label_free)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(page)
    os.replace(tmp, output)
    return output


def write_compare_plot(rows: Sequence[Mapping[str, Any]], metric: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The bar chart of :func:`mito_monai.visualize.figures.compare_figure` as a PNG file."""
    path = Path(path)
    _check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figures.figure_png(figures.compare_figure(rows, metric)))
    return path
