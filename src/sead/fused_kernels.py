"""Chunked kernels of the fused losses: the reusable workspace, the per-chunk float32 work and the
autograd function that hands the precomputed gradients back (inputs are checked in `sead.fused_inputs`).

Shapes as in :mod:`sead.fused`: N flattened positions, S selected rows of N, V vocabulary, H hidden,
C chunk rows. Per chunk of rows: both logits are projected into two ``(C, V)`` float32 buffers and
turned into log-probabilities in place; everything else (entropies, KL terms, the logit gradient)
runs over blocks of rows (32, or more when 4 MiB holds more) in three small scratch buffers, and the
gradient overwrites the student's log-probabilities. See :mod:`sead.fused` for the maths.

The public names are the building blocks :mod:`sead.fused` (training), :mod:`sead.fused_losses` and
:mod:`sead.fused_single_pass` share; everything prefixed ``_`` stays inside this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sead.fused_inputs import checked_inputs

__all__ = [
    "two_pass_workspace",
    "chunked_entropies",
    "ZoneRule",
    "KernelOptions",
    "ChunkOut",
    "run_chunks",
    "apply_fused_divergence",
]

# ---------------------------------------------------------------------------------------------
# Chunk kernels: in-place float32 work on reusable (C, V) buffers, no (C, V) allocations

_SCRATCH_ROWS = 32  # at least this many rows per scratch block ...
_SCRATCH_ELEMENTS = 1 << 20  # ... or as many as fit in 1 Mi floats (4 MiB): at small V, one block per chunk
_SCRATCH_COUNT = 3  # pass-2 row-block scratch: log-ratio, teacher probabilities, products
_MM_OUT_DTYPE = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 8)  # mm(..., out_dtype=)


def _buffers(count: int, rows: int, vocab: int, device, workspace=None, scratch: int = _SCRATCH_COUNT):
    """``count`` float32 ``(rows, V)`` buffers, then ``scratch`` small ``(_scratch_rows, V)`` ones, last.

    Carved from ``workspace`` (a flat float32 tensor) when it is large enough: one allocation shared
    by pass 1 and pass 2 (on CPU every fresh allocation is paid again in page faults).
    """
    sizes = [rows * vocab] * count + [_scratch_rows(rows, vocab) * vocab] * scratch
    if workspace is None or workspace.numel() < sum(sizes):
        workspace = torch.empty(sum(sizes), dtype=torch.float32, device=device)
    return [part.view(-1, vocab) for part in workspace[: sum(sizes)].split(sizes)]


def _scratch_rows(rows: int, vocab: int) -> int:
    """Rows of one scratch block: elementwise work in blocks bounds memory at large V; at small V
    one block per chunk avoids paying per-block kernel launches for nothing."""
    return min(rows, max(_SCRATCH_ROWS, _SCRATCH_ELEMENTS // max(vocab, 1)))


def two_pass_workspace(n_valid, n_rows2, chunk_size, count2, vocab, device, workspace=None):
    """Pass-1 chunk rows and one flat workspace for both passes, sized for pass 2 (``count2``
    buffers of its rows plus scratch); pass 1 (one buffer) takes as many rows as fit, never raising
    the peak.
    """
    rows2 = min(chunk_size, n_rows2)
    rows1 = max(1, min(chunk_size, n_valid, count2 * rows2))
    need2 = count2 * rows2 + _SCRATCH_COUNT * _scratch_rows(rows2, vocab)
    need = max(need2, rows1 + _scratch_rows(rows1, vocab)) * vocab
    if workspace is None or workspace.numel() < need:
        workspace = torch.empty(need, dtype=torch.float32, device=device)
    return rows1, workspace


def _row_blocks(n: int, scratch_rows: int):
    """Row slices of at most ``scratch_rows``: elementwise work runs block by block in scratch."""
    return (slice(i, min(i + scratch_rows, n)) for i in range(0, n, max(scratch_rows, 1)))


def _project(out, hidden_C_H, head_V_H, logit_scale, softcap, tanh_out=None) -> None:
    """``out <- transform(hidden @ head.T)`` in float32; ``tanh_out <- tanh(.)`` when given (softcap)."""
    hidden_C_H = hidden_C_H.to(head_V_H.dtype)
    if head_V_H.dtype == torch.float32:
        torch.mm(hidden_C_H, head_V_H.t(), out=out)
    else:  # low-precision product, rounded like the materialised reference, then upcast
        out.copy_(hidden_C_H @ head_V_H.t())
    if softcap is not None:
        out.mul_(logit_scale / softcap).tanh_()
        if tanh_out is not None:
            tanh_out.copy_(out)
        out.mul_(softcap)
    elif logit_scale != 1.0:
        out.mul_(logit_scale)


def _log_softmax_(z: torch.Tensor, scratch: torch.Tensor) -> None:
    """In place: ``z <- log softmax(z)`` for the rows of ``(n, V)``; ``scratch`` holds exp per block.

    ``torch.sum``'s cascade summation keeps float32 sums over 10^5 entries accurate (a BLAS dot
    product loses about a decimal digit there), hence exp-then-sum rather than fused dots.
    """
    z.sub_(z.amax(-1, keepdim=True))
    total = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    for r in _row_blocks(z.shape[0], scratch.shape[0]):
        total[r] = torch.exp(z[r], out=scratch[: r.stop - r.start]).sum(-1)
    z.sub_(total.log_().unsqueeze(-1))


def _entropy_(z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) per row, ``(n,)``; ``z`` is overwritten, ``scratch`` is ``(<= n, V)`` work rows.

    With a = z - max z and s = sum exp(a): H = log s - sum(exp(a) * a) / s (two non-negative terms).
    """
    z.sub_(z.amax(-1, keepdim=True))
    out = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    for r in _row_blocks(z.shape[0], scratch.shape[0]):
        work = torch.exp(z[r], out=scratch[: r.stop - r.start])
        total = work.sum(-1)
        out[r] = total.log() - work.mul_(z[r]).sum(-1) / total
    return out


