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

Peak extra memory: 3 (4 with ``softcap``) float32 ``(chunk, V)`` buffers reused across chunks, the
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
from dataclasses import dataclass

import torch

from sead.objectives import ZONE_C_MIXES
from sead.zones import MASKED, Zone, assign_zones, assign_zones_threshold, check_fractions

__all__ = [
    "transform_logits",
    "token_entropies_from_hidden",
    "zones_from_hidden",
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


def _flat(hidden: torch.Tensor, mask_shape: torch.Size, name: str) -> torch.Tensor:
    if hidden.dim() < 2 or hidden.shape[:-1] != mask_shape:
        raise ValueError(f"{name} {tuple(hidden.shape)} must be mask shape {tuple(mask_shape)} + (H,)")
    return hidden.reshape(-1, hidden.shape[-1])


def _head_rows(head: torch.Tensor, hidden_N_H: torch.Tensor, vocab: int | None, name: str) -> torch.Tensor:
    """``head[:vocab]`` after checking ``head`` is ``(V_h >= vocab, H)`` with H = hidden's width."""
    if head.dim() != 2 or head.shape[1] != hidden_N_H.shape[1]:
        raise ValueError(f"{name} {tuple(head.shape)} must be (V, {hidden_N_H.shape[1]})")
    vocab = head.shape[0] if vocab is None else vocab
    if head.shape[0] < vocab:
        raise ValueError(f"{name} has {head.shape[0]} rows but the student vocabulary has {vocab}; "
                         "the teacher head must cover the student vocabulary (extra rows are ignored)")  # fmt: skip
    return head if head.shape[0] == vocab else head[:vocab]  # no view: autograd hands our grad straight to .grad


def _teacher_transform(logit_scale, softcap, teacher_transform) -> tuple[float, float | None]:
    """The teacher's (logit_scale, softcap): ``teacher_transform`` if given, else the student's."""
    scale, cap = (logit_scale, softcap) if teacher_transform is None else teacher_transform
    _check_transform(scale, cap)
    return float(scale), cap


def _check_transform(logit_scale: float, softcap: float | None, chunk_size: int = 1) -> None:
    for ok, what in ((softcap is None or softcap > 0, f"softcap must be > 0 or None, got {softcap}"),
                     (logit_scale > 0, f"logit_scale must be > 0, got {logit_scale}"),
                     (chunk_size >= 1, f"chunk_size must be >= 1, got {chunk_size}")):  # fmt: skip
        if not ok:
            raise ValueError(what)


# ---------------------------------------------------------------------------------------------
# Chunk kernels: in-place float32 work on reusable (rows, V) buffers, no (rows, V) allocations

_SCRATCH_ROWS = 32
_MM_OUT_DTYPE = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 8)  # mm(..., out_dtype=)


def _buffers(count: int, rows: int, vocab: int, device, workspace=None) -> list[torch.Tensor]:
    """``count`` float32 ``(rows, V)`` buffers plus a small ``(<= 32, V)`` scratch buffer, last.

    Carved from ``workspace`` (a flat float32 tensor) when it is large enough: one allocation shared
    by pass 1 and pass 2 (on CPU every fresh allocation is paid again in page faults).
    """
    sizes = [rows * vocab] * count + [min(rows, _SCRATCH_ROWS) * vocab]
    if workspace is None or workspace.numel() < sum(sizes):
        workspace = torch.empty(sum(sizes), dtype=torch.float32, device=device)
    return [part.view(-1, vocab) for part in workspace[: sum(sizes)].split(sizes)]


