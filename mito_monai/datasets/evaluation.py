"""What a training run scores its model on: labelled evaluation slices, or, with the evaluation split ``none``, the
unlabelled training slices of the target (images only, scored by label-free metrics).

The bundle's training config passes its ``target_eval_split`` to these functions; ``none`` means "the volume has no
labels": nothing here then opens a label file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mito_monai.datasets.registry import get_layout, split_files
from mito_monai.io.errors import DataError

__all__ = ["evaluation_dataset", "evaluation_split_name", "evaluation_keys", "is_label_free", "labelled_slice_dataset"]

_NONE = ("none", "null", "")


def is_label_free(split: str | None) -> bool:
    """Whether an evaluation split means "no labels": None, ``"none"`` or ``"null"`` (any case), or empty."""
    if split is None:
        return True
    if not isinstance(split, str):
        raise TypeError(f"the evaluation split must be a split name or 'none', got {split!r}.")
    return split.strip().lower() in _NONE


def evaluation_keys(split: str | None) -> tuple[str, ...]:
    """The item keys the evaluation transforms handle: ``("image", "label")``, or ``("image",)`` without labels."""
    return ("image",) if is_label_free(split) else ("image", "label")


def _check_step(slice_step: int) -> int:
    if isinstance(slice_step, bool) or not isinstance(slice_step, int) or slice_step < 1:
        raise ValueError(f"slice_step must be an integer >= 1, got {slice_step!r}.")
    return slice_step


def evaluation_split_name(split: str | None, unlabelled_split: str, slice_step: int = 1) -> str:
    """What a run scores, for titles and records: ``split`` itself, or without labels what is scored instead, e.g.
    ``"train (unlabelled, every 2nd slice; label-free scores)"``."""
    if not is_label_free(split):
        return str(split)
    step = _check_step(int(slice_step))
    every = "every slice" if step == 1 else f"every {step}{_ordinal(step)} slice"
    return f"{unlabelled_split} (unlabelled, {every}; label-free scores)"


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def evaluation_dataset(
    layout: str,
    root: str | os.PathLike,
    split: str | None,
    unlabelled_split: str,
    slice_step: int = 1,
    transform: Sequence[Callable] | Callable | None = None,
) -> Any:
    """The slices a training run scores its model on.

    - ``split`` names a split: its slices with their labels (an :class:`~mito_monai.datasets.EMSliceDataset`,
      exactly as before this function existed). A split without labels is an error (see Raises).
    - ``split`` is ``none`` (:func:`is_label_free`): every ``slice_step``-th slice of ``unlabelled_split`` (the
      slices the label-free selection scores), images only (``with_label=False``): no label file is opened.

    Args:
        layout: dataset layout name.
        root: dataset root folder.
        split: the evaluation split, or ``"none"``.
        unlabelled_split: the split scored without labels (the target training split).
        slice_step: keep every ``slice_step``-th slice of ``unlabelled_split`` (ignored with labels).
        transform: MONAI transform(s) of every item (their keys: :func:`evaluation_keys`).

    Returns:
        an ``EMSliceDataset``, or a ``torch.utils.data.Subset`` of one without labels. Items are dicts with
        ``"image"`` (1, Y, X) (and ``"label"`` (1, Y, X) with labels), see ``EMSliceDataset``.

    Raises:
        DataError: ``split`` has no labels (naming the folder and the labels the layout expects, and pointing at
            ``--target_eval_split none``), or the data cannot be found or read.
    """
    from mito_monai.datasets.slices import EMSliceDataset

    if is_label_free(split):
        step = _check_step(int(slice_step))
        import torch.utils.data

        dataset = EMSliceDataset(layout=layout, root=root, split=unlabelled_split, with_label=False, transform=transform)
        return torch.utils.data.Subset(dataset, range(0, len(dataset), step))
    return labelled_slice_dataset(
        layout,
        root,
        str(split),
        transform=transform,
        hint="To adapt to a volume without labels, pass --target_eval_split none: the run then scores its model "
        "with label-free scores on the unlabelled training slices.",
    )


def labelled_slice_dataset(
    layout: str,
    root: str | os.PathLike,
    split: str,
    transform: Sequence[Callable] | Callable | None = None,
    hint: str = "Scoring a model needs labels: to segment a volume without labels, run the bundle's inference.json.",
) -> Any:
    """The slices of ``split`` with their labels (an :class:`~mito_monai.datasets.EMSliceDataset`, items
    ``{"image": (1, Y, X), "label": (1, Y, X)}``), for scoring a model against them.

    Raises:
        DataError: ``split`` has no labels, naming the folder, the labels the layout expects and ``hint``; or the
            data cannot be found or read.
    """
    from mito_monai.datasets.slices import EMSliceDataset

    files = split_files(layout, root, split)
    if files.label is None:
        where = Path(root) if split == "all" else Path(root) / str(split)
        raise DataError(
            f"{where}: the evaluation split {split!r} has no labels (layout {layout} expects "
            f"{get_layout(layout).expected}). {hint}"
        )
    return EMSliceDataset(layout=layout, root=root, split=split, transform=transform)
