"""Step schedules: Zone C annealing weight and curriculum competence."""

from __future__ import annotations

import math

__all__ = ["cosine_alpha", "competence"]


def cosine_alpha(step: int, total_steps: int, start: float = 0.8, end: float = 0.0) -> float:
    """alpha(step) = end + (start - end)/2 * (1 + cos(pi * step / total_steps)) (paper Eq. 7).

    ``step`` is clamped to [0, total_steps], so alpha stays between ``end`` and ``start``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    frac = min(max(step, 0), total_steps) / total_steps
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * frac))


def competence(step: int, total_steps: int, c0: float = 0.25, p: float = 2.0) -> float:
    """c(step) = min(1, c0 * (1 + step / total_steps) ** p): the largest difficulty admitted."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if c0 <= 0 or p <= 0:
        raise ValueError(f"competence needs c0 > 0 and p > 0, got c0={c0}, p={p}")
    return min(1.0, c0 * (1.0 + max(step, 0) / total_steps) ** p)
