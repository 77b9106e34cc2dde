"""SEAD token zones: split the valid tokens of a global batch by teacher and student entropy.

Zone A (both confident) is skipped, Zone B (teacher confident, student unsure) gets reverse KL,
Zone C (teacher unsure) gets forward KL. Masked positions are labelled -1.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch

__all__ = ["Zone", "MASKED", "assign_zones", "assign_zones_threshold", "zone_counts", "check_fractions"]

MASKED = -1


class Zone(enum.IntEnum):
    A = 0  # skip: zero gradient
    B = 1  # reverse KL
    C = 2  # forward KL


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(rho_A, rho_B, rho_C)``: three non-negative numbers summing to 1."""
    if len(fractions) != 3:
        raise ValueError(f"zone fractions need 3 values (A, B, C), got {list(fractions)}")
    a, b, c = (float(x) for x in fractions)
    if min(a, b, c) < 0:
        raise ValueError(f"zone fractions must be >= 0, got {list(fractions)}")
    if abs(a + b + c - 1.0) > 1e-6:
        raise ValueError(f"zone fractions must sum to 1, got {list(fractions)} (sum {a + b + c:g})")
    return a, b, c


def _rank_desc(values_N: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``values_N`` high to low; ties keep the lower index first (deterministic)."""
    return torch.sort(values_N, descending=True, stable=True).indices


def assign_zones(
    teacher_entropy: torch.Tensor,
    student_entropy: torch.Tensor,
    mask: torch.Tensor,
    fractions: Sequence[float] = (0.5, 0.4, 0.1),
) -> torch.Tensor:
    """Percentile zones over the valid positions; returns a LongTensor shaped like ``mask``.

    With N = mask.sum(): the round(rho_C N) valid positions with the highest teacher entropy are C;
    of the rest, the round(rho_B N) with the highest student entropy are B; the others are A.
    Ties are broken by position (row-major order), lower first. Masked positions get -1.
    Pass entropies of the whole global batch so the split does not depend on how it is cut.
    """
    _, rho_b, rho_c = check_fractions(fractions)
    if teacher_entropy.shape != mask.shape or student_entropy.shape != mask.shape:
        raise ValueError(
            f"entropies {tuple(teacher_entropy.shape)}, {tuple(student_entropy.shape)} "
            f"must match mask {tuple(mask.shape)}"
        )
    mask_N = mask.reshape(-1).bool()
    valid_N = mask_N.nonzero().squeeze(-1)
    n = int(valid_N.numel())
    zones_N = torch.full(mask_N.shape, MASKED, dtype=torch.long, device=mask.device)
    zones_N[valid_N] = Zone.A
    n_c = min(round(rho_c * n), n)
    n_b = min(round(rho_b * n), n - n_c)
    t_valid = teacher_entropy.reshape(-1)[valid_N].float().detach()
    s_valid = student_entropy.reshape(-1)[valid_N].float().detach()
    order_t = _rank_desc(t_valid)
    c_idx, rest = order_t[:n_c], order_t[n_c:]
    # Restore position order among the rest so student-entropy ties also break by position.
    rest = rest.sort().values
    b_idx = rest[_rank_desc(s_valid[rest])[:n_b]]
    zones_N[valid_N[c_idx]] = Zone.C
    zones_N[valid_N[b_idx]] = Zone.B
    return zones_N.reshape(mask.shape)


def assign_zones_threshold(
    teacher_entropy: torch.Tensor,
    student_entropy: torch.Tensor,
    mask: torch.Tensor,
    teacher_threshold: float,
    student_threshold: float | None = None,
) -> torch.Tensor:
    """Absolute-threshold zones (EOPD-style gating), shaped like ``mask``.

    C: teacher entropy > ``teacher_threshold``; B: not C and student entropy > ``student_threshold``
    (every non-C token when it is None); A: the rest; -1 where masked.
    """
    zones = torch.full(mask.shape, MASKED, dtype=torch.long, device=mask.device)
    valid = mask.bool()
    high_t = teacher_entropy.detach().float() > teacher_threshold
    if student_threshold is None:
        high_s = torch.ones_like(valid)
    else:
        high_s = student_entropy.detach().float() > student_threshold
    zones[valid] = Zone.A
    zones[valid & ~high_t & high_s] = Zone.B
    zones[valid & high_t] = Zone.C
    return zones


def zone_counts(zones: torch.Tensor) -> dict[str, int]:
    """Number of positions per zone, e.g. ``{"A": 5, "B": 4, "C": 1}``."""
    return {z.name: int((zones == z).sum()) for z in Zone}
