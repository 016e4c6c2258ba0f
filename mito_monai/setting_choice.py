"""The label-free rule that chooses an adaptation setting among finished candidate runs.

A user adapts to segment *their* volume, which has no labels, so the bundle's recommended setting is
chosen by a rule that reads no target label (``bundles/r4mito/docs/README.md``, "How the recommended
settings are chosen without target labels"):

1. candidates are whole settings, each run from the same source model with the same seeds and budget;
2. each run's final model has two label-free scores on the unlabelled target training stack, recorded by
   :class:`~mito_monai.handlers.LabelFreeSelection` at its last check (``final_metrics.json``,
   ``selection.history[-1]``): ``agreement`` (Dice between the mask of a slice and that of its flipped,
   noise-perturbed copy) and ``foreground_fraction`` (fraction of pixels predicted as mitochondria);
3. a candidate is *plausible* when its foreground fraction lies within a factor ``band`` of the source
   labels' foreground fraction ``q`` (``q / band`` to ``q * band``), which rejects both a collapse to
   background and an over-segmentation;
4. among the plausible candidates the highest agreement wins (``criterion="agreement"``, the rule); or, with
   ``criterion="solidity"`` (an alternative, measured beside the rule), the lowest ``solidity_distance``: the
   1-Wasserstein distance between the solidity of the 2D objects the final model predicts on the target and
   that of the source labels' objects (:func:`shape_scores`, :mod:`mito_monai.metrics.shape_prior`).

With several seeds the rule runs on the mean scores over the seeds (the choice) and on each seed alone
(reported, to show how stable the choice is). The labelled metrics in the same files are read only with
``hindsight=True``, for the report (the best candidate in hindsight); they never influence the choice.

A bundle *default* must hold on more than one domain pair, so :func:`choose_default` applies the same rule
across development pairs: among the candidates that are plausible on every pair, the highest agreement
averaged over the pairs (each pair's mean over its seeds) wins. It reads the per-pair results of
:func:`choose_setting`, so the default, too, is chosen without any target label.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CRITERIA",
    "SHAPE_SCORES_FILE",
    "choose_default",
    "choose_setting",
    "find_final_metrics",
    "label_free_scores",
    "resolve_source_fraction",
    "shape_scores",
]

#: the label-free scores the rule reads, from the last check of the selection handler
SCORES = ("agreement", "foreground_fraction")
#: criterion -> whether larger values are better
CRITERIA = {"agreement": True, "solidity_distance": False}
#: written by :func:`shape_scores` beside a run's ``final_metrics.json``
SHAPE_SCORES_FILE = "shape_scores.json"


def find_final_metrics(pattern: str | os.PathLike) -> list[Path]:
    """The ``final_metrics.json`` files of the runs that ``pattern`` names, sorted.

    ``pattern`` (a glob is allowed) may name the files themselves, run folders holding ``eval/final_metrics.json``,
    or folders of runs (``runs/A/s2_recommended`` holding ``baseline_seed0/eval/final_metrics.json``, ...).

    Raises:
        FileNotFoundError: naming the pattern when it matches no run.
    """
    found: set[Path] = set()
    for match in sorted(glob.glob(str(pattern))) or [str(pattern)]:
        path = Path(match)
        if path.is_file():
            found.add(path)
        elif (path / "eval" / "final_metrics.json").is_file():
            found.add(path / "eval" / "final_metrics.json")
        elif path.is_dir():
            found.update(path.glob("*/eval/final_metrics.json"))
    if not found:
        raise FileNotFoundError(
            f"{pattern}: expected a final_metrics.json, a run folder with eval/final_metrics.json, or a folder of such runs."
        )
    return sorted(found)


def label_free_scores(path: str | os.PathLike, hindsight: bool = False, shapes: bool = False) -> dict[str, Any]:
    """``{"seed", "iteration", "agreement", "foreground_fraction"}`` of one run's final model (plus ``"IoU"``,
    its labelled test score, only with ``hindsight``; plus ``"solidity_distance"`` from the
    :data:`SHAPE_SCORES_FILE` beside ``path``, only with ``shapes``).

    Raises:
        ValueError: naming the file when it holds no label-free history (the run had ``selection`` off), or,
            with ``shapes``, when the run has no shape scores yet.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        last = record["selection"]["history"][-1]
        scores = {k: float(last[k]) for k in SCORES}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(
            f"{path}: expected a final_metrics.json with selection.history[-1] holding {list(SCORES)} "
            f"(run the training with --selection true) ({type(e).__name__}: {e})."
        ) from None
    out: dict[str, Any] = {"run": str(path), "seed": record.get("seed"), "iteration": last.get("iteration"), **scores}
    if shapes:
        shape_file = path.parent / SHAPE_SCORES_FILE
        try:
            out["solidity_distance"] = float(json.loads(shape_file.read_text())["solidity_distance"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{shape_file}: expected the shape scores of this run (python -m mito_monai shape-scores) "
                f"({type(e).__name__}: {e})."
            ) from None
    if hindsight:
        out["IoU"] = float(record.get("metrics", {}).get("IoU", math.nan))
    return out


def resolve_source_fraction(value: float | str) -> float:
    """``q``: a number in (0, 1), or the JSON card of a source model (its ``source_foreground_fraction``)."""
    if isinstance(value, str) and not _is_number(value):
        card = Path(value)
        try:
            number = float(json.loads(card.read_text())["source_foreground_fraction"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{card}: expected a number or a model card JSON with 'source_foreground_fraction' ({type(e).__name__}: {e})."
            ) from None
    else:
        number = float(value)
    if not 0.0 < number < 1.0:
        raise ValueError(f"the source foreground fraction must be in (0, 1), got {number}.")
    return number


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}.")


def _best(values: Mapping[str, float], criterion: str) -> str | None:
    """The name with the best value of ``criterion`` (largest or smallest), None for no name."""
    sign = 1.0 if CRITERIA[criterion] else -1.0
    ranked = sorted((sign * float(v), name) for name, v in values.items())
    return ranked[-1][1] if ranked else None


def _pick(
    scores: Mapping[str, Mapping[str, float]], q: float, band: float, criterion: str = "agreement"
) -> tuple[str | None, dict[str, bool]]:
    plausible = {name: q / band <= s["foreground_fraction"] <= q * band for name, s in scores.items()}
    return _best({name: s[criterion] for name, s in scores.items() if plausible[name]}, criterion), plausible


def choose_setting(
    candidates: Mapping[str, Sequence[Mapping[str, Any]]],
    source_fraction: float,
    band: float = 2.0,
    criterion: str = "agreement",
) -> dict[str, Any]:
    """Apply the rule to candidates' runs.

    Args:
        candidates: setting name -> its runs' scores (:func:`label_free_scores`; one per seed).
        source_fraction: ``q``, the source labels' foreground fraction, in (0, 1).
        band: the plausible foreground fractions are ``q / band`` to ``q * band``; > 1.
        criterion: ``"agreement"`` (the rule: highest wins) or ``"solidity_distance"`` (lowest wins; each
            run's scores must carry it, :func:`label_free_scores` with ``shapes=True``).

    Returns:
        ``{"choice": name or None, "criterion", "plausible_band": [lo, hi], "candidates": {name: {"agreement",
        "foreground_fraction", ["solidity_distance"], "plausible", "seeds", "runs", ["IoU"]}}, "per_seed": {seed: name or None},
        ["best_in_hindsight": name]}``; means over each candidate's runs. ``"IoU"`` and
        ``"best_in_hindsight"`` appear only when every run carries its labelled score (report only).

    Raises:
        ValueError: for no candidate, a candidate without runs, a bad ``q`` or ``band``.
    """
    if not candidates:
        raise ValueError("choose_setting needs at least one candidate.")
    if not 0.0 < float(source_fraction) < 1.0:
        raise ValueError(f"source_fraction must be in (0, 1), got {source_fraction}.")
    if not float(band) > 1.0:
        raise ValueError(f"band must be > 1, got {band}.")
    _check_criterion(criterion)
    q, band = float(source_fraction), float(band)
    keys = SCORES + ((criterion,) if criterion not in SCORES else ())
    means: dict[str, dict[str, float]] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, runs in candidates.items():
        if not runs:
            raise ValueError(f"candidate {name!r} has no runs.")
        missing = [r.get("run", "?") for r in runs if criterion not in r]
        if missing:
            raise ValueError(f"candidate {name!r}: no {criterion} for {missing[:3]} (see label_free_scores).")
        means[name] = {k: sum(float(r[k]) for r in runs) / len(runs) for k in keys}
        table[name] = {**means[name], "seeds": [r.get("seed") for r in runs], "runs": [r.get("run") for r in runs]}
        if all("IoU" in r for r in runs):
            table[name]["IoU"] = sum(float(r["IoU"]) for r in runs) / len(runs)
    choice, plausible = _pick(means, q, band, criterion)
    for name in table:
        table[name]["plausible"] = plausible[name]
    seeds = sorted({r.get("seed") for runs in candidates.values() for r in runs}, key=str)
    per_seed = {}
    for seed in seeds:
        scores = {n: next(r for r in runs if r.get("seed") == seed) for n, runs in candidates.items() if any(r.get("seed") == seed for r in runs)}
        per_seed[str(seed)] = _pick(scores, q, band, criterion)[0]
    out: dict[str, Any] = {
        "choice": choice,
        "criterion": criterion,
        "source_fraction": q,
        "plausible_band": [q / band, q * band],
        "candidates": table,
        "per_seed": per_seed,
    }
    if all("IoU" in t for t in table.values()):
        out["best_in_hindsight"] = max(table, key=lambda n: table[n]["IoU"])
    return out


def choose_default(pairs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Apply the rule across domain pairs to choose one default setting.

    Args:
        pairs: pair name -> the result of :func:`choose_setting` on that pair (its ``candidates`` table, with
            each candidate's mean ``agreement`` and ``plausible`` flag). Every pair must score the same candidates.

    The criterion is the one the pairs' results were chosen by (``"agreement"`` unless they say otherwise).

    Returns:
        ``{"choice": name or None, "criterion", "candidates": {name: {criterion (mean over pairs), "plausible_on_every_pair",
        "per_pair": {pair: agreement}, ["IoU": {pair: IoU}]}}, "per_pair_choice": {pair: name or None},
        ["best_in_hindsight": name]}``. A candidate implausible on any pair (a collapse or an over-segmentation
        there) is never the default. ``"IoU"`` and ``"best_in_hindsight"`` (highest IoU averaged over the pairs)
        appear only when every pair's table carries its hindsight IoU: report only, the choice never reads it.

    Raises:
        ValueError: for no pair, a pair without candidates, or pairs that score different candidate sets.
    """
    if not pairs:
        raise ValueError("choose_default needs the results of at least one pair.")
    criteria = {result.get("criterion", "agreement") if isinstance(result, Mapping) else None for result in pairs.values()}
    if len(criteria) != 1:
        raise ValueError(f"the pairs were chosen by different criteria {sorted(map(str, criteria))}: use one for all.")
    criterion = criteria.pop()
    _check_criterion(criterion)
    names = None
    for pair, result in pairs.items():
        table = result.get("candidates") if isinstance(result, Mapping) else None
        if not table:
            raise ValueError(f"pair {pair!r}: expected a choose_setting result with a 'candidates' table.")
        if names is None:
            names = list(table)
        elif set(table) != set(names):
            raise ValueError(
                f"pair {pair!r} scores the candidates {sorted(table)}, another pair {sorted(names)}: "
                "a default is chosen among the same candidates on every pair."
            )
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = {pair: result["candidates"][name] for pair, result in pairs.items()}
        entry: dict[str, Any] = {
            criterion: sum(float(r[criterion]) for r in rows.values()) / len(rows),
            "plausible_on_every_pair": all(bool(r["plausible"]) for r in rows.values()),
            "per_pair": {pair: float(r[criterion]) for pair, r in rows.items()},
        }
        if all("IoU" in r for r in rows.values()):
            entry["IoU"] = {pair: float(r["IoU"]) for pair, r in rows.items()}
        table[name] = entry
    out: dict[str, Any] = {
        "choice": _best({name: t[criterion] for name, t in table.items() if t["plausible_on_every_pair"]}, criterion),
        "criterion": criterion,
        "candidates": table,
        "per_pair_choice": {pair: result.get("choice") for pair, result in pairs.items()},
    }
    if all("IoU" in t for t in table.values()):
        out["best_in_hindsight"] = max(table, key=lambda n: sum(table[n]["IoU"].values()) / len(pairs))
    return out


def shape_scores(
    runs: Sequence[str | os.PathLike],
    target: str | Sequence[str],
    source: str | Sequence[str],
    channels: Sequence[int] = (16, 32, 64, 128),
    every: int = 2,
    min_area: int = 16,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Score finished runs' final models by the source labels' shape prior; write :data:`SHAPE_SCORES_FILE`.

    Each run's ``models/model.pt`` (a :class:`~mito_monai.networks.MitoUNet` with ``channels``) predicts every
    ``every``-th slice of the unlabelled ``target`` stack, whole slices in one window (as the evaluation;
    matched to the run's ``models/histogram_reference.json`` when it has one, and rescaled by its
    ``resolution_scale`` when its ``final_metrics.json`` records one, as in its training); the
    2D objects of its masks are compared with those of the ``source`` labels
    (:func:`~mito_monai.metrics.shape_distance`). No target label is read: the target is opened without labels.

    Args:
        runs: final_metrics.json files or run folders (see :func:`find_final_metrics`; globs allowed).
        target: ``LAYOUT:DIR:SPLIT`` of the unlabelled target training stack.
        source: ``LAYOUT:DIR:SPLIT`` of the labelled source stack (the prior).
        channels: the runs' network channels.
        every: slice step on the target (2 = every second slice, as the selection handler scores).
        min_area: smallest object counted, pixels.
        overwrite: replace existing shape scores (otherwise a run that has them raises).

    Returns:
        one record per run: ``{"run", "solidity_distance", "log_area_distance", "foreground_fraction", ...}``.

    Raises:
        FileNotFoundError: naming a run without ``models/model.pt``; FileExistsError: for existing scores.
        ValueError: for a bad stack spec or ``every`` < 1.
    """
    import numpy as np

    from mito_monai.datasets import load_split, parse_split_spec
    from mito_monai.inference import StackSegmenter
    from mito_monai.metrics import object_shapes, shape_distance
    from mito_monai.networks import MitoUNet

    if int(every) < 1:
        raise ValueError(f"every must be >= 1 slice, got {every}.")
    files = [f for pattern in runs for f in find_final_metrics(pattern)]
    todo = []
    for f in files:
        model, out = f.parent.parent / "models" / "model.pt", f.parent / SHAPE_SCORES_FILE
        if not model.is_file():
            raise FileNotFoundError(f"{model} does not exist: expected the final model of the run of {f}.")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists: give --overwrite true to score the run again.")
        try:  # a run with --match_resolution saw the target rescaled by this factor
            scale = json.loads(f.read_text()).get("resolution_scale")
        except (OSError, ValueError, AttributeError):
            scale = None
        todo.append((model, out, scale))
    t_layout, t_root, t_split = parse_split_spec(target, "target")
    s_layout, s_root, s_split = parse_split_spec(source, "source")
    _, source_labels = load_split(s_layout, s_root, s_split, with_label=True)
    if source_labels is None:
        raise ValueError(f"source {s_root} split {s_split!r} has no labels: the shape prior comes from the source labels.")
    reference = object_shapes(source_labels, min_area=min_area)
    images, _ = load_split(t_layout, t_root, t_split, with_label=False)
    images = images[:: int(every)]
    records = []
    for model, out, scale in todo:
        network = MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=list(channels))
        matched = model.parent / "histogram_reference.json"  # a run with --target_histogram_match saw matched targets
        segmenter = StackSegmenter(network, roi_size=images.shape[1:], checkpoint=model, scale=scale,
                                   histogram_reference=matched if matched.is_file() else None)
        masks = np.stack([segmenter.predict_slice(np.asarray(s, dtype=np.float32)) >= segmenter.threshold for s in images])
        shapes = object_shapes(masks, min_area=min_area)
        record = {
            "run": str(out.parent.parent),
            **shape_distance(shapes, reference),
            "foreground_fraction": float(masks.mean()),
            "objects": shapes["objects"],
            "reference_objects": reference["objects"],
            "target": f"{t_layout}:{t_root}:{t_split}, every {int(every)} slices ({len(images)}), no labels read",
            "source": f"{s_layout}:{s_root}:{s_split} labels",
            "min_area": int(min_area),
            "resolution_scale": scale,
            "precision": str(segmenter.precision),
        }
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out)
        records.append(record)
    return records
