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
4. among the plausible candidates the highest agreement wins.

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

__all__ = ["choose_default", "choose_setting", "find_final_metrics", "label_free_scores", "resolve_source_fraction"]

#: the label-free scores the rule reads, from the last check of the selection handler
SCORES = ("agreement", "foreground_fraction")


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


def label_free_scores(path: str | os.PathLike, hindsight: bool = False) -> dict[str, Any]:
    """``{"seed", "iteration", "agreement", "foreground_fraction"}`` of one run's final model (plus ``"IoU"``,
    its labelled test score, only with ``hindsight``).

    Raises:
        ValueError: naming the file when it holds no label-free history (the run had ``selection`` off).
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


def _pick(scores: Mapping[str, Mapping[str, float]], q: float, band: float) -> tuple[str | None, dict[str, bool]]:
    plausible = {name: q / band <= s["foreground_fraction"] <= q * band for name, s in scores.items()}
    ranked = sorted((s["agreement"], name) for name, s in scores.items() if plausible[name])
    return (ranked[-1][1] if ranked else None), plausible


def choose_setting(
    candidates: Mapping[str, Sequence[Mapping[str, Any]]],
    source_fraction: float,
    band: float = 2.0,
) -> dict[str, Any]:
    """Apply the rule to candidates' runs.

    Args:
        candidates: setting name -> its runs' scores (:func:`label_free_scores`; one per seed).
        source_fraction: ``q``, the source labels' foreground fraction, in (0, 1).
        band: the plausible foreground fractions are ``q / band`` to ``q * band``; > 1.

    Returns:
        ``{"choice": name or None, "plausible_band": [lo, hi], "candidates": {name: {"agreement",
        "foreground_fraction", "plausible", "seeds", "runs", ["IoU"]}}, "per_seed": {seed: name or None},
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
    q, band = float(source_fraction), float(band)
    means: dict[str, dict[str, float]] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, runs in candidates.items():
        if not runs:
            raise ValueError(f"candidate {name!r} has no runs.")
        means[name] = {k: sum(float(r[k]) for r in runs) / len(runs) for k in SCORES}
        table[name] = {**means[name], "seeds": [r.get("seed") for r in runs], "runs": [r.get("run") for r in runs]}
        if all("IoU" in r for r in runs):
            table[name]["IoU"] = sum(float(r["IoU"]) for r in runs) / len(runs)
    choice, plausible = _pick(means, q, band)
    for name in table:
        table[name]["plausible"] = plausible[name]
    seeds = sorted({r.get("seed") for runs in candidates.values() for r in runs}, key=str)
    per_seed = {}
    for seed in seeds:
        scores = {n: next(r for r in runs if r.get("seed") == seed) for n, runs in candidates.items() if any(r.get("seed") == seed for r in runs)}
        per_seed[str(seed)] = _pick(scores, q, band)[0]
    out: dict[str, Any] = {
        "choice": choice,
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

    Returns:
        ``{"choice": name or None, "candidates": {name: {"agreement" (mean over pairs), "plausible_on_every_pair",
        "per_pair": {pair: agreement}, ["IoU": {pair: IoU}]}}, "per_pair_choice": {pair: name or None},
        ["best_in_hindsight": name]}``. A candidate implausible on any pair (a collapse or an over-segmentation
        there) is never the default. ``"IoU"`` and ``"best_in_hindsight"`` (highest IoU averaged over the pairs)
        appear only when every pair's table carries its hindsight IoU: report only, the choice never reads it.

    Raises:
        ValueError: for no pair, a pair without candidates, or pairs that score different candidate sets.
    """
    if not pairs:
        raise ValueError("choose_default needs the results of at least one pair.")
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
            "agreement": sum(float(r["agreement"]) for r in rows.values()) / len(rows),
            "plausible_on_every_pair": all(bool(r["plausible"]) for r in rows.values()),
            "per_pair": {pair: float(r["agreement"]) for pair, r in rows.items()},
        }
        if all("IoU" in r for r in rows.values()):
            entry["IoU"] = {pair: float(r["IoU"]) for pair, r in rows.items()}
        table[name] = entry
    ranked = sorted((t["agreement"], name) for name, t in table.items() if t["plausible_on_every_pair"])
    out: dict[str, Any] = {
        "choice": ranked[-1][1] if ranked else None,
        "candidates": table,
        "per_pair_choice": {pair: result.get("choice") for pair, result in pairs.items()},
    }
    if all("IoU" in t for t in table.values()):
        out["best_in_hindsight"] = max(table, key=lambda n: sum(table[n]["IoU"].values()) / len(pairs))
    return out