@torch.no_grad()
def chunked_entropies(hidden_N_H, head_V_H, rows_S, chunk_size, logit_scale, softcap, workspace=None) -> torch.Tensor:
    """Float32 ``H(softmax(transform(hidden @ head.T)))`` at the rows ``rows_S`` of ``(N,)``, 0 elsewhere.

    No gradient; one ``(C, V)`` buffer and one scratch block, carved from ``workspace`` when it fits.
    """
    out_N = torch.zeros(hidden_N_H.shape[0], dtype=torch.float32, device=hidden_N_H.device)
    rows = min(chunk_size, rows_S.numel())
    bufs = _buffers(1, rows, head_V_H.shape[0], hidden_N_H.device, workspace, scratch=1) if rows else []
    for start in range(0, rows_S.numel(), max(rows, 1)):
        idx = rows_S[start : start + rows]
        z = bufs[0][: idx.numel()]
        _project(z, hidden_N_H.index_select(0, idx), head_V_H, logit_scale, softcap)
        out_N[idx] = _entropy_(z, bufs[1])
    return out_N


@dataclass(frozen=True)
class ZoneRule:
    """In-chunk zones: C if H(p_t) > teacher, else B if H(p_s) > student, else A (weights 0)."""

    teacher: float
    student: float  # -inf: every non-C row is B (no student entropy needed)
    b: tuple[float, float]  # (w_rkl, w_fkl) of B rows
    c: tuple[float, float]  # (w_rkl, w_fkl) of C rows

    def weights(self, ent_t, ent_s):
        """``(w_rkl, w_fkl, in_zone)`` per row from the rows' teacher and student entropies."""
        is_c = (ent_t.double() > self.teacher).float()  # float64: exact compare with the Python value
        is_b = (1.0 - is_c) * (ent_s.double() > self.student).float()
        return is_b * self.b[0] + is_c * self.c[0], is_b * self.b[1] + is_c * self.c[1], is_b + is_c


@dataclass(frozen=True)
class KernelOptions:
    """What :func:`run_chunks` computes: transforms, normaliser, zone rule, which gradients, statistics."""

    chunk_size: int
    logit_scale: float
    softcap: float | None
    teacher_transform: tuple[float, float | None]  # (logit_scale, softcap) of the teacher
    inv_norm: float | None  # None: 1 / |B u C| counted by the zone rule, applied after the pass
    rule: ZoneRule | None
    need_hidden_grad: bool
    need_head_grad: bool
    workspace: torch.Tensor | None = None  # flat float32 scratch to carve the chunk buffers from
    entropies: bool = False  # both entropies for every row (statistics), rule or not


@dataclass
class ChunkOut:
    """Per-row results of one chunk, all ``(C,)`` float32; ``grad`` is the ``(C, V)`` logit gradient."""

    values: torch.Tensor
    grad: torch.Tensor | None
    w_rkl: torch.Tensor
    w_fkl: torch.Tensor
    rkl: torch.Tensor
    fkl: torch.Tensor
    in_zone: torch.Tensor | None = None
    ent_t: torch.Tensor | None = None
    ent_s: torch.Tensor | None = None


