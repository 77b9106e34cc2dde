"""Training objectives of SEAD and its baselines, on materialised logits.

Every loss comes in two forms: ``*_token_losses`` returns the per-position loss ``(...)`` (zero on
skipped and masked positions, for logging and per-token reports) and the scalar form sums it and
divides by a normaliser. Pass ``normalizer`` = the count for the **whole optimiser step** (all
micro-batches and processes) so that gradient accumulation and data parallelism reproduce the
one-big-batch update; by default it is the count in this call.

Divergences are computed only on the rows that need them (gathered by index), so skipped and
masked positions get exactly zero gradient and no compute.
"""

from __future__ import annotations

import torch

from sead.divergence import entropy, forward_kl, generalized_jsd, reverse_kl
from sead.zones import Zone

__all__ = [
    "ZONE_C_MIXES",
    "clipped_pg_token_losses",
    "sead_token_losses",
    "sead_loss",
    "eopd_token_losses",
    "eopd_loss",
    "divergence_token_losses",
    "rkl_loss",
    "fkl_loss",
    "jsd_loss",
    "opd_token_losses",
    "opd_loss",
    "reduce_loss",
]

ZONE_C_MIXES = ("eq4", "interpolate")


def _scatter_rows(values_M: torch.Tensor, index_M: torch.Tensor, shape: torch.Size, device) -> torch.Tensor:
    out_N = torch.zeros(shape.numel(), dtype=torch.float32, device=device)
    return out_N.index_put((index_M,), values_M.float()).reshape(shape)


def _float32(weight: float) -> float:
    """``weight`` rounded to float32 (e.g. 1e-50 -> 0.0), the precision it multiplies losses in."""
    return float(torch.tensor(weight, dtype=torch.float32))


def _rows(logits: torch.Tensor, index_M: torch.Tensor) -> torch.Tensor:
    """Rows ``index_M`` of logits flattened to ``(N, V)``: ``(M, V)``."""
    return logits.reshape(-1, logits.shape[-1]).index_select(0, index_M)


def reduce_loss(token_losses: torch.Tensor, count: int | float | torch.Tensor, normalizer=None) -> torch.Tensor:
    """``sum(token_losses) / normalizer`` (default: ``count``); 0 with a live graph when empty."""
    denom = count if normalizer is None else normalizer
    denom = torch.as_tensor(denom, dtype=torch.float32, device=token_losses.device).clamp_min(1.0)
    return token_losses.sum() / denom


def sead_token_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    zones: torch.Tensor,
    alpha: float,
    lam: float = 1.0,
    zone_c_mix: str = "eq4",
    top_k: int | None = None,
) -> torch.Tensor:
    """Per-position SEAD loss ``(...)`` for logits ``(..., V)`` and zones ``(...)``.

    B: RKL(t).  C (``eq4``, paper Eq. 4): alpha * lam * FKL(t);
    C (``interpolate``, paper Fig. 1): lam * (alpha * FKL(t) + (1 - alpha) * RKL(t)).  A, masked: 0.
    """
    if zone_c_mix not in ZONE_C_MIXES:
        raise ValueError(f"zone_c_mix must be one of {ZONE_C_MIXES}, got {zone_c_mix!r}")
    zones_N = zones.reshape(-1)
    b_idx = (zones_N == Zone.B).nonzero().squeeze(-1)
    c_idx = (zones_N == Zone.C).nonzero().squeeze(-1)
    loss_b = reverse_kl(_rows(student_logits, b_idx), _rows(teacher_logits, b_idx), top_k=top_k)
    s_c, t_c = _rows(student_logits, c_idx), _rows(teacher_logits, c_idx)
    # A term whose weight is 0 (alpha = 0 at the end of annealing) is skipped rather than
    # multiplied by 0: no compute, and no 0 * inf = NaN when that divergence is infinite. The
    # weights are taken in float32, the losses' dtype, so a weight that rounds to 0 counts as 0.
    w_fkl = _float32(alpha * lam)
    w_rkl = _float32((1.0 - alpha) * lam) if zone_c_mix == "interpolate" else 0.0
    loss_c = s_c.new_zeros(c_idx.shape, dtype=torch.float32)
    if w_fkl != 0.0:
        loss_c = loss_c + w_fkl * forward_kl(s_c, t_c, top_k=top_k)
    if w_rkl != 0.0:
        loss_c = loss_c + w_rkl * reverse_kl(s_c, t_c, top_k=top_k)
    index = torch.cat([b_idx, c_idx])
    return _scatter_rows(torch.cat([loss_b, loss_c]), index, zones.shape, student_logits.device)


def sead_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    zones: torch.Tensor,
    alpha: float,
    lam: float = 1.0,
    zone_c_mix: str = "eq4",
    normalizer: int | float | torch.Tensor | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """SEAD objective (scalar).

    L = ( sum_{t in B} RKL(t) + alpha * lam * sum_{t in C} FKL(t) ) / |B u C|
    where ``normalizer`` overrides |B u C| (use the global count of the optimiser step).
    Zone A and masked positions get exactly zero gradient; with B u C empty the loss is 0.
    """
    tokens = sead_token_losses(student_logits, teacher_logits, zones, alpha, lam, zone_c_mix, top_k)
    count = int(((zones == Zone.B) | (zones == Zone.C)).sum())
    return reduce_loss(tokens, count, normalizer)


