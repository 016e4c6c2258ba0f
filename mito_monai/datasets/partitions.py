"""Semi-supervised partition protocols: which slices of a training stack keep their labels.

DualRel (CVPR 2023) and the SSL papers it compares against label a fraction of the training stack and
treat the rest as unlabelled: 1/32, 1/16, 1/8 and 1/2. On the 165-slice Lucchi/Lucchi++ training stack
these are 5, 10, 20 and 82 labelled slices; on the 400-slice MitoEM training stacks 12, 25, 50 and 200.
Both tables are ``floor(fraction * num_slices)`` (at least one slice), the rule used here for any stack,
so a copy that keeps every second slice of Lucchi++ (83 slices) gets 2, 5, 10 and 41.

Two samplings of the labelled slices, both by ``numpy.random.default_rng(seed)`` so that the same
(number of slices, partition, seed, sampling) always gives the same slices, on any machine:

- ``"random"`` (the papers' protocol): the slices are drawn without replacement from the whole stack, so
  the labels span its full depth;
- ``"contiguous"``: one block of consecutive slices whose first slice is drawn uniformly - what an annotator
  who labels a run of neighbouring sections gives. Neighbouring EM sections are nearly the same image, so
  the labels cover less of the stack's depth; on our Lucchi++ copy at 1/8 this did not make supervised-only
  worse (``docs/results.md``, "A harder split?").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from mito_monai.datasets.splits import open_split

__all__ = ["PARTITIONS", "SAMPLINGS", "Partition", "labelled_count", "parse_partition", "partition_slices", "partition_split"]

#: the partition protocols of the SSL papers, by name
PARTITIONS: dict[str, Fraction] = {
    "1/32": Fraction(1, 32),
    "1/16": Fraction(1, 16),
    "1/8": Fraction(1, 8),
    "1/4": Fraction(1, 4),
    "1/2": Fraction(1, 2),
    "full": Fraction(1, 1),
}

#: how the labelled slices are chosen: spread over the stack or one block of neighbouring slices
SAMPLINGS: tuple[str, ...] = ("random", "contiguous")


@dataclass(frozen=True)
class Partition:
    """A split of the z indices ``0 .. num_slices - 1`` of a training stack.

    Attributes:
        labelled: sorted z indices whose labels are used.
        unlabelled: sorted z indices used without labels (the rest).
        fraction: the partition protocol, e.g. ``Fraction(1, 8)``.
        seed: the seed the labelled slices were drawn with.
        sampling: ``"random"`` (spread over the stack) or ``"contiguous"`` (one block), see :data:`SAMPLINGS`.
    """

    labelled: tuple[int, ...]
    unlabelled: tuple[int, ...]
    fraction: Fraction
    seed: int
    sampling: str = "random"

    @property
    def name(self) -> str:
        """``"1/8"`` style name of the fraction (``"full"`` for all slices)."""
        return "full" if self.fraction == 1 else f"{self.fraction.numerator}/{self.fraction.denominator}"

    def as_dict(self) -> dict:
        """JSON-ready summary for logs and MLflow params."""
        return {
            "partition": self.name,
            "seed": self.seed,
            "num_labelled": len(self.labelled),
            "num_unlabelled": len(self.unlabelled),
            "labelled_slices": list(self.labelled),
            "sampling": self.sampling,
        }


def parse_partition(partition: str | float | Fraction) -> Fraction:
    """The fraction of labelled slices for ``partition``: ``"1/8"``, ``"full"``, ``0.125`` or a ``Fraction``.

    Raises:
        ValueError: not a fraction in (0, 1].
    """
    if isinstance(partition, bool):
        raise TypeError(f"partition must be a name such as '1/8' or a number in (0, 1], got {partition!r}.")
    if isinstance(partition, str):
        key = partition.strip().lower()
        if key in PARTITIONS:
            return PARTITIONS[key]
        try:
            value = Fraction(key)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"unknown partition {partition!r}; expected one of {sorted(PARTITIONS)} or a fraction in (0, 1]."
            ) from None
    elif isinstance(partition, (int, float, Fraction)):
        value = Fraction(partition).limit_denominator(10**6)
    else:
        raise TypeError(f"partition must be a name such as '1/8' or a number in (0, 1], got {partition!r}.")
    if not 0 < value <= 1:
        raise ValueError(f"partition must be a fraction in (0, 1], got {partition!r}.")
    return value


def labelled_count(num_slices: int, partition: str | float | Fraction) -> int:
    """``max(1, floor(fraction * num_slices))``: 5, 10, 20, 82 of 165 and 12, 25, 50, 200 of 400."""
    if isinstance(num_slices, bool) or not isinstance(num_slices, (int, np.integer)) or num_slices < 1:
        raise ValueError(f"num_slices must be a positive integer, got {num_slices!r}.")
    return max(1, int(parse_partition(partition) * int(num_slices)))


def partition_slices(
    num_slices: int, partition: str | float | Fraction, seed: int = 0, sampling: str = "random"
) -> Partition:
    """Draw the labelled slices of a ``num_slices`` stack for ``partition`` with ``seed``.

    Args:
        num_slices: depth of the training stack.
        partition: ``"1/32"``, ``"1/16"``, ``"1/8"``, ``"1/4"``, ``"1/2"``, ``"full"`` or a fraction in (0, 1].
        seed: non-negative integer; the same seed gives the same slices.
        sampling: ``"random"``: ``count`` slices drawn without replacement from the whole stack;
            ``"contiguous"``: the ``count`` consecutive slices ``start .. start + count - 1``, ``start`` drawn
            uniformly from ``0 .. num_slices - count``.

    Returns:
        a :class:`Partition`; ``unlabelled`` is empty for ``"full"``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}, got {sampling!r}.")
    count = labelled_count(num_slices, partition)
    rng = np.random.default_rng(int(seed))
    if sampling == "random":
        chosen = np.sort(rng.choice(int(num_slices), size=count, replace=False))
    else:
        start = int(rng.integers(0, int(num_slices) - count + 1))
        chosen = np.arange(start, start + count)
    labelled = tuple(int(z) for z in chosen)
    unlabelled = tuple(sorted(set(range(int(num_slices))) - set(labelled)))
    return Partition(
        labelled=labelled, unlabelled=unlabelled, fraction=parse_partition(partition), seed=int(seed), sampling=sampling
    )


def partition_split(
    layout: str,
    root: str | os.PathLike,
    split: str,
    partition: str | float | Fraction,
    seed: int = 0,
    sampling: str = "random",
) -> Partition:
    """:func:`partition_slices` for the depth of ``split`` of the dataset ``layout`` under ``root``.

    The depth is probed from file headers (or the number of slice files); nothing is read in full.

    Raises:
        DataError: the dataset or split does not exist or does not match the layout.
    """
    image, _ = open_split(layout, root, split, with_label=False)
    with image:
        depth = int(image.shape[0])
    return partition_slices(depth, partition, seed, sampling)
