"""The class balance of a labelled split: a prior for pseudo-labels on an unlabelled target."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mito_monai.datasets.splits import open_split, volume_foreground_fraction

__all__ = ["foreground_prior", "label_foreground_fraction"]


def label_foreground_fraction(layout: str, root: str | os.PathLike, split: str) -> float:
    """The fraction of labelled voxels that are foreground (non-zero) in ``split`` of ``root``, read lazily slab
    by slab (the images are not read).

    Raises:
        ValueError: naming the split when it has no labels or is empty.
    """
    image, label = open_split(layout, root, split, with_label=True)
    image.close()
    if label is None:
        raise ValueError(f"{root}: split {split!r} of layout {layout} has no labels to take a foreground fraction from.")
    with label:
        return volume_foreground_fraction(label)


def foreground_prior(
    value: float | str | None,
    layout: str,
    root: str | os.PathLike,
    split: str,
    source_free: bool = False,
    source_model: str | os.PathLike | None = None,
) -> float | None:
    """Resolve a config value for the pseudo-label class prior (``min_foreground_fraction``).

    ``None`` / ``"none"`` -> None (off); ``"source"`` -> :func:`label_foreground_fraction` of the given
    (source) split, which reads no target label; a number in (0, 1) -> itself. With ``source_free`` the
    source is not read: ``"source"`` takes ``source_foreground_fraction`` from the JSON card beside the
    source model (``source_vnc3.pt`` -> ``source_vnc3.json``), and is an error when there is none.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "false")):
        return None
    if isinstance(value, str) and value.strip().lower() == "source":
        if source_free:
            card = Path(str(source_model)).with_suffix(".json") if source_model else None
            if card is not None and card.is_file():
                try:
                    return float(json.loads(card.read_text())["source_foreground_fraction"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{card}: expected a JSON object with a number 'source_foreground_fraction' ({e}).") from None
            raise ValueError(
                "pseudo_label_prior 'source' reads the source labels, which a source-free run does not have: "
                "give the foreground fraction as a number (e.g. the one recorded with the source model)."
            )
        return label_foreground_fraction(layout, root, split)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"pseudo-label prior must be 'none', 'source' or a number in (0, 1), got {value!r}.") from None
    if not 0.0 < number < 1.0:
        raise ValueError(f"pseudo-label prior must be in (0, 1), got {number}.")
    return number