def _keeps_tanh(opts: KernelOptions) -> bool:
    """Soft-capped logits with a gradient to compute keep tanh in a third ``(rows, V)`` buffer."""
    return opts.softcap is not None and (opts.need_hidden_grad or opts.need_head_grad)


def run_chunks(s_N_H, s_head_V_H, t_N_H, t_head_V_H, rows_S, w_rkl_S, w_fkl_S, opts: KernelOptions):
    """Run :func:`_chunk` over ``rows_S`` in chunks of ``opts.chunk_size`` rows on buffers reused
    throughout; yields ``(row indices, student hidden rows, buffers, ChunkOut)`` per chunk."""
    rows = min(opts.chunk_size, rows_S.numel())
    count = 2 + _keeps_tanh(opts)
    bufs = _buffers(count, rows, s_head_V_H.shape[0], s_N_H.device, opts.workspace) if rows else []
    for start in range(0, rows_S.numel(), max(rows, 1)):
        idx, sl = rows_S[start : start + rows], slice(start, start + rows)
        hs = s_N_H.index_select(0, idx)
        out = _chunk(bufs, hs, s_head_V_H, t_N_H.index_select(0, idx), t_head_V_H, w_rkl_S[sl], w_fkl_S[sl], opts)
        yield idx, hs, bufs, out


def _chunk(bufs, hs, s_head, ht, t_head, w_r, w_f, opts: KernelOptions) -> ChunkOut:
    """Weighted divergence of one chunk, its logit gradient (in ``bufs[0]``) and the zone rule's outputs.

    value = w_r RKL + w_f FKL; gradient = k (w_r p_s (log p_s - log p_t - RKL) + w_f (p_s - p_t))
    * dz/draw, k = inv_norm * logit_scale. Two ``(n, V)`` buffers hold log p_s and log p_t; the
    rest runs over blocks of rows in three small scratch buffers, so the gradient overwrites log p_s.
    """
    n, device = hs.shape[0], hs.device
    lp_s, lp_t, (d_buf, pt_buf, work_buf) = bufs[0][:n], bufs[1][:n], bufs[-3:]
    want_grad = opts.need_hidden_grad or opts.need_head_grad
    tanh = bufs[2][:n] if _keeps_tanh(opts) else None
    _project(lp_s, hs, s_head, opts.logit_scale, opts.softcap, tanh_out=tanh)
    _log_softmax_(lp_s, work_buf)
    _project(lp_t, ht, t_head, *opts.teacher_transform)
    _log_softmax_(lp_t, work_buf)
    rule = opts.rule
    want_t = opts.entropies or rule is not None
    want_s = opts.entropies or (rule is not None and rule.student > -math.inf)
    out = ChunkOut(None, None, w_r, w_f, *(torch.zeros(n, dtype=torch.float32, device=device) for _ in range(2)))
    if want_t:
        out.ent_t, out.ent_s = (torch.zeros(n, dtype=torch.float32, device=device) for _ in range(2))
    if rule is not None:
        out.w_rkl, out.w_fkl, out.in_zone = (torch.empty(n, dtype=torch.float32, device=device) for _ in range(3))
    k = (1.0 if opts.inv_norm is None else opts.inv_norm) * opts.logit_scale
    any_fkl = rule is None and bool((w_f != 0).any())  # one host sync per chunk, not per block
    for r in _row_blocks(n, d_buf.shape[0]):
        m = r.stop - r.start
        s_r, t_r, d, p_t, work = lp_s[r], lp_t[r], d_buf[:m], pt_buf[:m], work_buf[:m]
        torch.exp(t_r, out=p_t)
        if want_t:
            out.ent_t[r] = -torch.mul(p_t, t_r, out=work).sum(-1)
        if want_s:
            out.ent_s[r] = -torch.exp(s_r, out=work).mul_(s_r).sum(-1)
        torch.sub(s_r, t_r, out=d)  # log p_s - log p_t
        out.fkl[r] = -torch.mul(p_t, d, out=work).sum(-1)
        p_s = s_r.exp_()
        rkl = out.rkl[r] = torch.mul(p_s, d, out=work).sum(-1)
        if rule is not None:
            out.w_rkl[r], out.w_fkl[r], out.in_zone[r] = rule.weights(out.ent_t[r], out.ent_s[r])
        if not want_grad:
            continue
        gw_r, gw_f = out.w_rkl[r] * k, out.w_fkl[r] * k
        g = p_s.mul_(d.mul_(gw_r[:, None]).add_((gw_f - gw_r * rkl)[:, None]))
        if any_fkl or (rule is not None and bool((gw_f != 0).any())):
            g.addcmul_(p_t, gw_f[:, None], value=-1.0)
        if tanh is not None:  # d softcap*tanh(x/softcap) = 1 - tanh^2
            g.addcmul_(g, tanh[r].square_(), value=-1.0)
    out.values = out.w_rkl * out.rkl + out.w_fkl * out.fkl
    out.grad = lp_s if want_grad else None
    return out


