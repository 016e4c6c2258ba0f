"""Training schedules: the ramp-up of unsupervised loss terms, and epochs from an iteration budget."""

from __future__ import annotations

import math

__all__ = ["num_epochs", "sigmoid_rampup"]


def sigmoid_rampup(iteration: int, rampup_iterations: int) -> float:
    """The sigmoid-shaped ramp-up of Laine & Aila used by CAFA and R4MITO.

    ``exp(-5 (1 - min(t, T) / T) ** 2)``: 0.0067 at ``t = 0``, 1.0 from ``t = T`` on.

    Args:
        iteration: the current iteration ``t`` (>= 0).
        rampup_iterations: ``T``; 0 switches the ramp off (the factor is always 1).

    Returns:
        The multiplicative factor in (0, 1].
    """
    if rampup_iterations < 0:
        raise ValueError(f"rampup_iterations must be >= 0, got {rampup_iterations}.")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}.")
    if rampup_iterations == 0:
        return 1.0
    phase = 1.0 - min(iteration, rampup_iterations) / rampup_iterations
    return math.exp(-5.0 * phase * phase)


def num_epochs(num_iterations: int, epoch_length: int) -> int:
    """The number of epochs that runs exactly ``num_iterations`` iterations of ``epoch_length`` each.

    Raises:
        ValueError: when ``num_iterations`` is not a positive multiple of ``epoch_length`` (a remainder would
            otherwise be dropped, or an extra partial epoch run, without saying so).
    """
    for name, value in (("num_iterations", num_iterations), ("epoch_length", epoch_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    epochs, remainder = divmod(num_iterations, epoch_length)
    if remainder or epochs == 0:
        lower = max(epochs, 1) * epoch_length
        raise ValueError(
            f"num_iterations={num_iterations} is not a multiple of epoch_length={epoch_length}: training runs whole "
            f"epochs, so ask for num_iterations={lower}"
            + (f" or {lower + epoch_length}" if epochs else "")
            + ", or change epoch_length."
        )
    return epochs
