"""Two-stage domain adaptation as one command: a source model (NoAdapt), then that model adapted to the target.

The project's recommended recipe (``bundles/r4mito/configs/protocols/adapt_recommended.json`` on top of
``cpu_reference_adapt.json``: warm start from the source model, EMA teacher, pseudo-label term at weight 1,
the CAFA code's augmentation of both domains) at a budget small enough for the bundle's quick start. Both
stages are plain bundle runs of ``train.json``; the two final models are scored on the target's evaluation
stack and printed side by side, so the gain of adapting is visible at once.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RECOMMENDED_ADAPTATION_FILE", "format_comparison", "recommended_adaptation", "run_two_stage"]

#: the recommended stage-2 settings, relative to the folder of ``train.json``
RECOMMENDED_ADAPTATION_FILE = Path("protocols") / "adapt_recommended.json"


def recommended_adaptation(config_file: str | os.PathLike) -> dict[str, Any]:
    """The recommended stage-2 settings: ``protocols/adapt_recommended.json`` beside ``config_file``
    (``train.json``), without its ``_description``; one file serves the quick start and the protocols.

    Raises:
        FileNotFoundError: naming the file when it is missing.
    """
    path = Path(config_file).parent / RECOMMENDED_ADAPTATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected the recommended adaptation settings of the bundle.")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
_COLUMNS = ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard")


def format_comparison(rows: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A fixed-width table, one row per model and one column per metric (percent), plus the gain of the last row
    over the first.

    Args:
        rows: model name -> metrics (fractions in [0, 1], as in ``final_metrics.json``); at least one row.
    """
    if not rows:
        raise ValueError("rows must hold at least one model's metrics.")
    names = list(rows)
    columns = [c for c in _COLUMNS if all(c in rows[n] for n in names)]
    width = max(len(n) for n in [*names, "model", "gain"])
    lines = [title] if title else []
    lines.append(" | ".join(["model".ljust(width), *(c.rjust(7) for c in columns)]))
    lines.append("-+-".join(["-" * width, *("-" * 7 for _ in columns)]))

    def cell(v: float) -> str:
        return "    n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:7.1f}"

    for name in names:
        lines.append(" | ".join([name.ljust(width), *(cell(rows[name][c]) for c in columns)]))
    if len(names) > 1:
        first, last = rows[names[0]], rows[names[-1]]
        lines.append(" | ".join(["gain".ljust(width), *(f"{100.0 * (last[c] - first[c]):+7.1f}" for c in columns)]))
    return "\n".join(lines)


def _epoch_length(iterations: int) -> int:
    """The largest divisor of ``iterations`` up to 100 (training runs whole epochs)."""
    return max(d for d in range(1, min(100, iterations) + 1) if iterations % d == 0)


def _stage(config_file: str, meta_file: str | None, settings: Mapping[str, Any]) -> dict:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=config_file, meta_file=meta_file, logging_file=False, **settings)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    output_dir = Path(workflow.parser.get_parsed_content("output_dir"))
    return json.loads((output_dir / "final_metrics.json").read_text())


def run_two_stage(
    config_file: str | os.PathLike,
    meta_file: str | os.PathLike | None = None,
    source_iterations: int = 150,
    adapt_iterations: int = 100,
    method: str = "r4mito",
    ckpt_dir: str | os.PathLike = "trained",
    output_dir: str | os.PathLike = "eval",
    adaptation: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict:
    """Train a source model, adapt it, and print both final models' metrics side by side.

    Stage 1 runs ``config_file`` with ``method="noadapt"`` for ``source_iterations`` into ``ckpt_dir/source`` and
    ``output_dir/source``; stage 2 starts from its ``model.pt`` (``init_checkpoint``) and trains ``method`` with the
    ``adaptation`` settings (default :func:`recommended_adaptation`) for ``adapt_iterations`` into ``ckpt_dir`` and
    ``output_dir`` (``model.pt``, ``final_metrics.json``, the run report). The comparison is printed and written to
    ``output_dir/two_stage.json``.

    Args:
        config_file, meta_file: the bundle's ``train.json`` and ``metadata.json``.
        source_iterations, adapt_iterations: iterations of each stage (>= 1).
        method: the stage-2 method (``baseline`` or ``r4mito``; ``noadapt`` continues the source model, the
            same-budget control).
        ckpt_dir, output_dir: where stage 2 writes; stage 1 writes into their ``source`` subfolders.
        adaptation: stage-2 settings replacing :func:`recommended_adaptation`.
        overrides: settings of both stages (e.g. ``dataset_dir``, ``seed``, ``amp``).

    Returns:
        ``{"rows": {name: metrics}, "iterations": ..., "seconds": ..., "precision": ...}``.
    """
    if int(source_iterations) < 1 or int(adapt_iterations) < 1:
        raise ValueError(f"source_iterations and adapt_iterations must be >= 1, got {source_iterations}, {adapt_iterations}.")
    config_file, meta = str(config_file), (str(meta_file) if meta_file else None)
    ckpt_dir, output_dir = Path(ckpt_dir), Path(output_dir)
    n1, n2 = int(source_iterations), int(adapt_iterations)
    quiet = {"selection": False, "val_interval": 10**9}  # the final models are scored once each (FinalEvaluation)
    start = time.perf_counter()
    source = _stage(config_file, meta, {
        **quiet, "report": False, **overrides, "method": "noadapt", "num_iterations": n1, "epoch_length": _epoch_length(n1),
        "ckpt_dir": str(ckpt_dir / "source"), "output_dir": f"$'{output_dir / 'source'}'",
    })
    middle = time.perf_counter()
    adapted = _stage(config_file, meta, {
        **quiet, **dict(recommended_adaptation(config_file) if adaptation is None else adaptation), **overrides,
        "method": method, "num_iterations": n2, "epoch_length": _epoch_length(n2), "rampup_iterations": max(1, n2 // 5),
        "init_checkpoint": str(ckpt_dir / "source" / "model.pt"),
        "ckpt_dir": str(ckpt_dir), "output_dir": f"$'{output_dir}'",
    })
    end = time.perf_counter()
    rows = {
        f"NoAdapt ({n1} it.)": source["metrics"],
        f"{method} ({n1} + {n2} it. adapted)": adapted["metrics"],
    }
    result = {
        "rows": rows,
        "iterations": {"source": n1, "adaptation": n2},
        "seconds": {"source": round(middle - start, 1), "adaptation": round(end - middle, 1)},
        "precision": adapted.get("precision"),
        "target": adapted.get("target"),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "two_stage.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    title = (
        f"NoAdapt against the same model adapted to the target ({result['target']}; final models, per-slice mAP/F1/MCC/IoU, "
        f"volume Dice/Jaccard; {end - start:.0f} s)"
    )
    print(format_comparison(rows, title))
    return result