def divergence_token_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "rkl",
    beta: float = 0.5,
    top_k: int | None = None,
) -> torch.Tensor:
    """Per-position full-distribution divergence ``(...)`` on valid positions, 0 elsewhere.

    ``kind``: ``rkl`` = KL(p_s || p_t), ``fkl`` = KL(p_t || p_s), ``jsd`` = generalised JSD(beta).
    """
    idx = mask.reshape(-1).bool().nonzero().squeeze(-1)
    s, t = _rows(student_logits, idx), _rows(teacher_logits, idx)
    if kind == "rkl":
        values = reverse_kl(s, t, top_k=top_k)
    elif kind == "fkl":
        values = forward_kl(s, t, top_k=top_k)
    elif kind == "jsd":
        values = generalized_jsd(s, t, beta=beta, top_k=top_k)
    else:
        raise ValueError(f"unknown divergence {kind!r}; use rkl, fkl or jsd")
    return _scatter_rows(values, idx, mask.shape, student_logits.device)


def rkl_loss(student_logits, teacher_logits, mask, normalizer=None, top_k=None) -> torch.Tensor:
    """Full reverse KL, mean over valid positions (or / ``normalizer``)."""
    tokens = divergence_token_losses(student_logits, teacher_logits, mask, "rkl", top_k=top_k)
    return reduce_loss(tokens, int(mask.sum()), normalizer)


def fkl_loss(student_logits, teacher_logits, mask, normalizer=None, top_k=None) -> torch.Tensor:
    """Full forward KL, mean over valid positions (or / ``normalizer``)."""
    tokens = divergence_token_losses(student_logits, teacher_logits, mask, "fkl", top_k=top_k)
    return reduce_loss(tokens, int(mask.sum()), normalizer)


def jsd_loss(student_logits, teacher_logits, mask, beta=0.5, normalizer=None, top_k=None) -> torch.Tensor:
    """Generalised JSD(beta), mean over valid positions (or / ``normalizer``)."""
    tokens = divergence_token_losses(student_logits, teacher_logits, mask, "jsd", beta=beta, top_k=top_k)
    return reduce_loss(tokens, int(mask.sum()), normalizer)


def eopd_token_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    tau: float,
    top_k: int | None = None,
) -> torch.Tensor:
    """Per-position EOPD loss ``(...)``: RKL(t) + 1[H(p_t) > tau] * FKL(t) on valid positions."""
    idx = mask.reshape(-1).bool().nonzero().squeeze(-1)
    s, t = _rows(student_logits, idx), _rows(teacher_logits, idx)
    values = reverse_kl(s, t, top_k=top_k)
    # Forward KL only on the gated rows (no compute elsewhere, and no 0 * inf = NaN when the
    # forward KL of an ungated row is infinite).
    gated = (entropy(t.detach()) > tau).nonzero().squeeze(-1)
    fkl = forward_kl(s.index_select(0, gated), t.index_select(0, gated), top_k=top_k)
    values = values.index_add(0, gated, fkl)
    return _scatter_rows(values, idx, mask.shape, student_logits.device)


def eopd_loss(student_logits, teacher_logits, mask, tau, normalizer=None, top_k=None) -> torch.Tensor:
    """EOPD (Jin et al.): mean over valid positions of RKL + 1[H(p_t) > tau] FKL."""
    tokens = eopd_token_losses(student_logits, teacher_logits, mask, tau, top_k=top_k)
    return reduce_loss(tokens, int(mask.sum()), normalizer)


def clipped_pg_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """Per-token clipped policy-gradient surrogate -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A): (B, T).

    r = exp(log p_theta - log p_old); ``advantages`` is (B, T) or (B, 1) (one per sequence, broadcast
    over its tokens) and gets no gradient; 0 where masked. Shared by OPD and GRPO.
    """
    valid = mask.bool()
    old = old_logprobs.float().detach()
    # Padding values are replaced *before* the arithmetic: a -inf or NaN log-prob at a masked
    # position would otherwise turn the (discarded) surrogate's gradient into NaN there.
    advantage = torch.where(valid, advantages.float().detach(), 0.0)
    ratio = torch.exp(torch.where(valid, logprobs.float() - old, 0.0))
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantage)
    return torch.where(valid, -surrogate, torch.zeros_like(surrogate))


def opd_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> torch.Tensor:
    """Per-token clipped policy-gradient surrogate of plain OPD, all shaped ``(B, T)``.

    Advantage A_t = -(log p_old(x_t) - log p_t(x_t)) (negative k1 reverse KL, no gradient);
    ratio r_t = exp(log p_theta(x_t) - log p_old(x_t));
    loss_t = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) on valid tokens, 0 elsewhere.
    With one update per rollout (old = current weights) r = 1 and the gradient is -A grad log p.
    """
    valid = mask.bool()
    old = old_logprobs.float().detach()
    advantage = torch.where(valid, teacher_logprobs.float().detach() - old, 0.0)
    return clipped_pg_token_losses(logprobs, old, advantage, valid, clip_eps, clip_eps)


def opd_loss(logprobs, old_logprobs, teacher_logprobs, mask, clip_eps=0.2, normalizer=None) -> torch.Tensor:
    """Plain OPD loss: clipped k1 policy gradient, token mean over valid positions."""
    tokens = opd_token_losses(logprobs, old_logprobs, teacher_logprobs, mask, clip_eps)
    return reduce_loss(tokens, int(mask.sum()), normalizer)
