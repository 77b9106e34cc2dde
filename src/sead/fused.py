"""Fused, memory-lean distillation losses that start from hidden states.

The materialised path builds ``logits = hidden @ head.T`` for both models, ``(N, V)`` each, and
autograd keeps several ``(N, V)`` float32 intermediates alive until backward. Here no full logits
exist: everything runs over row chunks of ``chunk_size`` tokens.

* Pass 1 (no grad, valid tokens only): per-token teacher and student entropy in float32, then
  :func:`sead.zones.assign_zones` on them. Skipped when the caller passes ``zones``.
* Pass 2 (only rows with a non-zero weight, i.e. Zones B and C; Zone A costs nothing): recompute
  both logits, the per-token divergence and its analytic gradient w.r.t. the student logits z

      d RKL(p_s || p_t) / dz = p_s * (log p_s - log p_t - RKL)
      d FKL(p_t || p_s) / dz = p_s - p_t

  and contract it with the head and the hidden rows at once (``dh = g @ W``, ``dW += g.T @ h``).
  A ``torch.autograd.Function`` stores these gradients and returns them, times ``grad_output``, in
  backward (the Liger-Kernel fused-linear pattern).
* Single-pass mode (:func:`sead_loss_single_pass`): zones from entropy thresholds known in advance
  (running percentiles of previous steps, :func:`percentile_thresholds`) are decided inside the
  chunk: no pass 1; Zone A rows pay the projections but no backward.

Peak extra memory: 2 (3 with ``softcap``) float32 ``(chunk, V)`` buffers reused across chunks
(the elementwise work runs over row blocks in three scratch buffers of max(32 rows, 4 MiB)), the
float32 head gradient ``(V, H_s)`` and the hidden gradient ``(N, H_s)``. Logit arithmetic is
float32 whatever the input dtype; the projections run in the input dtype (like the materialised
reference), the head gradient accumulates in float32 and is cast to the head's dtype at the end.

Logits of both models: ``softcap * tanh(logit_scale * h W^T / softcap)`` (``logit_scale * h W^T``
without softcap); ``teacher_transform=(logit_scale, softcap)`` gives the teacher its own. The
teacher head may have extra (padding) rows: only its first V rows are used, V = student
vocabulary. The teacher gets no gradient. Hidden states may be ``(N, H)`` or ``(..., H)`` with
``mask`` shaped ``(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sead.fused_kernels import (
    _check_transform,
    _chunks,
    _entropies,
    _flat,
    _head_rows,
    _inputs,
    _Opts,
    _run,
    _teacher_transform,
    _workspace,
    _ZoneRule,
)
from sead.objectives import ZONE_C_MIXES
from sead.zones import MASKED, Zone, assign_zones, assign_zones_threshold, check_fractions

__all__ = [
    "transform_logits",
    "token_entropies_from_hidden",
    "zones_from_hidden",
    "divergence_stats_from_hidden",
    "sead_weights",
    "fused_divergence",
    "sead_loss_from_hidden",
    "rkl_loss_from_hidden",
    "fkl_loss_from_hidden",
    "eopd_loss_from_hidden",
    "percentile_thresholds",
    "sead_loss_single_pass",
]


def transform_logits(logits: torch.Tensor, logit_scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """Float32 ``softcap * tanh(logit_scale * z / softcap)`` (``logit_scale * z`` without softcap)."""
    z = logits.float() * logit_scale
    return z if softcap is None else softcap * torch.tanh(z / softcap)


# ---------------------------------------------------------------------------------------------
# Public API


def token_entropies_from_hidden(hidden, head, mask, chunk_size=1024, vocab_size=None, logit_scale=1.0,
                                softcap=None, workspace=None) -> torch.Tensor:  # fmt: skip
    """Float32 entropy ``H(softmax(transform(hidden @ head[:vocab_size].T)))`` per position.

    ``hidden (..., H)``, ``head (V_h, H)``, ``mask (...)`` -> ``(...)``; 0 at masked positions.
    No gradient; peak extra memory one float32 ``(chunk_size, V)`` buffer and a small scratch block.
    ``workspace`` (here and in the zone/SEAD/core functions): a flat float32 tensor to carve the
    chunk buffers from when it is large enough, e.g. reused across micro-batches (on CPU fresh
    buffers cost page faults).
    """
    _check_transform(logit_scale, softcap, chunk_size)
    hidden_N_H = _flat(hidden, mask.shape, "hidden").detach()
    head_V_H = _head_rows(head.detach(), hidden_N_H, vocab_size, "head")
    rows_M = mask.reshape(-1).bool().nonzero().squeeze(-1)
    out_N = _entropies(hidden_N_H, head_V_H, rows_M, chunk_size, logit_scale, softcap, workspace)
    return out_N.reshape(mask.shape)


@torch.no_grad()
def zones_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask,
                      fractions: Sequence[float] = (0.5, 0.4, 0.1), chunk_size=1024, logit_scale=1.0,
                      softcap=None, teacher_transform=None, workspace=None) -> torch.Tensor:  # fmt: skip
    """Pass 1: ``assign_zones(H(p_t), H(p_s), mask, fractions)`` without materialised logits.

    Zone C depends on teacher entropy alone, so student entropies of C tokens (never ranked) are
    not computed. Returns a LongTensor shaped like ``mask`` (A=0, B=1, C=2, masked -1).
    """
    vocab, t_transform = student_head.shape[0], _teacher_transform(logit_scale, softcap, teacher_transform)
    t_ent = token_entropies_from_hidden(teacher_hidden, teacher_head, mask, chunk_size, vocab, *t_transform,
                                        workspace=workspace)  # fmt: skip
    s_mask = mask.bool() & (assign_zones(t_ent, torch.zeros_like(t_ent), mask, fractions) != Zone.C)
    s_ent = token_entropies_from_hidden(student_hidden, student_head, s_mask, chunk_size, vocab, logit_scale,
                                        softcap, workspace=workspace)  # fmt: skip
    return assign_zones(t_ent, s_ent, mask, fractions)


@torch.no_grad()
def divergence_stats_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, chunk_size=1024,
                                 logit_scale=1.0, softcap=None, teacher_transform=None, workspace=None):  # fmt: skip
    """Per-position float32 ``(H(p_t), H(p_s), FKL(p_t || p_s), RKL(p_s || p_t))``, each shaped like ``mask``
    (0 where masked), in one chunked pass over the valid rows: two ``(chunk_size, V)`` buffers, no gradient.
    """
    s_N_H, s_head_V_H, t_N_H, t_head_V_H, t_transform = _inputs(
        student_hidden.detach(), student_head.detach(), teacher_hidden, teacher_head, mask.shape, chunk_size,
        logit_scale, softcap, teacher_transform)  # fmt: skip
    opts = _Opts(chunk_size, float(logit_scale), softcap, t_transform, None, None, False, False, workspace, entropies=True)
    rows_M = mask.reshape(-1).bool().nonzero().squeeze(-1)
    ones_M = torch.ones(rows_M.numel(), dtype=torch.float32, device=s_N_H.device)
    out_4N = torch.zeros(4, s_N_H.shape[0], dtype=torch.float32, device=s_N_H.device)
    for idx, _, _, o in _chunks(s_N_H, s_head_V_H, t_N_H, t_head_V_H, rows_M, ones_M, ones_M, opts):
        out_4N[:, idx] = torch.stack((o.ent_t, o.ent_s, o.fkl, o.rkl))
    return tuple(x.reshape(mask.shape) for x in out_4N)


def sead_weights(zones: torch.Tensor, alpha: float, lam: float = 1.0, zone_c_mix: str = "eq4"):
    """Per-position float32 ``(w_rkl, w_fkl)`` shaped like ``zones`` for :func:`fused_divergence`.

    B: (1, 0).  C: (0, alpha lam) for ``eq4``, ((1 - alpha) lam, alpha lam) for ``interpolate``.
    A and masked: (0, 0).
    """
    c_rkl, c_fkl = _zone_c_weights(alpha, lam, zone_c_mix)
    is_b, is_c = (zones == Zone.B).float(), (zones == Zone.C).float()
    return is_b + c_rkl * is_c, c_fkl * is_c


def _zone_c_weights(alpha: float, lam: float, zone_c_mix: str) -> tuple[float, float]:
    if zone_c_mix not in ZONE_C_MIXES:
        raise ValueError(f"zone_c_mix must be one of {ZONE_C_MIXES}, got {zone_c_mix!r}")
    return ((1.0 - alpha) * lam if zone_c_mix == "interpolate" else 0.0), alpha * lam


def fused_divergence(student_hidden, student_head, teacher_hidden, teacher_head, rkl_weight, fkl_weight,
                     normalizer=None, chunk_size=1024, logit_scale=1.0, softcap=None, teacher_transform=None,
                     workspace=None):  # fmt: skip
    """The shared chunked core: ``(loss, token_losses)``.

    loss = sum_t [w_rkl(t) RKL(t) + w_fkl(t) FKL(t)] / max(normalizer, 1). Weights are shaped like
    the hidden states' leading dims; positions with both weights 0 get no compute and exactly zero
    gradient. ``normalizer`` defaults to the number of non-zero positions. ``token_losses``
    (shaped like the weights, float32, detached) is the bracket per position.
    """
    if rkl_weight.shape != fkl_weight.shape:
        raise ValueError(f"rkl_weight {tuple(rkl_weight.shape)} and fkl_weight {tuple(fkl_weight.shape)} differ")
    w_r_N, w_f_N = rkl_weight.reshape(-1).float(), fkl_weight.reshape(-1).float()
    rows_M = ((w_r_N != 0) | (w_f_N != 0)).nonzero().squeeze(-1)
    loss, tokens, _, _ = _run(student_hidden, student_head, teacher_hidden, teacher_head, rkl_weight.shape,
                              w_r_N, w_f_N, rows_M, rows_M.numel() if normalizer is None else normalizer,
                              chunk_size, logit_scale, softcap, teacher_transform, workspace=workspace)  # fmt: skip
    return loss, tokens


def sead_loss_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, alpha, lam=1.0,
                          fractions: Sequence[float] = (0.5, 0.4, 0.1), chunk_size=1024, zone_c_mix="eq4",
                          normalizer=None, zones=None, logit_scale=1.0, softcap=None, teacher_transform=None,
                          workspace=None):  # fmt: skip
    """SEAD loss (paper Eq. 4) from hidden states: ``(loss, zones)``, equal to
    ``sead.objectives.sead_loss`` on materialised logits (value and gradients).

    L = ( sum_{t in B} RKL(t) + alpha * lam * sum_{t in C} FKL(t) ) / |B u C|   (``eq4``)
    C with ``interpolate``: lam * (alpha FKL + (1 - alpha) RKL). ``normalizer`` overrides |B u C|.
    Shapes: student_hidden (N, H_s) [or (..., H_s)], student_head (V, H_s), teacher_hidden (N, H_t),
    teacher_head (V_t >= V, H_t), mask (N,) bool. ``zones`` (shaped like mask; e.g. computed over
    the global batch) skips pass 1; masked positions are forced to -1. Zones are returned as used.
    """
    _zone_c_weights(alpha, lam, zone_c_mix)  # validate before the expensive pass
    _check_transform(logit_scale, softcap, chunk_size)
    if zones is None:  # one workspace for both passes, sized for pass 2 (|B u C| rows known from the fractions)
        _, rho_b, rho_c = check_fractions(fractions)
        n = int(mask.bool().sum())
        n_c = min(round(rho_c * n), n)
        rows1, workspace = _workspace(n, n_c + min(round(rho_b * n), n - n_c), chunk_size, 2 + (softcap is not None),
                                      student_head.shape[0], student_hidden.device, workspace)  # fmt: skip
        zones = zones_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, fractions, rows1,
                                  logit_scale, softcap, teacher_transform, workspace)  # fmt: skip
    elif zones.shape != mask.shape:
        raise ValueError(f"zones {tuple(zones.shape)} must be shaped like mask {tuple(mask.shape)}")
    else:
        zones = zones.masked_fill(~mask.bool(), MASKED)
    w_rkl, w_fkl = sead_weights(zones, alpha, lam, zone_c_mix)
    count = int(((zones == Zone.B) | (zones == Zone.C)).sum())
    loss, _ = fused_divergence(student_hidden, student_head, teacher_hidden, teacher_head, w_rkl, w_fkl,
                               count if normalizer is None else normalizer, chunk_size, logit_scale, softcap,
                               teacher_transform, workspace)  # fmt: skip
    return loss, zones


def _full_vocab(kind, student_hidden, student_head, teacher_hidden, teacher_head, mask, normalizer, chunk_size,
                logit_scale, softcap, teacher_transform, tau=None) -> torch.Tensor:  # fmt: skip
    valid_N = mask.reshape(-1).bool()
    rows_M, w_N = valid_N.nonzero().squeeze(-1), valid_N.float()
    normalizer = rows_M.numel() if normalizer is None else normalizer
    weights = {"rkl": (w_N, w_N * 0), "fkl": (w_N * 0, w_N), "eopd": (w_N, w_N)}[kind]
    rule = None if tau is None else _ZoneRule(float(tau), -math.inf, b=(1.0, 0.0), c=(1.0, 1.0))
    return _run(student_hidden, student_head, teacher_hidden, teacher_head, mask.shape, *weights, rows_M,
                normalizer, chunk_size, logit_scale, softcap, teacher_transform, rule)[0]  # fmt: skip


def rkl_loss_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, normalizer=None,
                         chunk_size=1024, logit_scale=1.0, softcap=None, teacher_transform=None) -> torch.Tensor:  # fmt: skip
    """Full reverse KL(p_s || p_t), mean over valid positions (or / ``normalizer``); = ``objectives.rkl_loss``."""
    return _full_vocab("rkl", student_hidden, student_head, teacher_hidden, teacher_head, mask, normalizer,
                       chunk_size, logit_scale, softcap, teacher_transform)  # fmt: skip


def fkl_loss_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, normalizer=None,
                         chunk_size=1024, logit_scale=1.0, softcap=None, teacher_transform=None) -> torch.Tensor:  # fmt: skip
    """Full forward KL(p_t || p_s), mean over valid positions (or / ``normalizer``); = ``objectives.fkl_loss``."""
    return _full_vocab("fkl", student_hidden, student_head, teacher_hidden, teacher_head, mask, normalizer,
                       chunk_size, logit_scale, softcap, teacher_transform)  # fmt: skip


def eopd_loss_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, tau, normalizer=None,
                          chunk_size=1024, logit_scale=1.0, softcap=None, teacher_transform=None) -> torch.Tensor:  # fmt: skip
    """EOPD: mean over valid positions of RKL + 1[H(p_t) > tau] FKL; = ``objectives.eopd_loss``.

    The teacher-entropy gate is evaluated inside the chunk (one pass, no extra projection).
    """
    return _full_vocab("eopd", student_hidden, student_head, teacher_hidden, teacher_head, mask, normalizer,
                       chunk_size, logit_scale, softcap, teacher_transform, tau=tau)  # fmt: skip


def percentile_thresholds(teacher_entropy, student_entropy, mask, fractions=(0.5, 0.4, 0.1)) -> tuple[float, float]:
    """Entropy thresholds ``(teacher, student)`` that reproduce ``assign_zones`` on this batch.

    With them, ``assign_zones_threshold(H_t, H_s, mask, teacher, student)`` equals
    ``assign_zones(H_t, H_s, mask, fractions)`` (barring ties): each is the midpoint between the
    last entropy inside the zone and the first outside it (+inf for an empty zone, -inf for all).
    Keep a running average over steps and pass it to :func:`sead_loss_single_pass`.
    """
    _, rho_b, rho_c = check_fractions(fractions)
    valid = mask.reshape(-1).bool()
    t_desc = teacher_entropy.reshape(-1)[valid].double().sort(descending=True).values
    n = t_desc.numel()
    n_c = min(round(rho_c * n), n)
    only_c = assign_zones(teacher_entropy, torch.zeros_like(teacher_entropy), mask, fractions).reshape(-1)
    s_desc = student_entropy.reshape(-1)[valid & (only_c != Zone.C)].double().sort(descending=True).values
    n_b = min(round(rho_b * n), n - n_c)

    def split(desc, k):
        if k == 0:
            return math.inf
        return -math.inf if k >= desc.numel() else float((desc[k - 1] + desc[k]) / 2)

    return split(t_desc, n_c), split(s_desc, n_b)


def sead_loss_single_pass(student_hidden, student_head, teacher_hidden, teacher_head, mask, alpha, thresholds,
                          lam=1.0, chunk_size=1024, zone_c_mix="eq4", normalizer=None, logit_scale=1.0,
                          softcap=None, fractions=(0.5, 0.4, 0.1), teacher_transform=None):  # fmt: skip
    """SEAD loss with zones from entropy ``thresholds = (teacher, student)``, in one chunked pass.

    C: H(p_t) > teacher; B: not C and H(p_s) > student; A: the rest (as ``assign_zones_threshold``).
    Returns ``(loss, zones, teacher_entropy, student_entropy)`` (entropies float32, 0 where masked:
    feed them to :func:`percentile_thresholds` for the next step's running thresholds). Realised zone
    fractions drift from the targets as entropies move; ``normalizer`` defaults to the realised |B u C|.
    Costs one projection per valid token and model plus the backward of B u C (two-pass: + pass 1).
    ``thresholds=None`` (first step): exact ``assign_zones(..., fractions)`` zones, in two passes.
    """
    c_weights = _zone_c_weights(alpha, lam, zone_c_mix)
    if thresholds is None:  # first step: exact zones of this batch (two passes)
        vocab, t_transform = student_head.shape[0], _teacher_transform(logit_scale, softcap, teacher_transform)
        ent_t = token_entropies_from_hidden(teacher_hidden, teacher_head, mask, chunk_size, vocab, *t_transform)
        ent_s = token_entropies_from_hidden(student_hidden, student_head, mask, chunk_size, vocab, logit_scale, softcap)
        zones = assign_zones(ent_t, ent_s, mask, fractions)
        loss, _ = sead_loss_from_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask, alpha, lam,
                                        chunk_size=chunk_size, zone_c_mix=zone_c_mix, normalizer=normalizer, zones=zones,
                                        logit_scale=logit_scale, softcap=softcap, teacher_transform=teacher_transform)  # fmt: skip
        return loss, zones, ent_t, ent_s
    rule = _ZoneRule(float(thresholds[0]), float(thresholds[1]), b=(1.0, 0.0), c=c_weights)
    valid_N = mask.reshape(-1).bool()
    loss, _, ent_t, ent_s = _run(student_hidden, student_head, teacher_hidden, teacher_head, mask.shape,
                                 valid_N.float(), valid_N.float(), valid_N.nonzero().squeeze(-1), normalizer,
                                 chunk_size, logit_scale, softcap, teacher_transform, rule)  # fmt: skip
    return loss, assign_zones_threshold(ent_t, ent_s, mask, rule.teacher, rule.student), ent_t, ent_s
