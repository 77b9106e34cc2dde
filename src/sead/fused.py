"""The fused training path: distillation losses from hidden states, never the full logits.

Shapes (legend in docs/DESIGN.md): B rows, R response positions, N flat positions (masked too),
S selected rows, V vocabulary, H hidden, C chunk rows.

The materialised path builds ``logits = hidden @ head.T`` for both models, ``(N, V)`` each, and
autograd keeps several ``(N, V)`` float32 intermediates alive until backward. Here no full logits
exist: everything runs over row chunks of ``chunk_size`` tokens (:mod:`sead.fused_kernels`).

* Pass 1 (no grad, valid tokens only): :func:`divergence_stats_from_hidden` gives per-token teacher
  and student entropy (and both KL divergences) in float32; the caller assigns zones from them
  (:func:`sead.zones.assign_zones`).
* Pass 2 (only rows with a non-zero weight, e.g. Zones B and C from :func:`sead_weights`; Zone A
  costs nothing): :func:`fused_divergence` recomputes both logits, the per-token divergence and its
  analytic gradient w.r.t. the student logits z

      d RKL(p_s || p_t) / dz = p_s * (log p_s - log p_t - RKL)
      d FKL(p_t || p_s) / dz = p_s - p_t

  and contracts it with the head and the hidden rows at once (``dh = g @ W``, ``dW += g.T @ h``).
  A ``torch.autograd.Function`` stores these gradients and returns them, times ``grad_output``, in
  backward (the Liger-Kernel fused-linear pattern).

Whole per-method losses on this core (SEAD with pass 1 built in, RKL, FKL, EOPD) are in
:mod:`sead.fused_losses`; the benchmark-only single-pass SEAD mode is in :mod:`sead.fused_single_pass`.

Peak extra memory: 2 (3 with ``softcap``) float32 ``(C, V)`` buffers reused across chunks
(the elementwise work runs over row blocks in three scratch buffers of max(32 rows, 4 MiB)), the
float32 head gradient ``(V, H_s)`` and the hidden gradient ``(N, H_s)``. Logit arithmetic is
float32 whatever the input dtype; the projections run in the input dtype (like the materialised
reference), the head gradient accumulates in float32 and is cast to the head's dtype at the end.

Logits of both models: ``softcap * tanh(logit_scale * h W^T / softcap)`` (``logit_scale * h W^T``
without softcap); ``teacher_transform=(logit_scale, softcap)`` gives the teacher its own. The
teacher head may have extra (padding) rows: only its first V rows are used, V = student
vocabulary. The teacher gets no gradient. Hidden states may be ``(N, H)`` or ``(..., H)`` with
``mask`` (or the weights) shaped ``(...)``.
"""

from __future__ import annotations

import torch

from sead.fused_inputs import checked_inputs
from sead.fused_kernels import KernelOptions, apply_fused_divergence, run_chunks
from sead.objectives import ZONE_C_MIXES
from sead.zones import Zone

__all__ = ["transform_logits", "divergence_stats_from_hidden", "sead_weights", "zone_c_weights", "fused_divergence"]


def transform_logits(logits: torch.Tensor, logit_scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """Float32 ``softcap * tanh(logit_scale * z / softcap)`` (``logit_scale * z`` without softcap)."""
    z = logits.float() * logit_scale
    return z if softcap is None else softcap * torch.tanh(z / softcap)


@torch.no_grad()
def divergence_stats_from_hidden(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    mask,
    chunk_size=1024,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
    workspace=None,
):
    """Per-position float32 ``(H(p_t), H(p_s), FKL(p_t || p_s), RKL(p_s || p_t))``, each shaped like ``mask``
    (0 where masked), in one chunked pass over the valid rows: two ``(chunk_size, V)`` buffers, no gradient.
    """
    s_N_H, s_head_V_H, t_N_H, t_head_V_H, t_transform = checked_inputs(
        student_hidden.detach(),
        student_head.detach(),
        teacher_hidden,
        teacher_head,
        mask.shape,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
    )
    opts = KernelOptions(
        chunk_size, float(logit_scale), softcap, t_transform, None, None, False, False, workspace, entropies=True
    )
    rows_S = mask.reshape(-1).bool().nonzero().squeeze(-1)
    ones_S = torch.ones(rows_S.numel(), dtype=torch.float32, device=s_N_H.device)
    out_4N = torch.zeros(4, s_N_H.shape[0], dtype=torch.float32, device=s_N_H.device)
    for idx, _, _, o in run_chunks(s_N_H, s_head_V_H, t_N_H, t_head_V_H, rows_S, ones_S, ones_S, opts):
        out_4N[:, idx] = torch.stack((o.ent_t, o.ent_s, o.fkl, o.rkl))
    return tuple(x.reshape(mask.shape) for x in out_4N)


def sead_weights(zones: torch.Tensor, alpha: float, lam: float = 1.0, zone_c_mix: str = "eq4"):
    """Per-position float32 ``(w_rkl, w_fkl)`` shaped like ``zones`` for :func:`fused_divergence`.

    B: (1, 0).  C: (0, alpha lam) for ``eq4``, ((1 - alpha) lam, alpha lam) for ``interpolate``.
    A and masked: (0, 0).
    """
    c_rkl, c_fkl = zone_c_weights(alpha, lam, zone_c_mix)
    is_b, is_c = (zones == Zone.B).float(), (zones == Zone.C).float()
    return is_b + c_rkl * is_c, c_fkl * is_c


def zone_c_weights(alpha: float, lam: float, zone_c_mix: str) -> tuple[float, float]:
    """``(w_rkl, w_fkl)`` of Zone C rows; ValueError naming ``zone_c_mix`` when it is not a known mix."""
    if zone_c_mix not in ZONE_C_MIXES:
        raise ValueError(f"zone_c_mix must be one of {ZONE_C_MIXES}, got {zone_c_mix!r}")
    return ((1.0 - alpha) * lam if zone_c_mix == "interpolate" else 0.0), alpha * lam


def fused_divergence(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    rkl_weight,
    fkl_weight,
    normalizer=None,
    chunk_size=1024,
    logit_scale=1.0,
    softcap=None,
    teacher_transform=None,
    workspace=None,
):
    """The shared chunked core: ``(loss, token_losses)``.

    loss = sum_t [w_rkl(t) RKL(t) + w_fkl(t) FKL(t)] / max(normalizer, 1). Weights are shaped like
    the hidden states' leading dims; positions with both weights 0 get no compute and exactly zero
    gradient. ``normalizer`` defaults to the number of non-zero positions. ``token_losses``
    (shaped like the weights, float32, detached) is the bracket per position.
    """
    if rkl_weight.shape != fkl_weight.shape:
        raise ValueError(f"rkl_weight {tuple(rkl_weight.shape)} and fkl_weight {tuple(fkl_weight.shape)} differ")
    w_r_N, w_f_N = rkl_weight.reshape(-1).float(), fkl_weight.reshape(-1).float()
    rows_S = ((w_r_N != 0) | (w_f_N != 0)).nonzero().squeeze(-1)
    normalizer = rows_S.numel() if normalizer is None else normalizer
    loss, tokens, _, _ = apply_fused_divergence(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        rkl_weight.shape,
        w_r_N,
        w_f_N,
        rows_S,
        normalizer,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
        workspace=workspace,
    )
    return loss, tokens
