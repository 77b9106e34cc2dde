"""Single-pass SEAD (benchmark-only): zones decided inside the chunk from entropy thresholds set beforehand.

Thresholds come from previous steps (a running average of :func:`percentile_thresholds`), so there
is no pass 1: every valid row pays the projections, only Zone B and C rows pay the backward. The
realised zone fractions drift from the targets as entropies move (``benchmarks/loss.py --drift``).
Shapes and transforms as in :mod:`sead.fused`.
"""

from __future__ import annotations

import math

import torch

from sead.fused import zone_c_weights
from sead.fused_inputs import teacher_logit_transform
from sead.fused_kernels import ZoneRule, apply_fused_divergence
from sead.fused_losses import sead_loss_from_hidden, token_entropies_from_hidden
from sead.zones import Zone, assign_zones, assign_zones_threshold, check_fractions

__all__ = ["percentile_thresholds", "sead_loss_single_pass"]


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


def sead_loss_single_pass(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    alpha,
    thresholds,
    lam=1.0,
    chunk_size=1024,
    zone_c_mix="eq4",
    normalizer=None,
    logit_scale=1.0,
    softcap=None,
    fractions=(0.5, 0.4, 0.1),
    teacher_transform=None,
):
    """SEAD loss with zones from entropy ``thresholds = (teacher, student)``, in one chunked pass.

    C: H(p_t) > teacher; B: not C and H(p_s) > student; A: the rest (as ``assign_zones_threshold``).
    Returns ``(loss, zones, teacher_entropy, student_entropy)`` (entropies float32, 0 where masked:
    feed them to :func:`percentile_thresholds` for the next step's running thresholds). Realised zone
    fractions drift from the targets as entropies move; ``normalizer`` defaults to the realised |B u C|.
    Costs one projection per valid token and model plus the backward of B u C (two-pass: + pass 1).
    ``thresholds=None`` (first step): exact ``assign_zones(..., fractions)`` zones, in two passes.
    """
    c_weights = zone_c_weights(alpha, lam, zone_c_mix)
    if thresholds is None:  # first step: exact zones of this batch (two passes)
        vocab, t_transform = student_head.shape[0], teacher_logit_transform(logit_scale, softcap, teacher_transform)
        ent_t = token_entropies_from_hidden(teacher_hidden, teacher_head, mask, chunk_size, vocab, *t_transform)
        ent_s = token_entropies_from_hidden(student_hidden, student_head, mask, chunk_size, vocab, logit_scale, softcap)
        zones = assign_zones(ent_t, ent_s, mask, fractions)
        loss, _ = sead_loss_from_hidden(
            student_hidden,
            student_head,
            teacher_hidden,
            teacher_head,
            mask,
            alpha,
            lam,
            chunk_size=chunk_size,
            zone_c_mix=zone_c_mix,
            normalizer=normalizer,
            zones=zones,
            logit_scale=logit_scale,
            softcap=softcap,
            teacher_transform=teacher_transform,
        )
        return loss, zones, ent_t, ent_s
    rule = ZoneRule(float(thresholds[0]), float(thresholds[1]), b=(1.0, 0.0), c=c_weights)
    valid_N = mask.reshape(-1).bool()
    loss, _, ent_t, ent_s = apply_fused_divergence(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        mask.shape,
        valid_N.float(),
        valid_N.float(),
        valid_N.nonzero().squeeze(-1),
        normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
        rule,
    )
    return loss, assign_zones_threshold(ent_t, ent_s, mask, rule.teacher, rule.student), ent_t, ent_s
