"""What every optimiser step shares: micro-batches, cross-process sums, the update, the result.

``sead.step`` (distillation) and ``sead.grpo`` (GRPO) are siblings built on these pieces; neither
imports the other. Shapes: B rollout rows, P prompt positions, R response positions, N values
flattened over valid tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather, pad_across_processes, reduce

from sead.rollout import Rollout

__all__ = ["MicroBatch", "split_micro_batches", "gather_flat", "sum_processes", "Update", "apply_update", "StepResult"]


@dataclass
class MicroBatch:
    """Rows ``rows`` of a rollout, trimmed to their longest response.

    ``input_ids``/``attention_mask``: (b, P + R); ``targets``/``mask``: (b, R) response tokens.
    """

    rows: slice
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    prompt_len: int


def split_micro_batches(rollout: Rollout, size: int) -> list[MicroBatch]:
    """Consecutive groups of ``size`` rollout rows, each cut to its longest response."""
    out = []
    prompt_len = rollout.prompt_len
    for start in range(0, rollout.input_ids.shape[0], size):
        rows = slice(start, start + size)
        resp_mask = rollout.response_mask[rows, prompt_len:]
        width = max(int(resp_mask.sum(-1).max()), 1)
        end = prompt_len + width
        out.append(
            MicroBatch(
                rows=rows,
                input_ids=rollout.input_ids[rows, :end],
                attention_mask=rollout.attention_mask[rows, :end],
                targets=rollout.input_ids[rows, prompt_len:end],
                mask=resp_mask[:, :width].bool(),
                prompt_len=prompt_len,
            )
        )
    return out


def gather_flat(accelerator, values_N: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate a 1-D tensor over processes in rank order; returns (global, this rank's offset)."""
    if accelerator is None or accelerator.num_processes == 1:
        return values_N, 0
    sizes = gather(torch.tensor([values_N.numel()], device=values_N.device)).tolist()
    padded = pad_across_processes(values_N, dim=0)
    everything = gather(padded).reshape(len(sizes), -1)
    flat = torch.cat([everything[r, : sizes[r]] for r in range(len(sizes))])
    return flat, sum(sizes[: accelerator.process_index])


def sum_processes(accelerator, value: float) -> float:
    """``value`` summed over processes, in float64."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    return float(reduce(torch.tensor([value], dtype=torch.float64, device=accelerator.device), "sum"))


@dataclass
class Update:
    """What the optimiser update did: the rate it used, the gradient norm, and whether it was applied."""

    lr: float
    grad_norm: float
    applied: bool


def apply_update(accelerator, model, optimizer, scheduler, max_grad_norm: float, loss: float) -> Update:
    """Clip, then step optimiser and schedule only when the loss and the gradient norm are finite.

    A non-finite step leaves weights, optimiser moments and schedule untouched (the trainer counts it).
    """
    lr = float(scheduler.get_last_lr()[0])  # the rate this update uses
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
    applied = math.isfinite(grad_norm) and math.isfinite(loss)
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return Update(lr=lr, grad_norm=grad_norm, applied=applied)


@dataclass
class StepResult:
    """One step's metrics line, logged samples, whether the update was applied, and verifier rewards.

    ``prompt_rewards``: this process's mean reward per prompt, in prompt order (None when nothing
    was scored); the curriculum sampler learns from it.
    """

    metrics: dict
    samples: list[dict] = field(default_factory=list)
    finite: bool = True
    prompt_rewards: list[float] | None = None
