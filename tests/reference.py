"""Plain reference implementations that the library is checked against.

Written independently of ``sead``: one row (position) at a time, in float64, straight from the
formulas in docs/METHOD.md, with the support of each distribution handled explicitly (an entry
with probability 0 is simply left out of the sums). Divergence references are differentiable in
float64 (autograd on these loops gives the reference gradients; see :func:`value_and_grad`).
Nothing here is meant to be fast.

Conventions, as documented in ``sead.divergence``:
- ``top_k=k`` on a divergence: buckets = the teacher's k most probable tokens plus one tail bucket
  holding the rest of each distribution's mass; the divergence is the KL between the two
  (k+1)-bucket distributions.
- ``top_k=k`` on entropy: entropy of the renormalised k most probable tokens.
- generalized JSD (TRL's convention): m = (1 - beta) p_s + beta p_t,
  JSD = beta KL(p_t || m) + (1 - beta) KL(p_s || m); beta = 0 is KL(p_t || p_s), beta = 1 is
  KL(p_s || p_t).
"""

from __future__ import annotations

import heapq
import math

import torch

NEG_INF = float("-inf")
F64 = torch.float64

# --------------------------------------------------------------------------------------------
# One row (a single position), float64.
# --------------------------------------------------------------------------------------------


def logsumexp_row(values: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(values))) over the finite entries of a 1-D float64 tensor; -inf if none."""
    finite = values[values > NEG_INF]
    if finite.numel() == 0:
        return torch.tensor(NEG_INF, dtype=F64)
    top = finite.max().detach()
    return top + torch.log(torch.exp(finite - top).sum())


def log_softmax_row(logits_V: torch.Tensor) -> torch.Tensor:
    """log p over one row; entries with logit -inf stay -inf (probability 0)."""
    x = logits_V.to(F64)
    return x - logsumexp_row(x)


def kl_row(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum over the support of p of p (log p - log q); +inf if q = 0 somewhere p > 0."""
    support = logp > NEG_INF
    lp, lq = logp[support], logq[support]
    return (torch.exp(lp) * (lp - lq)).sum()


def entropy_row(logp: torch.Tensor) -> torch.Tensor:
    support = logp > NEG_INF
    lp = logp[support]
    return -(torch.exp(lp) * lp).sum()


