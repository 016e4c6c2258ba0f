"""Weight schedules for unsupervised loss terms."""

from __future__ import annotations

import math

__all__ = ["sigmoid_rampup"]


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
