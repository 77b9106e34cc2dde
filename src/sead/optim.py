"""Optimiser and learning-rate schedule of a training run: AdamW, warmup, then cosine/linear/constant."""

from __future__ import annotations

import math

import torch

__all__ = ["lr_lambda", "build_optimizer"]


def lr_lambda(optim_cfg, total_steps: int):
    """LR multiplier: linear warmup over ``warmup_steps``, then cosine/linear/constant decay."""
    warmup, floor = optim_cfg.warmup_steps, optim_cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim_cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim_cfg.schedule == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return factor


def build_optimizer(model, optim_cfg, total_steps: int):
    """AdamW over ``model``'s trainable parameters and its LambdaLR schedule (before accelerate.prepare)."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim_cfg, total_steps))
    return optimizer, scheduler
