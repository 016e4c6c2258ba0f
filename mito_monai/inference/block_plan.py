"""Block plans: a (Z, Y, X) volume cut into blocks of slices x tiles, each read with a halo of context."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Block", "BlockPlan", "window_starts", "fitted_window"]


@dataclass(frozen=True)
class Block:
    """One block: ``index`` in the plan, ``core`` the (z, y, x) box it writes, ``read`` the core grown
    by the halo and clipped to the volume (the box it reads)."""

    index: int
    core: tuple[slice, slice, slice]
    read: tuple[slice, slice, slice]

    @property
    def voxels(self) -> int:
        n = 1
        for s in self.core:
            n *= s.stop - s.start
        return n


class BlockPlan:
    """Cut a volume of ``shape`` (Z, Y, X) into blocks of ``block_shape`` on a regular grid from the origin.

    Blocks at the far edges are smaller. Along an axis the volume spans in one block no halo is needed
    (nothing lies beyond it), so the halo may exceed the block only there.

    Args:
        shape: (Z, Y, X) of the volume.
        block_shape: (z, y, x) core size of a block; entries larger than the volume are clipped.
        halo: (z, y, x) context read on each side of a block.

    Raises:
        ValueError: a non-positive size, a negative halo, or a halo larger than the block along an axis
            that has more than one block.
    """

    def __init__(self, shape: Sequence[int], block_shape: Sequence[int], halo: Sequence[int] = (0, 0, 0)) -> None:
        if len(shape) != 3 or len(block_shape) != 3 or len(halo) != 3:
            raise ValueError(f"shape, block_shape and halo are (z, y, x), got {shape}, {block_shape}, {halo}.")
        if min(shape) < 1 or min(block_shape) < 1:
            raise ValueError(f"volume shape {tuple(shape)} and block shape {tuple(block_shape)} must be positive.")
        if min(halo) < 0:
            raise ValueError(f"halo {tuple(halo)} must not be negative.")
        self.shape = tuple(int(s) for s in shape)
        self.block_shape = tuple(min(int(b), s) for b, s in zip(block_shape, self.shape))
        self.halo = tuple(int(h) for h in halo)
        for axis, b, h, s in zip("zyx", self.block_shape, self.halo, self.shape):
            if b < s and h > b:
                raise ValueError(
                    f"the halo ({h}) is larger than the block ({b}) along {axis}; use blocks of at least {h} "
                    f"along {axis} (or a smaller window)."
                )
        self.grid = tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape))

    def __len__(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def __getitem__(self, index: int) -> Block:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for a plan of {len(self)} blocks.")
        gz, rest = divmod(index, self.grid[1] * self.grid[2])
        gy, gx = divmod(rest, self.grid[2])
        core, read = [], []
        for g, b, h, s in zip((gz, gy, gx), self.block_shape, self.halo, self.shape):
            lo, hi = g * b, min((g + 1) * b, s)
            core.append(slice(lo, hi))
            read.append(slice(max(0, lo - h), min(s, hi + h)))
        return Block(index, tuple(core), tuple(read))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Block]:
        for i in range(len(self)):
            yield self[i]

    def describe(self) -> dict:
        """The plan's parameters as JSON-able values (for the blocks-done record)."""
        return {"shape": list(self.shape), "block_shape": list(self.block_shape), "halo": list(self.halo)}


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start positions of sliding windows along an axis, on a lattice fixed by the volume (not the block).

    Windows step by ``int(window * (1 - overlap))`` (at least 1) from 0; the last one ends at ``length``
    (MONAI's placement). A ``length`` below the window gives the single start 0 (the input is padded).
    """
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    n = -(-(length - window) // stride) + 1
    return [min(i * stride, length - window) for i in range(n)]


def fitted_window(
    length: int, roi: int, overlap: float, max_window: int | None = None, multiple: int = 1
) -> tuple[int, float]:
    """Window size and overlap along an axis of ``length``: ``(roi, overlap)``, or grown up to ``max_window``.

    A fully convolutional network can run on windows larger than the one it was trained on; fewer,
    larger windows repeat less work in their overlaps (a 768 x 1024 slice in 512-windows at overlap 0.5 is
    2 x 3 windows, twice its pixels). With ``max_window``, the axis is covered by the fewest windows of at
    most ``max_window`` pixels (rounded up to ``multiple``, the network's size divisor) that keep the
    overlap of ``roi * overlap`` pixels of the configured window between neighbours: one window of the
    whole axis when it fits (padded up to ``multiple``), else n windows sharing that many pixels. An axis
    shorter than ``roi`` keeps the ``roi`` window (it is padded, as without ``max_window``). The result
    depends on the axis alone, so the window lattice is still fixed by the volume, not the block.

    Returns:
        ``(window, overlap)`` for :func:`window_starts`.

    Raises:
        ValueError: ``max_window`` smaller than ``roi``, or a non-positive ``multiple``.
    """
    if max_window is None or length <= roi:
        return int(roi), float(overlap)
    if max_window < roi:
        raise ValueError(f"max_window ({max_window}) must be at least the window ({roi}).")
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}.")

    def up(n: float) -> int:
        return max(int(roi), -(-int(np.ceil(n)) // multiple) * multiple)

    if up(length) <= max_window:
        return up(length), 0.0
    context = int(roi * overlap)  # pixels neighbouring windows share
    for n in range(2, length + 1):
        window = up((length + (n - 1) * context) / n)
        while window <= max_window and len(window_starts(length, window, context / window)) > n:
            window += multiple
        if window <= max_window:
            return window, context / window
    return int(roi), float(overlap)  # pragma: no cover (n = length always fits)
