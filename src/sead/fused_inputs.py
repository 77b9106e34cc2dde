"""Input checks shared by every fused-loss entry point: shapes, heads, logit transforms.

Shapes as in :mod:`sead.fused`: N flattened positions, V vocabulary, H hidden.
"""

from __future__ import annotations

import torch

__all__ = ["check_transform", "teacher_logit_transform", "flatten_hidden", "head_rows", "checked_inputs"]


def flatten_hidden(hidden: torch.Tensor, mask_shape: torch.Size, name: str) -> torch.Tensor:
    """``hidden (..., H)`` as ``(N, H)`` after checking its leading dims are ``mask_shape``."""
    if hidden.dim() < 2 or hidden.shape[:-1] != mask_shape:
        raise ValueError(f"{name} {tuple(hidden.shape)} must be mask shape {tuple(mask_shape)} + (H,)")
    return hidden.reshape(-1, hidden.shape[-1])


def head_rows(head: torch.Tensor, hidden_N_H: torch.Tensor, vocab: int | None, name: str) -> torch.Tensor:
    """``head[:vocab]`` after checking ``head`` is ``(V_h >= vocab, H)`` with H = hidden's width."""
    if head.dim() != 2 or head.shape[1] != hidden_N_H.shape[1]:
        raise ValueError(f"{name} {tuple(head.shape)} must be (V, {hidden_N_H.shape[1]})")
    vocab = head.shape[0] if vocab is None else vocab
    if head.shape[0] < vocab:
        raise ValueError(
            f"{name} has {head.shape[0]} rows but the student vocabulary has {vocab}; "
            "the teacher head must cover the student vocabulary (extra rows are ignored)"
        )
    return head if head.shape[0] == vocab else head[:vocab]  # no view: autograd hands our grad straight to .grad


def teacher_logit_transform(logit_scale, softcap, teacher_transform) -> tuple[float, float | None]:
    """The teacher's (logit_scale, softcap): ``teacher_transform`` if given, else the student's."""
    scale, cap = (logit_scale, softcap) if teacher_transform is None else teacher_transform
    check_transform(scale, cap)
    return float(scale), cap


def check_transform(logit_scale: float, softcap: float | None, chunk_size: int = 1) -> None:
    """ValueError naming the bad value unless softcap > 0 (or None), logit_scale > 0, chunk_size >= 1."""
    for ok, what in (
        (softcap is None or softcap > 0, f"softcap must be > 0 or None, got {softcap}"),
        (logit_scale > 0, f"logit_scale must be > 0, got {logit_scale}"),
        (chunk_size >= 1, f"chunk_size must be >= 1, got {chunk_size}"),
    ):
        if not ok:
            raise ValueError(what)


def checked_inputs(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    shape,
    chunk_size,
    logit_scale,
    softcap,
    teacher_transform,
):
    """Checked, flattened inputs: ``(s_N_H, s_head_V_H, t_N_H, t_head_V_H, teacher (scale, softcap))``;
    the teacher's side detached and its head cut to the student's V rows."""
    check_transform(logit_scale, softcap, chunk_size)
    teacher_transform = teacher_logit_transform(logit_scale, softcap, teacher_transform)
    s_N_H = flatten_hidden(student_hidden, shape, "student_hidden")
    t_N_H = flatten_hidden(teacher_hidden, shape, "teacher_hidden").detach()
    s_head_V_H = head_rows(student_head, s_N_H, None, "student_head")
    t_head_V_H = head_rows(teacher_head.detach(), t_N_H, s_head_V_H.shape[0], "teacher_head")
    return s_N_H, s_head_V_H, t_N_H, t_head_V_H, teacher_transform
