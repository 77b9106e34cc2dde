"""The pieces ``SEADTrainer`` puts between TRL's generations and sead's objective, with no TRL import.

* :func:`trl_micro_batch`: rows of TRL's generation batch (left-padded prompts, right-padded
  completions) as a ``sead.stepping.MicroBatch``, the layout sead's scoring backends read.
* :func:`step_zones`: zones over every process's valid tokens of one optimiser step, in row
  order, and that step's loss normaliser; the same split-invariance as ``sead.step``.
* :class:`CurriculumBatches`: a sead prompt sampler as a torch ``Sampler`` in the order TRL's
  dataloader expects (each step's global generation batch, once per accumulation step).

Shapes: B rows, P prompt positions, R response positions, N valid tokens flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from sead.curriculum import CurriculumConfig, build_sampler
from sead.methods import ObjectiveConfig, normalizer_mask
from sead.metrics import zone_statistics
from sead.scoring import TokenStats
from sead.step import global_zones
from sead.stepping import MicroBatch, gather_flat, sum_processes
from sead.zones import MASKED

__all__ = ["trl_micro_batch", "StepZones", "step_zones", "CurriculumBatches"]


def trl_micro_batch(inputs: dict, rows: slice = slice(None)) -> MicroBatch:
    """Rows ``rows`` of a TRL batch: (B, P + R) ids and attention, (B, R) targets and loss mask.

    The loss mask is TRL's: completion tokens up to the first EOS, without tool-result tokens.
    """
    prompt_ids, completion_ids = inputs["prompt_ids"][rows], inputs["completion_ids"][rows]
    completion_mask = inputs["completion_mask"][rows]
    loss_mask = completion_mask if inputs.get("tool_mask") is None else completion_mask * inputs["tool_mask"][rows]
    return MicroBatch(
        rows=rows,
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([inputs["prompt_mask"][rows], completion_mask], dim=1),
        targets=completion_ids,
        mask=loss_mask.bool(),
        prompt_len=prompt_ids.shape[1],
    )


@dataclass
class StepZones:
    """One step's zones (B, R) (``MASKED`` off the mask), its global normaliser and zone statistics."""

    zones: torch.Tensor
    normalizer: float
    metrics: dict


def step_zones(obj: ObjectiveConfig, accelerator, stats: TokenStats, mask: torch.Tensor) -> StepZones:
    """Zones over the valid tokens of every process's rows, in rank then row-major order.

    ``stats`` and ``mask`` (B, R) cover this process's whole generation batch of the step; the
    normaliser counts the tokens the loss is divided by (B u C for zoned SEAD) over all processes.
    """

    def everyone(values_BR):  # -> (N,) over all processes
        return gather_flat(accelerator, values_BR[mask].float())[0]

    found = global_zones(obj, accelerator, stats.teacher_entropy[mask].float(), stats.student_entropy[mask].float())
    zones_N, offset = found.zones_N, found.offset
    zones = torch.full(mask.shape, MASKED, dtype=torch.long, device=mask.device)
    zones[mask] = zones_N[offset : offset + int(mask.sum())].to(mask.device)
    normalizer = sum_processes(accelerator, float(normalizer_mask(obj, mask, zones).sum()))
    metrics = zone_statistics(
        zones_N, found.teacher_entropy_N, found.student_entropy_N, everyone(stats.fkl), everyone(stats.rkl)
    )
    return StepZones(zones, normalizer, metrics)


class CurriculumBatches(Sampler[int]):
    """Dataset indices for TRL's train dataloader, drawn by a sead prompt sampler.

    Each step's ``batch_size`` indices (the global generation batch: per-device batch x processes
    x accumulation steps) come from ``sampler.next_batch(step, batch_size)`` and are yielded
    ``repeats`` times (the accumulation steps), as TRL's ``RepeatSampler`` lays them out: each
    process's dataloader shard then holds its contiguous slice of the step's prompts. Every
    iteration replays the seeded draws from step 0, so every process, and a resumed run skipping
    its first batches, sees the same order. ``metrics_at(step)`` gives the sampler's metrics after
    drawing ``step``.
    """

    def __init__(
        self,
        cfg: CurriculumConfig,
        difficulties: list[float],
        total_steps: int,
        batch_size: int,
        repeats: int,
    ):
        self.cfg, self.difficulties = cfg, list(difficulties)
        self.total_steps, self.batch_size, self.repeats = total_steps, batch_size, repeats
        self.metrics_by_step: dict[int, dict[str, float]] = {}

    def new_sampler(self):
        """A fresh sead sampler at step 0 (its own copy of the difficulties)."""
        return build_sampler(self.cfg, len(self.difficulties), self.total_steps, list(self.difficulties))

    def __iter__(self):
        sampler = self.new_sampler()
        for step in range(self.total_steps):
            indices = sampler.next_batch(step, self.batch_size)
            self.metrics_by_step[step] = sampler.metrics()
            for _ in range(self.repeats):
                yield from indices

    def metrics_at(self, step: int) -> dict[str, float]:
        """The sampler's metrics for ``step`` (the dataloader may have drawn ahead); older steps are dropped."""
        for old in [s for s in self.metrics_by_step if s < step]:
            del self.metrics_by_step[old]
        return self.metrics_by_step.pop(step, {})

    def __len__(self) -> int:
        return self.total_steps * self.batch_size * self.repeats
