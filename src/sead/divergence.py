"""Per-position divergences and entropies between student and teacher distributions.

All functions take logits shaped ``(..., V)`` and return one value per position ``(...)``.
They compute in float32 whatever the input dtype, tolerate ``-inf`` logits (a masked vocabulary
entry has probability 0 and contributes 0), and are differentiable w.r.t. the student logits.

Top-k convention (``top_k=k``): the support is the **teacher's** top-k tokens plus one **tail
bucket** holding the remaining probability mass of each distribution. Both distributions are
evaluated on those k+1 buckets, so the result is a true KL between two coarse-grained
distributions: it is never negative and, at ``k = V``, the tail buckets are empty and the value is
exactly the full-vocabulary one. ``entropy(logits, top_k=k)`` is the entropy of the renormalised
top-k of the given distribution (the usual cheap approximation of teacher entropy); how much mass
it drops is what :func:`topk_mass` reports, and the trainer logs it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "entropy",
    "forward_kl",
    "reverse_kl",
    "sampled_kl",
    "generalized_jsd",
    "topk_mass",
    "log_probs",
]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax over the last axis: ``(..., V) -> (..., V)``."""
    return F.log_softmax(logits.float(), dim=-1)


def _plogq(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p * log q`` with the convention ``0 * log(anything) = 0``.

    The masked entries are replaced *before* multiplying so neither value nor gradient
    sees ``0 * -inf`` (a ``where`` after the product would still leak NaN gradients). "0" is
    ``p == 0`` in float32, which also covers a finite log-probability below about -104 whose
    exponential underflows (against ``log q = -inf`` that would otherwise give NaN).
    """
    p = logp.exp()
    zero = p == 0
    return p * logq.masked_fill(zero, 0.0)


def _kl_from_logp(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) from log-probabilities over the last axis: ``(..., K) -> (...)``.

    Entries where p is 0 in float32 (``-inf`` or underflowed) contribute 0; where q is 0 and p is
    not, the result is ``+inf`` (never NaN).
    """
    p = logp.exp()
    zero = p == 0
    diff = (logp - logq.masked_fill(zero, 0.0)).masked_fill(zero, 0.0)
    return (p * diff).sum(-1)


def _bucketed(logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Log-probabilities on the top-k buckets ``index`` plus a tail bucket: ``(..., k+1)``.

    The tail is computed as a logsumexp over the complement (not ``log(1 - sum)``), so it is
    exactly ``-inf`` when the top-k covers the whole support and accurate when it is tiny.
    """
    head = logp.gather(-1, index)
    rest = logp.scatter(-1, index, float("-inf"))
    # An empty tail would give logsumexp a NaN gradient (exp(-inf - -inf)); route it around.
    empty = (rest == float("-inf")).all(-1, keepdim=True)
    tail = torch.logsumexp(rest.masked_fill(empty, 0.0), dim=-1, keepdim=True)
    return torch.cat([head, tail.masked_fill(empty, float("-inf"))], dim=-1)


def _teacher_topk_index(teacher_logp: torch.Tensor, top_k: int) -> torch.Tensor:
    vocab = teacher_logp.shape[-1]
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}; use top_k=None for the full vocabulary")
    return teacher_logp.topk(min(top_k, vocab), dim=-1, sorted=False).indices


def entropy(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Shannon entropy in nats per position: ``(..., V) -> (...)``.

    H(p) = -sum_v p(v) log p(v). With ``top_k=k`` the entropy of the renormalised top-k of p.
    """
    logp = log_probs(logits)
    if top_k is not None:
        k = min(top_k, logp.shape[-1])
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        logp = F.log_softmax(logp.topk(k, dim=-1, sorted=False).values, dim=-1)
    return -_plogq(logp, logp).sum(-1)


def topk_mass(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Probability mass of the top-k tokens per position ``(..., V) -> (...)`` (1.0 = no loss)."""
    logp = log_probs(logits)
    k = min(top_k, logp.shape[-1])
    return logp.topk(k, dim=-1, sorted=False).values.exp().sum(-1)


def _pair(student_logits, teacher_logits, top_k):
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; slice the teacher to the shared vocabulary first"
        )
    s_logp, t_logp = log_probs(student_logits), log_probs(teacher_logits)
    if top_k is not None:
        index = _teacher_topk_index(t_logp, top_k)
        s_logp, t_logp = _bucketed(s_logp, index), _bucketed(t_logp, index)
    return s_logp, t_logp


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """KL(p_teacher || p_student) = sum_v p_t (log p_t - log p_s), per position ``(...)``."""
    s_logp, t_logp = _pair(student_logits, teacher_logits, top_k)
    return _kl_from_logp(t_logp, s_logp)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """KL(p_student || p_teacher) = sum_v p_s (log p_s - log p_t), per position ``(...)``."""
    s_logp, t_logp = _pair(student_logits, teacher_logits, top_k)
    return _kl_from_logp(s_logp, t_logp)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    top_k: int | None = None,
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence per position ``(...)`` (GKD, Agarwal et al. 2024).

    m = (1 - beta) p_s + beta p_t;  JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m).
    Follows TRL's convention for the limits: beta = 0 is forward KL(p_t || p_s) and
    beta = 1 is reverse KL(p_s || p_t) (both would be 0 by the mixture formula).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    s_logp, t_logp = _pair(student_logits, teacher_logits, top_k)
    if beta == 0.0:
        return _kl_from_logp(t_logp, s_logp)
    if beta == 1.0:
        return _kl_from_logp(s_logp, t_logp)
    # Entries where both distributions are 0 (a vocabulary masked in both) stay out of the
    # mixture: logaddexp(-inf, -inf) has a NaN gradient, which would poison the whole row.
    both = (s_logp == float("-inf")) & (t_logp == float("-inf"))
    mix_logp = torch.logaddexp(
        s_logp.masked_fill(both, 0.0) + math.log1p(-beta), t_logp.masked_fill(both, 0.0) + math.log(beta)
    ).masked_fill(both, float("-inf"))
    return beta * _kl_from_logp(t_logp, mix_logp) + (1.0 - beta) * _kl_from_logp(s_logp, mix_logp)


def sampled_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 estimate of reverse KL at the sampled tokens: ``log p_s(x_t) - log p_t(x_t)``, elementwise."""
    return student_logprobs.float() - teacher_logprobs.float()
