"""Per-method token losses on one micro-batch: the bridge from config to ``sead.objectives``."""

from __future__ import annotations

import torch

from sead.config import ObjectiveConfig
from sead.objectives import (
    divergence_token_losses,
    eopd_token_losses,
    opd_token_losses,
    sead_token_losses,
)
from sead.schedule import cosine_alpha
from sead.zones import Zone

__all__ = ["alpha_at", "uses_zone_loss", "token_losses", "sampled_logprobs", "normalizer_mask"]


def alpha_at(cfg: ObjectiveConfig, step: int, total_steps: int) -> float:
    """Zone C forward-KL weight at ``step``: cosine-annealed with A on, held at alpha_start with A off."""
    if cfg.anneal:
        return cosine_alpha(step, total_steps, cfg.alpha_start, cfg.alpha_end)
    return cfg.alpha_start


def _divergence_kind(cfg: ObjectiveConfig) -> str:
    """The per-token divergence: the method's own, or OPSD's ``opsd_divergence``."""
    return cfg.opsd_divergence if cfg.method == "opsd" else cfg.method


def uses_zone_loss(cfg: ObjectiveConfig) -> bool:
    """True when the loss itself depends on zones (SEAD, or OPSD with SEAD zones, with T on)."""
    return _divergence_kind(cfg) == "sead" and cfg.zones


def normalizer_mask(cfg: ObjectiveConfig, mask: torch.Tensor, zones: torch.Tensor) -> torch.Tensor:
    """Which tokens count in the loss normaliser: B u C for zoned SEAD, every valid token otherwise."""
    if uses_zone_loss(cfg):
        return (zones == Zone.B) | (zones == Zone.C)
    return mask.bool()


def sampled_logprobs(logits_BRV: torch.Tensor, targets_BR: torch.Tensor) -> torch.Tensor:
    """Float32 log-probability of each sampled token: (B, R, V), (B, R) -> (B, R)."""
    logp = torch.log_softmax(logits_BRV.float(), dim=-1)
    return logp.gather(-1, targets_BR.unsqueeze(-1)).squeeze(-1)


def token_losses(
    cfg: ObjectiveConfig,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    zones: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Per-token loss (B, R) for ``cfg.method``; zero on masked (and, for zoned SEAD, Zone A) tokens."""
    method = _divergence_kind(cfg)
    if method == "opd":
        logprobs = sampled_logprobs(student_logits, targets)
        teacher_lp = sampled_logprobs(teacher_logits, targets)
        return opd_token_losses(logprobs, logprobs.detach(), teacher_lp, mask, cfg.clip_eps)
    if method in ("rkl", "fkl", "jsd"):
        return divergence_token_losses(student_logits, teacher_logits, mask, method, cfg.beta, cfg.top_k)
    if method == "eopd":
        return eopd_token_losses(student_logits, teacher_logits, mask, cfg.tau, cfg.top_k)
    if method == "sead":
        if cfg.zones:
            return sead_token_losses(
                student_logits, teacher_logits, zones, alpha, cfg.lam, cfg.zone_c_mix, cfg.top_k
            )
        rkl = divergence_token_losses(student_logits, teacher_logits, mask, "rkl", top_k=cfg.top_k)
        fkl = divergence_token_losses(student_logits, teacher_logits, mask, "fkl", top_k=cfg.top_k)
        return rkl + alpha * cfg.lam * fkl
    raise ValueError(f"method {method!r} has no token loss here")