def _workspace(n_valid, n_rows2, chunk_size, count2, vocab, device, workspace=None):
    """Pass-1 chunk rows and one flat workspace for both passes, sized for pass 2 (``count2``
    buffers of its rows); pass 1 (two buffers) takes as many rows as fit, never raising the peak.
    """
    rows2 = min(chunk_size, n_rows2)
    rows1 = max(1, min(chunk_size, n_valid, count2 * rows2 // 2))
    need = max((count2 * rows2 + min(rows2, _SCRATCH_ROWS)), 2 * rows1 + min(rows1, _SCRATCH_ROWS)) * vocab
    if workspace is None or workspace.numel() < need:
        workspace = torch.empty(need, dtype=torch.float32, device=device)
    return rows1, workspace


def _rowdot(a: torch.Tensor, b: torch.Tensor | None, scratch: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` (``b=None``: ``(exp(a) * a).sum(-1)``) for ``(n, V)`` inputs, via scratch.

    ``torch.sum``'s cascade summation keeps float32 sums over 10^5 entries accurate (a BLAS dot
    product loses about a decimal digit there).
    """
    out = torch.empty(a.shape[0], dtype=torch.float32, device=a.device)
    for i in range(0, a.shape[0], scratch.shape[0]):
        part = a[i : i + scratch.shape[0]]
        work = scratch[: part.shape[0]]
        prod = torch.exp(part, out=work).mul_(part) if b is None else torch.mul(part, b[i : i + len(part)], out=work)
        out[i : i + len(part)] = prod.sum(-1)
    return out


def _project(out, hidden_n_H, head_V_H, logit_scale, softcap, tanh_out=None) -> None:
    """``out <- transform(hidden @ head.T)`` in float32; ``tanh_out <- tanh(.)`` when given (softcap)."""
    hidden_n_H = hidden_n_H.to(head_V_H.dtype)
    if head_V_H.dtype == torch.float32:
        torch.mm(hidden_n_H, head_V_H.t(), out=out)
    else:  # low-precision product, rounded like the materialised reference, then upcast
        out.copy_(hidden_n_H @ head_V_H.t())
    if softcap is not None:
        out.mul_(logit_scale / softcap).tanh_()
        if tanh_out is not None:
            tanh_out.copy_(out)
        out.mul_(softcap)
    elif logit_scale != 1.0:
        out.mul_(logit_scale)


def _log_softmax_(z: torch.Tensor, probs: torch.Tensor) -> None:
    """In place: ``z <- log softmax(z)`` and ``probs <- softmax(z)``, rows of ``(n, V)``."""
    z.sub_(z.amax(-1, keepdim=True))
    torch.exp(z, out=probs)
    total = probs.sum(-1, keepdim=True)
    z.sub_(total.log())
    probs.div_(total)


def _entropy_(z: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) per row, ``(n,)``; ``z`` is overwritten, ``work`` is scratch of the same shape.

    With a = z - max z and s = sum exp(a): H = log s - sum(exp(a) * a) / s (two non-negative terms).
    """
    z.sub_(z.amax(-1, keepdim=True))
    torch.exp(z, out=work)
    total = work.sum(-1)
    return total.log() - z.mul_(work).sum(-1) / total


@torch.no_grad()
def _entropies(hidden_N_H, head_V_H, rows_M, chunk_size, logit_scale, softcap, workspace=None) -> torch.Tensor:
    out_N = torch.zeros(hidden_N_H.shape[0], dtype=torch.float32, device=hidden_N_H.device)
    rows = min(chunk_size, rows_M.numel())
    bufs = _buffers(2, rows, head_V_H.shape[0], hidden_N_H.device, workspace) if rows else []
    for start in range(0, rows_M.numel(), max(rows, 1)):
        idx = rows_M[start : start + rows]
        z, work = bufs[0][: idx.numel()], bufs[1][: idx.numel()]
        _project(z, hidden_N_H.index_select(0, idx), head_V_H, logit_scale, softcap)
        out_N[idx] = _entropy_(z, work)
    return out_N


@dataclass(frozen=True)
class _ZoneRule:
    """In-chunk zones: C if H(p_t) > teacher, else B if H(p_s) > student, else A (weights 0)."""

    teacher: float
    student: float  # -inf: every non-C row is B (no student entropy needed)
    b: tuple[float, float]  # (w_rkl, w_fkl) of B rows
    c: tuple[float, float]  # (w_rkl, w_fkl) of C rows

    def weights(self, ent_t, ent_s):
        is_c = (ent_t.double() > self.teacher).float()  # float64: exact compare with the Python value
        is_b = (1.0 - is_c) * (ent_s.double() > self.student).float()
        return is_b * self.b[0] + is_c * self.c[0], is_b * self.b[1] + is_c * self.c[1], is_b + is_c


@dataclass(frozen=True)
class _Opts:
    chunk_size: int
    logit_scale: float
    softcap: float | None
    teacher_transform: tuple[float, float | None]  # (logit_scale, softcap) of the teacher
    inv_norm: float | None  # None: 1 / |B u C| counted by the zone rule, applied after the pass
    rule: _ZoneRule | None
    need_hidden_grad: bool
    need_head_grad: bool
    workspace: torch.Tensor | None = None  # flat float32 scratch to carve the chunk buffers from


def _chunk(bufs, hs, s_head, ht, t_head, w_r, w_f, opts: _Opts):
    """Weighted divergence ``(n,)`` of one chunk, its logit gradient and the zone rule's outputs.

    value = w_r RKL + w_f FKL; gradient (a ``(n, V)`` buffer view, None without grad)
    = k (w_r p_s (log p_s - log p_t - RKL) + w_f (p_s - p_t)) * dz/draw, k = inv_norm * logit_scale.
    """
    n = hs.shape[0]
    a, b, c, scratch = bufs[0][:n], bufs[1][:n], bufs[2][:n], bufs[-1]
    want_grad = opts.need_hidden_grad or opts.need_head_grad
    tanh = bufs[3][:n] if (opts.softcap is not None and want_grad) else None
    _project(a, hs, s_head, opts.logit_scale, opts.softcap, tanh_out=tanh)
    _log_softmax_(a, c)  # a = log p_s
    _project(b, ht, t_head, *opts.teacher_transform)
    _log_softmax_(b, c)  # b = log p_t, c = p_t
    ent_t = ent_s = in_zone = None
    if opts.rule is not None:
        ent_t = -_rowdot(c, b, scratch)
        ent_s = -_rowdot(a, None, scratch) if opts.rule.student > -math.inf else torch.zeros_like(ent_t)
        w_r, w_f, in_zone = opts.rule.weights(ent_t, ent_s)
    torch.sub(a, b, out=b)  # b = log p_s - log p_t
    fkl = -_rowdot(c, b, scratch)
    a.exp_()  # a = p_s
    rkl = _rowdot(a, b, scratch)
    values, g = w_r * rkl + w_f * fkl, None
    if want_grad:
        k = (1.0 if opts.inv_norm is None else opts.inv_norm) * opts.logit_scale
        gw_r, gw_f = w_r * k, w_f * k
        g = b.mul_(gw_r[:, None]).add_((gw_f - gw_r * rkl)[:, None]).mul_(a)
        if bool((gw_f != 0).any()):
            g.addcmul_(c, gw_f[:, None], value=-1.0)
        if tanh is not None:  # d softcap*tanh(x/softcap) = 1 - tanh^2
            g.addcmul_(g, tanh.square_(), value=-1.0)
    return values, g, (w_r, w_f, in_zone, ent_t, ent_s)


def _addmm_fp32(acc_V_H: torch.Tensor, g_n_V: torch.Tensor, g_low, h_n_H: torch.Tensor) -> None:
    """``acc += g.T @ h`` into a float32 accumulator (bf16/fp16 products not rounded first)."""
    if g_low is not None and acc_V_H.device.type == "cuda" and _MM_OUT_DTYPE:
        torch.addmm(acc_V_H, g_low.t(), h_n_H, out_dtype=torch.float32, out=acc_V_H)
    else:
        acc_V_H.addmm_(g_n_V.t(), h_n_H.float())


class _FusedDivergence(torch.autograd.Function):
    """Gradients computed in forward, chunk by chunk, and replayed (scaled) in backward.

    Outputs: loss (scalar), then per-position token losses, teacher and student entropies (the
    last two only with a zone rule, else 0), all ``(N,)`` float32 and non-differentiable.
    """

    @staticmethod
    def forward(ctx, s_hidden_N_H, s_head_V_H, t_hidden_N_H, t_head_V_H, rows_M, w_rkl_M, w_fkl_M, opts):
        (n_tokens, width), vocab, device = s_hidden_N_H.shape, s_head_V_H.shape[0], s_hidden_N_H.device
        tokens_N, ent_t_N, ent_s_N = (torch.zeros(n_tokens, dtype=torch.float32, device=device) for _ in range(3))
        grad_h = torch.zeros_like(s_hidden_N_H) if opts.need_hidden_grad else None
        grad_w = torch.zeros(vocab, width, dtype=torch.float32, device=device) if opts.need_head_grad else None
        low, count, rows = s_head_V_H.dtype != torch.float32, 0, min(opts.chunk_size, rows_M.numel())
        bufs = _buffers(3 + (opts.softcap is not None), rows, vocab, device, opts.workspace) if rows else []
        for start in range(0, rows_M.numel(), max(rows, 1)):
            idx, sl = rows_M[start : start + rows], slice(start, start + rows)
            hs = s_hidden_N_H.index_select(0, idx)
            values, g, (w_r, w_f, in_zone, ent_t, ent_s) = _chunk(
                bufs, hs, s_head_V_H, t_hidden_N_H.index_select(0, idx), t_head_V_H, w_rkl_M[sl], w_fkl_M[sl], opts)
            tokens_N[idx] = values
            if in_zone is not None:
                ent_t_N[idx], ent_s_N[idx], count = ent_t, ent_s, count + int(in_zone.sum())
                keep = ((w_r != 0) | (w_f != 0)).nonzero().squeeze(-1)
                if g is not None and keep.numel() < idx.numel():  # Zone A rows: no backward matmuls
                    g = torch.index_select(g, 0, keep, out=bufs[0][: keep.numel()])
                    idx, hs = idx[keep], hs[keep]
            if g is None or idx.numel() == 0:
                continue
            g_low = g.to(s_head_V_H.dtype) if low else None
            if grad_h is not None:
                grad_h.index_copy_(0, idx, ((g if g_low is None else g_low) @ s_head_V_H).to(grad_h.dtype))
            if grad_w is not None:
                _addmm_fp32(grad_w, g, g_low, hs.to(s_head_V_H.dtype))
        inv_norm = opts.inv_norm
        if inv_norm is None:  # |B u C| known only now: scale the gradients in place
            inv_norm = 1.0 / max(count, 1)
            for grad in (grad_h, grad_w):
                if grad is not None:
                    grad.mul_(inv_norm)
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(s_head_V_H.dtype))
        ctx.mark_non_differentiable(tokens_N, ent_t_N, ent_s_N)
        return tokens_N.sum() * inv_norm, tokens_N, ent_t_N, ent_s_N

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # hand the buffers to autograd (AccumulateGrad can steal them)
        if grad_loss is not None and not bool((grad_loss == 1).all()):
            grad_h = None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype)
            grad_w = None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def _run(student_hidden, student_head, teacher_hidden, teacher_head, weight_shape, w_rkl_N, w_fkl_N, rows_M,
         normalizer, chunk_size, logit_scale, softcap, teacher_transform, rule=None, workspace=None):  # fmt: skip
    """Checks shapes, builds the options and applies the autograd function (all public paths)."""
    _check_transform(logit_scale, softcap, chunk_size)
    teacher_transform = _teacher_transform(logit_scale, softcap, teacher_transform)
    s_hidden_N_H = _flat(student_hidden, weight_shape, "student_hidden")
    t_hidden_N_H = _flat(teacher_hidden, weight_shape, "teacher_hidden").detach()
    s_head_V_H = _head_rows(student_head, s_hidden_N_H, None, "student_head")
    t_head_V_H = _head_rows(teacher_head.detach(), t_hidden_N_H, s_head_V_H.shape[0], "teacher_head")
    inv_norm = None if normalizer is None else 1.0 / max(float(normalizer), 1.0)
    grad_on = torch.is_grad_enabled()
    opts = _Opts(chunk_size, float(logit_scale), softcap, teacher_transform, inv_norm, rule,
                 grad_on and s_hidden_N_H.requires_grad, grad_on and s_head_V_H.requires_grad, workspace)  # fmt: skip
    w_r_M, w_f_M = w_rkl_N.index_select(0, rows_M), w_fkl_N.index_select(0, rows_M)
    loss, *per_position = _FusedDivergence.apply(s_hidden_N_H, s_head_V_H, t_hidden_N_H, t_head_V_H, rows_M,
                                                 w_r_M, w_f_M, opts)  # fmt: skip
    return loss, *(x.reshape(weight_shape) for x in per_position)


# ---------------------------------------------------------------------------------------------
# Public API


def token_entropies_from_hidden(hidden, head, mask, chunk_size=1024, vocab_size=None, logit_scale=1.0,
                                softcap=None, workspace=None) -> torch.Tensor:  # fmt: skip
    """Float32 entropy ``H(softmax(transform(hidden @ head[:vocab_size].T)))`` per position.

    ``hidden (..., H)``, ``head (V_h, H)``, ``mask (...)`` -> ``(...)``; 0 at masked positions.
    No gradient; peak extra memory two float32 ``(chunk_size, V)`` buffers. ``workspace`` (here and
    in the zone/SEAD/core functions): a flat float32 tensor to carve the chunk buffers from when it
    is large enough, e.g. reused across micro-batches (on CPU fresh buffers cost page faults).
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
        rows1, workspace = _workspace(n, n_c + min(round(rho_b * n), n - n_c), chunk_size, 3 + (softcap is not None),
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
