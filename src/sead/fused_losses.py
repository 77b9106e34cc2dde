"""Whole distillation losses from hidden states, one entry point per method, on the fused core.

Each equals its :mod:`sead.objectives` loss on materialised logits (value and gradients) without
ever building them; shapes, logit transforms and memory as in :mod:`sead.fused`. SEAD runs pass 1
(entropies, zones) itself unless given ``zones``. The trainer goes through :mod:`sead.scoring`
and :func:`sead.fused.fused_divergence` instead; these serve tests, benchmarks and direct use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sead.fused import fused_divergence, sead_weights, zone_c_weights
from sead.fused_inputs import check_transform, flatten_hidden, head_rows, teacher_logit_transform
from sead.fused_kernels import ZoneRule, apply_fused_divergence, chunked_entropies, two_pass_workspace
from sead.zones import MASKED, Zone, assign_zones, check_fractions

__all__ = [
    "token_entropies_from_hidden",
    "zones_from_hidden",
    "sead_loss_from_hidden",
    "rkl_loss_from_hidden",
    "fkl_loss_from_hidden",
    "eopd_loss_from_hidden",
]


def token_entropies_from_hidden(
    hidden, head, mask, chunk_size=1024, vocab_size=None, logit_scale=1.0, softcap=None, workspace=None
) -> torch.Tensor:
    """Float32 entropy ``H(softmax(transform(hidden @ head[:vocab_size].T)))`` per position.

    ``hidden (..., H)``, ``head (V_h, H)``, ``mask (...)`` -> ``(...)``; 0 at masked positions.
    No gradient; peak extra memory one float32 ``(chunk_size, V)`` buffer and a small scratch block.
    ``workspace`` (here and in the zone/SEAD/core functions): a flat float32 tensor to carve the
    chunk buffers from when it is large enough, e.g. reused across micro-batches (on CPU fresh
    buffers cost page faults).
    """
    check_transform(logit_scale, softcap, chunk_size)
    hidden_N_H = flatten_hidden(hidden, mask.shape, "hidden").detach()
    head_V_H = head_rows(head.detach(), hidden_N_H, vocab_size, "head")
    rows_S = mask.reshape(-1).bool().nonzero().squeeze(-1)
    out_N = chunked_entropies(hidden_N_H, head_V_H, rows_S, chunk_size, logit_scale, softcap, workspace)
    return out_N.reshape(mask.shape)


@torch.no_grad()
def zones_from_hidden(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    fractions: Sequence[float] = (0.5, 0.4, 0.1),
    chunk_size=1024,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
    workspace=None,
) -> torch.Tensor:
    """Pass 1: ``assign_zones(H(p_t), H(p_s), mask, fractions)`` without materialised logits.

    Zone C depends on teacher entropy alone, so student entropies of C tokens (never ranked) are
    not computed. Returns a LongTensor shaped like ``mask`` (A=0, B=1, C=2, masked -1).
    """
    vocab, t_transform = student_head.shape[0], teacher_logit_transform(logit_scale, softcap, teacher_transform)
    t_ent = token_entropies_from_hidden(
        teacher_hidden, teacher_head, mask, chunk_size, vocab, *t_transform, workspace=workspace
    )
    s_mask = mask.bool() & (assign_zones(t_ent, torch.zeros_like(t_ent), mask, fractions) != Zone.C)
    s_ent = token_entropies_from_hidden(
        student_hidden, student_head, s_mask, chunk_size, vocab, logit_scale, softcap, workspace=workspace
    )
    return assign_zones(t_ent, s_ent, mask, fractions)


def sead_loss_from_hidden(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    alpha,
    lam=1.0,
    fractions: Sequence[float] = (0.5, 0.4, 0.1),
    chunk_size=1024,
    zone_c_mix="eq4",
    normalizer=None,
    zones=None,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
    workspace=None,
):
    """SEAD loss (paper Eq. 4) from hidden states: ``(loss, zones)``, equal to
    ``sead.objectives.sead_loss`` on materialised logits (value and gradients).

    L = ( sum_{t in B} RKL(t) + alpha * lam * sum_{t in C} FKL(t) ) / |B u C|   (``eq4``)
    C with ``interpolate``: lam * (alpha FKL + (1 - alpha) RKL). ``normalizer`` overrides |B u C|.
    Shapes: student_hidden (N, H_s) [or (..., H_s)], student_head (V, H_s), teacher_hidden (N, H_t),
    teacher_head (V_t >= V, H_t), mask (N,) bool. ``zones`` (shaped like mask; e.g. computed over
    the global batch) skips pass 1; masked positions are forced to -1. Zones are returned as used.
    """
    zone_c_weights(alpha, lam, zone_c_mix)  # validate before the expensive pass
    check_transform(logit_scale, softcap, chunk_size)
    if zones is None:  # one workspace for both passes, sized for pass 2 (|B u C| rows known from the fractions)
        _, rho_b, rho_c = check_fractions(fractions)
        n = int(mask.bool().sum())
        n_c = min(round(rho_c * n), n)
        rows1, workspace = two_pass_workspace(
            n,
            n_c + min(round(rho_b * n), n - n_c),
            chunk_size,
            2 + (softcap is not None),
            student_head.shape[0],
            student_hidden.device,
            workspace,
        )
        zones = zones_from_hidden(
            student_hidden,
            student_head,
            teacher_hidden,
            teacher_head,
            mask,
            fractions,
            rows1,
            logit_scale,
            softcap,
            teacher_transform,
            workspace,
        )
    elif zones.shape != mask.shape:
        raise ValueError(f"zones {tuple(zones.shape)} must be shaped like mask {tuple(mask.shape)}")
    else:
        zones = zones.masked_fill(~mask.bool(), MASKED)
    w_rkl, w_fkl = sead_weights(zones, alpha, lam, zone_c_mix)
    count = int(((zones == Zone.B) | (zones == Zone.C)).sum())
    loss, _ = fused_divergence(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        w_rkl,
        w_fkl,
        count if normalizer is None else normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
        workspace,
    )
    return loss, zones


def _full_vocab(
    kind,
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    normalizer,
    chunk_size,
    logit_scale,
    softcap,
    teacher_transform,
    tau=None,
) -> torch.Tensor:
    valid_N = mask.reshape(-1).bool()
    rows_S, w_N = valid_N.nonzero().squeeze(-1), valid_N.float()
    normalizer = rows_S.numel() if normalizer is None else normalizer
    weights = {"rkl": (w_N, w_N * 0), "fkl": (w_N * 0, w_N), "eopd": (w_N, w_N)}[kind]
    rule = None if tau is None else ZoneRule(float(tau), -math.inf, b=(1.0, 0.0), c=(1.0, 1.0))
    return apply_fused_divergence(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        mask.shape,
        *weights,
        rows_S,
        normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
        rule,
    )[0]


def rkl_loss_from_hidden(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    normalizer=None,
    chunk_size=1024,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
) -> torch.Tensor:
    """Full reverse KL(p_s || p_t), mean over valid positions (or / ``normalizer``); = ``objectives.rkl_loss``."""
    return _full_vocab(
        "rkl",
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        mask,
        normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
    )


def fkl_loss_from_hidden(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    normalizer=None,
    chunk_size=1024,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
) -> torch.Tensor:
    """Full forward KL(p_t || p_s), mean over valid positions (or / ``normalizer``); = ``objectives.fkl_loss``."""
    return _full_vocab(
        "fkl",
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        mask,
        normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
    )


def eopd_loss_from_hidden(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    tau,
    normalizer=None,
    chunk_size=1024,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
) -> torch.Tensor:
    """EOPD: mean over valid positions of RKL + 1[H(p_t) > tau] FKL; = ``objectives.eopd_loss``.

    The teacher-entropy gate is evaluated inside the chunk (one pass, no extra projection).
    """
    return _full_vocab(
        "eopd",
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        mask,
        normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
        tau=tau,
    )