def _addmm_fp32(acc_V_H: torch.Tensor, g_C_V: torch.Tensor, g_low, h_C_H: torch.Tensor) -> None:
    """``acc += g.T @ h`` into a float32 accumulator (bf16/fp16 products not rounded first)."""
    if g_low is not None and acc_V_H.device.type == "cuda" and _MM_OUT_DTYPE:
        torch.addmm(acc_V_H, g_low.t(), h_C_H, out_dtype=torch.float32, out=acc_V_H)
    else:
        acc_V_H.addmm_(g_C_V.t(), h_C_H.float())


# ---------------------------------------------------------------------------------------------
# The autograd function and its entry point


class _FusedDivergence(torch.autograd.Function):
    """Gradients computed in forward, chunk by chunk, and replayed (scaled) in backward.

    Outputs: loss (scalar), then per-position token losses, teacher and student entropies (the
    last two only with a zone rule, else 0), all ``(N,)`` float32 and non-differentiable.
    """

    @staticmethod
    def forward(ctx, s_hidden_N_H, s_head_V_H, t_hidden_N_H, t_head_V_H, rows_S, w_rkl_S, w_fkl_S, opts):
        (n_tokens, width), vocab, device = s_hidden_N_H.shape, s_head_V_H.shape[0], s_hidden_N_H.device
        tokens_N, ent_t_N, ent_s_N = (torch.zeros(n_tokens, dtype=torch.float32, device=device) for _ in range(3))
        grad_h = torch.zeros_like(s_hidden_N_H) if opts.need_hidden_grad else None
        grad_w = torch.zeros(vocab, width, dtype=torch.float32, device=device) if opts.need_head_grad else None
        low, count = s_head_V_H.dtype != torch.float32, 0
        for idx, hs, bufs, out in run_chunks(
            s_hidden_N_H, s_head_V_H, t_hidden_N_H, t_head_V_H, rows_S, w_rkl_S, w_fkl_S, opts
        ):
            tokens_N[idx], g = out.values, out.grad
            if out.in_zone is not None:
                ent_t_N[idx], ent_s_N[idx], count = out.ent_t, out.ent_s, count + int(out.in_zone.sum())
                keep = ((out.w_rkl != 0) | (out.w_fkl != 0)).nonzero().squeeze(-1)
                if g is not None and keep.numel() < idx.numel():  # Zone A rows: no backward matmuls
                    g = torch.index_select(g, 0, keep, out=bufs[1][: keep.numel()])  # g lives in bufs[0]
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


def apply_fused_divergence(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    weight_shape,
    w_rkl_N,
    w_fkl_N,
    rows_S,
    normalizer,
    chunk_size,
    logit_scale,
    softcap,
    teacher_transform,
    rule=None,
    workspace=None,
):
    """``(loss, token_losses, teacher_entropy, student_entropy)``, the last three shaped ``weight_shape``.

    Checks shapes, builds the options and applies the autograd function over the rows ``rows_S``
    with per-position weights ``w_rkl_N``, ``w_fkl_N``. ``normalizer=None``: 1 / |B u C| counted by
    ``rule``. Every differentiable fused loss goes through here.
    """
    s_hidden_N_H, s_head_V_H, t_hidden_N_H, t_head_V_H, teacher_transform = checked_inputs(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        weight_shape,
        chunk_size,
        logit_scale,
        softcap,
        teacher_transform,
    )
    inv_norm = None if normalizer is None else 1.0 / max(float(normalizer), 1.0)
    grad_on = torch.is_grad_enabled()
    opts = KernelOptions(
        chunk_size,
        float(logit_scale),
        softcap,
        teacher_transform,
        inv_norm,
        rule,
        grad_on and s_hidden_N_H.requires_grad,
        grad_on and s_head_V_H.requires_grad,
        workspace,
    )
    w_r_S, w_f_S = w_rkl_N.index_select(0, rows_S), w_fkl_N.index_select(0, rows_S)
    loss, *per_position = _FusedDivergence.apply(
        s_hidden_N_H, s_head_V_H, t_hidden_N_H, t_head_V_H, rows_S, w_r_S, w_f_S, opts
    )
    return loss, *(x.reshape(weight_shape) for x in per_position)