def topk_indices(values_V: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest values (ties: lower index first), by a plain sort."""
    vals = values_V.detach().tolist()
    # heapq.nlargest == sorted(..., reverse=True)[:k], which is stable: equal values keep index order.
    return heapq.nlargest(min(k, len(vals)), range(len(vals)), key=vals.__getitem__)


def buckets_row(logp: torch.Tensor, index: list[int]) -> torch.Tensor:
    """Log-probabilities of the buckets: one per index, then the tail (everything else)."""
    keep = torch.zeros(logp.shape[0], dtype=torch.bool)
    keep[index] = True
    head = logp[torch.tensor(index, dtype=torch.long)]
    tail = logsumexp_row(logp[~keep])
    return torch.cat([head, tail.reshape(1)])


def mixture_row(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """log((1 - beta) p + beta q), elementwise; -inf where both are 0.

    Each case is written out separately (both > 0, only p > 0, only q > 0) so that no
    ``-inf - -inf`` ever enters the computation or its gradient."""
    wp, wq = math.log(1.0 - beta), math.log(beta)
    has_p, has_q = logp > NEG_INF, logq > NEG_INF
    out = torch.full(logp.shape, NEG_INF, dtype=F64)
    both = has_p & has_q
    a, b = logp[both], logq[both]
    top = torch.maximum(a, b).detach()
    out[both] = top + torch.log((1.0 - beta) * torch.exp(a - top) + beta * torch.exp(b - top))
    out[has_p & ~has_q] = logp[has_p & ~has_q] + wp
    out[has_q & ~has_p] = logq[has_q & ~has_p] + wq
    return out


# --------------------------------------------------------------------------------------------
# Per-position functions over (..., V) -> (...), float64.
# --------------------------------------------------------------------------------------------


def _per_row(fn, *logits: torch.Tensor) -> torch.Tensor:
    shape = logits[0].shape
    rows = [x.reshape(-1, shape[-1]) for x in logits]
    n = rows[0].shape[0]
    if n == 0:
        return torch.zeros(shape[:-1], dtype=F64)
    return torch.stack([fn(*(r[i] for r in rows)) for i in range(n)]).reshape(shape[:-1])


def entropy(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    def row(x):
        logp = log_softmax_row(x)
        if top_k is not None:
            top = logp[torch.tensor(topk_indices(logp, top_k), dtype=torch.long)]
            logp = top - logsumexp_row(top)  # renormalise the top-k
        return entropy_row(logp)

    return _per_row(row, logits)


def _pair_rows(s, t, top_k):
    s_logp, t_logp = log_softmax_row(s), log_softmax_row(t)
    if top_k is not None:
        index = topk_indices(t_logp, top_k)
        s_logp, t_logp = buckets_row(s_logp, index), buckets_row(t_logp, index)
    return s_logp, t_logp


def forward_kl(student_logits, teacher_logits, top_k=None) -> torch.Tensor:
    """KL(p_t || p_s) per position."""

    def row(s, t):
        s_logp, t_logp = _pair_rows(s, t, top_k)
        return kl_row(t_logp, s_logp)

    return _per_row(row, student_logits, teacher_logits)


def reverse_kl(student_logits, teacher_logits, top_k=None) -> torch.Tensor:
    """KL(p_s || p_t) per position."""

    def row(s, t):
        s_logp, t_logp = _pair_rows(s, t, top_k)
        return kl_row(s_logp, t_logp)

    return _per_row(row, student_logits, teacher_logits)


def generalized_jsd(student_logits, teacher_logits, beta=0.5, top_k=None) -> torch.Tensor:
    def row(s, t):
        s_logp, t_logp = _pair_rows(s, t, top_k)
        if beta == 0.0:
            return kl_row(t_logp, s_logp)
        if beta == 1.0:
            return kl_row(s_logp, t_logp)
        m_logp = mixture_row(s_logp, t_logp, beta)
        return beta * kl_row(t_logp, m_logp) + (1.0 - beta) * kl_row(s_logp, m_logp)

    return _per_row(row, student_logits, teacher_logits)


def sampled_kl(student_logprobs, teacher_logprobs) -> torch.Tensor:
    flat_s = student_logprobs.reshape(-1).tolist()
    flat_t = teacher_logprobs.reshape(-1).tolist()
    return torch.tensor([a - b for a, b in zip(flat_s, flat_t)], dtype=F64).reshape(student_logprobs.shape)


# --------------------------------------------------------------------------------------------
# Zones.
# --------------------------------------------------------------------------------------------

MASKED, A, B, C = -1, 0, 1, 2


def assign_zones(teacher_entropy, student_entropy, mask, fractions=(0.5, 0.4, 0.1)) -> torch.Tensor:
    """Over the N valid positions: the round(rho_C N) highest teacher entropy are C; of the others,
    the round(rho_B N) highest student entropy are B; the rest A; masked -1. Ties: lower flat
    position first."""
    _, rho_b, rho_c = fractions
    valid_flags = [bool(v) for v in mask.reshape(-1).tolist()]
    h_t = teacher_entropy.reshape(-1).tolist()
    h_s = student_entropy.reshape(-1).tolist()
    valid = [i for i, ok in enumerate(valid_flags) if ok]
    n = len(valid)
    n_c = min(round(rho_c * n), n)
    by_teacher = sorted(valid, key=lambda i: (-h_t[i], i))
    zone_c = set(by_teacher[:n_c])
    others = [i for i in valid if i not in zone_c]
    n_b = min(round(rho_b * n), len(others))
    zone_b = set(sorted(others, key=lambda i: (-h_s[i], i))[:n_b])
    out = []
    for i, ok in enumerate(valid_flags):
        if not ok:
            out.append(MASKED)
        elif i in zone_c:
            out.append(C)
        elif i in zone_b:
            out.append(B)
        else:
            out.append(A)
    return torch.tensor(out, dtype=torch.long).reshape(mask.shape)


def assign_zones_threshold(teacher_entropy, student_entropy, mask, teacher_threshold, student_threshold=None):
    out = []
    for ok, ht, hs in zip(
        mask.reshape(-1).tolist(), teacher_entropy.reshape(-1).tolist(), student_entropy.reshape(-1).tolist()
    ):
        if not ok:
            out.append(MASKED)
        elif ht > teacher_threshold:
            out.append(C)
        elif student_threshold is None or hs > student_threshold:
            out.append(B)
        else:
            out.append(A)
    return torch.tensor(out, dtype=torch.long).reshape(mask.shape)


# --------------------------------------------------------------------------------------------
# Schedules.
# --------------------------------------------------------------------------------------------


def cosine_alpha(step, total_steps, start=0.8, end=0.0) -> float:
    step = min(max(step, 0), total_steps)
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * step / total_steps))


def competence(step, total_steps, c0=0.25, p=2.0) -> float:
    return min(1.0, c0 * (1.0 + step / total_steps) ** p)


# --------------------------------------------------------------------------------------------
# Objectives (scalars, float64). Rows are visited one by one.
# --------------------------------------------------------------------------------------------


def _rows(logits):
    return logits.reshape(-1, logits.shape[-1])


def _zero():
    return torch.zeros((), dtype=F64)


def _finish(total, count, normalizer):
    denom = count if normalizer is None else normalizer
    return total / denom if denom > 0 else total * 0.0


def sead_loss(student_logits, teacher_logits, zones, alpha, lam=1.0, zone_c_mix="eq4", normalizer=None, top_k=None):
    """( sum_B RKL + sum_C c(t) ) / (normalizer or |B u C|), with
    c(t) = alpha lam FKL (eq4) or lam (alpha FKL + (1 - alpha) RKL) (interpolate)."""
    s_rows, t_rows = _rows(student_logits), _rows(teacher_logits)
    total, count = _zero(), 0
    for i, z in enumerate(zones.reshape(-1).tolist()):
        s, t = s_rows[i : i + 1], t_rows[i : i + 1]
        if z == B:
            total = total + reverse_kl(s, t, top_k)[0]
            count += 1
        elif z == C:
            fkl = forward_kl(s, t, top_k)[0]
            if zone_c_mix == "eq4":
                total = total + alpha * lam * fkl
            else:
                total = total + lam * (alpha * fkl + (1.0 - alpha) * reverse_kl(s, t, top_k)[0])
            count += 1
    return _finish(total, count, normalizer)


def eopd_loss(student_logits, teacher_logits, mask, tau, normalizer=None, top_k=None):
    """mean over valid positions of RKL + [H(p_t) > tau] FKL (H over the full vocabulary)."""
    s_rows, t_rows = _rows(student_logits), _rows(teacher_logits)
    total, count = _zero(), 0
    for i, ok in enumerate(mask.reshape(-1).tolist()):
        if not ok:
            continue
        s, t = s_rows[i : i + 1], t_rows[i : i + 1]
        total = total + reverse_kl(s, t, top_k)[0]
        if entropy(t.detach())[0] > tau:
            total = total + forward_kl(s, t, top_k)[0]
        count += 1
    return _finish(total, count, normalizer)


def divergence_loss(student_logits, teacher_logits, mask, kind, beta=0.5, normalizer=None, top_k=None):
    """mean over valid positions of rkl / fkl / jsd(beta)."""
    fn = {
        "rkl": lambda s, t: reverse_kl(s, t, top_k),
        "fkl": lambda s, t: forward_kl(s, t, top_k),
        "jsd": lambda s, t: generalized_jsd(s, t, beta, top_k),
    }[kind]
    s_rows, t_rows = _rows(student_logits), _rows(teacher_logits)
    total, count = _zero(), 0
    for i, ok in enumerate(mask.reshape(-1).tolist()):
        if ok:
            total = total + fn(s_rows[i : i + 1], t_rows[i : i + 1])[0]
            count += 1
    return _finish(total, count, normalizer)


def opd_loss(logprobs, old_logprobs, teacher_logprobs, mask, clip_eps=0.2, normalizer=None):
    """Clipped policy-gradient surrogate with advantage -(log p_old - log p_teacher), token mean.

    loss_t = -min(r A, clip(r, 1 - eps, 1 + eps) A), r = exp(log p - log p_old)."""
    lp = logprobs.reshape(-1).to(F64)
    old = old_logprobs.reshape(-1).tolist()
    teacher = teacher_logprobs.reshape(-1).tolist()
    total, count = _zero(), 0
    for i, ok in enumerate(mask.reshape(-1).tolist()):
        if not ok:
            continue
        advantage = -(old[i] - teacher[i])
        ratio = torch.exp(lp[i] - old[i])
        unclipped = ratio * advantage
        clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
        total = total - (unclipped if unclipped <= clipped else clipped)
        count += 1
    return _finish(total, count, normalizer)


# --------------------------------------------------------------------------------------------
# Gradients.
# --------------------------------------------------------------------------------------------


def value_and_grad(fn, x: torch.Tensor, *args, weights: torch.Tensor | None = None, **kwargs):
    """``fn(x, *args)`` and d/dx of ``sum(weights * fn(x, *args))``, both float64, by autograd
    through the reference loops.

    ``x`` is upcast (exactly) to float64 first, so the reference sees the very input values the
    library saw (a bf16 tensor is compared with float64 math on the same bf16 numbers)."""
    x64 = x.detach().to(F64).requires_grad_(True)
    out = fn(x64, *args, **kwargs)
    total = (out * weights.to(F64)).sum() if weights is not None else out.sum()
    if not total.requires_grad:
        return out.detach(), torch.zeros_like(x64)
    (g,) = torch.autograd.grad(total, x64, allow_unused=True)
    return out.detach(), (torch.zeros_like(x64) if g is None else g)
