"""One optimiser step of on-policy distillation: rollout -> teacher scoring -> zones -> objective -> update.

One ``Trainer.step`` is one optimiser step over a global batch of ``train.batch_size`` prompts
(times ``samples_per_prompt`` rollouts), split contiguously across processes and into
micro-batches of ``train.micro_batch_size`` rows. Zones and the loss normaliser are computed over
the whole global batch, so the update does not depend on how the batch is cut.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch

from sead.config import RunConfig
from sead.divergence import topk_mass
from sead.methods import alpha_at, normalizer_mask, uses_zone_loss
from sead.metrics import zone_statistics
from sead.rollout import Rollout, encode_prompts, generate_rollouts
from sead.scoring import LogitsBackend, TokenStats
from sead.stepping import MicroBatch, StepResult, apply_update, gather_flat, split_micro_batches, sum_processes
from sead.zones import MASKED, assign_zones, assign_zones_threshold

__all__ = ["distill_step", "global_zones", "GlobalZones"]


@dataclass
class _MicroState:
    """What one micro-batch carries through the step; (b, R) tensors, 0 / MASKED off the mask."""

    mb: MicroBatch
    teacher_view: torch.Tensor  # (b, R, V) logits or (b, R, H) hidden states, by backend
    stats: TokenStats | None = None
    graph: torch.Tensor | None = None  # the student's view with its autograd graph, while kept
    zones: torch.Tensor | None = None
    token_losses: torch.Tensor | None = None


def _scatter_zones(zones_flat: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for mask in masks:
        z = torch.full(mask.shape, MASKED, dtype=torch.long, device=mask.device)
        n = int(mask.sum())
        z[mask] = zones_flat[offset : offset + n].to(mask.device)
        offset += n
        out.append(z)
    return out


def _teacher_inputs(tokenizer, cfg, mb: MicroBatch, rollout: Rollout, teacher_prompts):
    """(input_ids, attention_mask, prompt_len) the teacher scores: the student's own, or with its context."""
    if teacher_prompts is None:
        return mb.input_ids, mb.attention_mask, mb.prompt_len
    rows = [teacher_prompts[i] for i in rollout.prompt_index[mb.rows]]
    enc = encode_prompts(tokenizer, rows, cfg.rollout.chat_template, cfg.rollout.chat_template_kwargs)
    device = mb.input_ids.device
    ids = torch.cat([enc["input_ids"].to(device), mb.targets], dim=1)
    att = torch.cat([enc["attention_mask"].to(device), mb.mask.long()], dim=1)
    return ids, att, enc["input_ids"].shape[1]


class GlobalZones(NamedTuple):
    """Zones of every process's valid tokens (rank order, (N,)), the entropies they came from, and
    where this process's tokens start in them."""

    zones_N: torch.Tensor
    teacher_entropy_N: torch.Tensor
    student_entropy_N: torch.Tensor
    offset: int


def global_zones(obj, accelerator, teacher_entropy_N: torch.Tensor, student_entropy_N: torch.Tensor) -> GlobalZones:
    """Zones over the whole global batch from this process's valid-token entropies (all processes call)."""
    t_global, offset = gather_flat(accelerator, teacher_entropy_N)
    s_global, _ = gather_flat(accelerator, student_entropy_N)
    everywhere = torch.ones_like(t_global, dtype=torch.bool)
    if uses_zone_loss(obj) and obj.zone_mode == "threshold":
        zones = assign_zones_threshold(t_global, s_global, everywhere, obj.teacher_threshold, obj.student_threshold)
    else:  # percentile zones: the loss's for zoned SEAD, an analysis label for every other method
        zones = assign_zones(t_global, s_global, everywhere, obj.fractions)
    return GlobalZones(zones, t_global, s_global, offset)


def _zones(cfg: RunConfig, accelerator, states: list[_MicroState]) -> None:
    """Zones over the whole global batch (every process's valid tokens), scattered back per micro-batch."""
    masks = [st.mb.mask for st in states]
    t_flat = torch.cat([st.stats.teacher_entropy[st.mb.mask] for st in states])
    s_flat = torch.cat([st.stats.student_entropy[st.mb.mask] for st in states])
    found = global_zones(cfg.objective, accelerator, t_flat, s_flat)
    mine = found.zones_N[found.offset : found.offset + t_flat.numel()]
    for st, z in zip(states, _scatter_zones(mine, masks)):
        st.zones = z


def distill_step(
    *,
    cfg: RunConfig,
    accelerator,
    student,
    teacher,
    tokenizer,
    optimizer,
    scheduler,
    prompts: list[str],
    step: int,
    vocab: int,
    rewards_fn=None,
    want_samples: bool = False,
    teacher_prompts: list[str] | None = None,
    backend=None,
) -> StepResult:
    """One optimiser step of on-policy distillation on this process's ``prompts``.

    ``step`` is 0-based (the schedule position); ``rewards_fn(rollout) -> list[float]`` optionally
    scores the rollouts with the verifier (logged, not trained on, for distillation methods).
    ``teacher_prompts`` (OPSD) gives the teacher its own context per prompt (e.g. with the reference
    answer), followed by the same response tokens the student sampled. ``backend`` is a
    ``sead.scoring`` backend (materialised logits by default, or fused hidden states).
    """
    obj, timings = cfg.objective, {}
    device = accelerator.device
    unwrapped = accelerator.unwrap_model(student)
    t0 = time.perf_counter()
    rollout = generate_rollouts(unwrapped, tokenizer, prompts, cfg.rollout, cfg.train.samples_per_prompt).to(device)
    timings["time/rollout_s"] = time.perf_counter() - t0

    backend = backend or LogitsBackend(obj, vocab)
    t0 = time.perf_counter()
    states = [
        _MicroState(mb, backend.teacher(teacher, *_teacher_inputs(tokenizer, cfg, mb, rollout, teacher_prompts)))
        for mb in split_micro_batches(rollout, cfg.train.micro_batch_size)
    ]
    timings["time/teacher_s"] = time.perf_counter() - t0

    # Zoned SEAD needs every process's entropies before any loss: with one micro-batch keep its
    # graph; with several, a no-grad pass first (cheaper than holding every graph).
    keep_graph = len(states) == 1
    t0 = time.perf_counter()
    for st in states:
        if keep_graph:
            st.graph = backend.student(student, st.mb)
            st.stats = backend.stats(st.graph.detach(), st.teacher_view, st.mb.mask)
        else:
            with torch.no_grad():
                st.stats = backend.stats(backend.student(student, st.mb), st.teacher_view, st.mb.mask)
    timings["time/student_s"] = time.perf_counter() - t0

    _zones(cfg, accelerator, states)
    counted = sum(int(normalizer_mask(obj, st.mb.mask, st.zones).sum()) for st in states)
    normalizer = sum_processes(accelerator, float(counted))
    world = accelerator.num_processes
    alpha = alpha_at(obj, step, cfg.train.steps)

    t_bwd = 0.0
    loss_sum = torch.zeros((), device=device)
    for i, st in enumerate(states):
        last = i == len(states) - 1
        ctx = accelerator.no_sync(student) if not last else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            view = st.graph if st.graph is not None else backend.student(student, st.mb)
            # DDP averages gradients over processes; divide by global count / world so the
            # update is (sum over the global batch) / (global count).
            loss, st.token_losses = backend.losses(
                view, st.teacher_view, st.mb, st.zones, alpha, max(normalizer, 1.0) / world, st.stats
            )
            timings["time/student_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            accelerator.backward(loss)
            t_bwd += time.perf_counter() - t0
        loss_sum += st.token_losses.sum()
        st.graph = view = None
    timings["time/backward_s"] = t_bwd

    t0 = time.perf_counter()
    total_loss = sum_processes(accelerator, float(loss_sum)) / max(normalizer, 1.0)
    update = apply_update(accelerator, student, optimizer, scheduler, cfg.optim.max_grad_norm, total_loss)
    timings["time/optim_s"] = time.perf_counter() - t0

    metrics = _step_metrics(
        cfg, accelerator, states, normalizer, total_loss, update, alpha, rollout, topk_logits=backend.name == "logits"
    )
    metrics.update(timings)
    rewards = prompt_rewards = None
    if rewards_fn is not None:
        rewards = rewards_fn(rollout)
        metrics["reward/mean"] = sum_processes(accelerator, float(sum(rewards))) / sum_processes(
            accelerator, float(len(rewards))
        )
        spp = cfg.train.samples_per_prompt
        prompt_rewards = [sum(rewards[i * spp : (i + 1) * spp]) / spp for i in range(len(prompts))]
    samples = []
    if want_samples and accelerator.is_main_process:
        samples = _sample_records(cfg, tokenizer, rollout, states, rewards, step)
    return StepResult(metrics=metrics, samples=samples, finite=update.applied, prompt_rewards=prompt_rewards)


def _step_metrics(
    cfg,
    accelerator,
    states: list[_MicroState],
    normalizer: float,
    total_loss: float,
    update,
    alpha: float,
    rollout: Rollout,
    topk_logits: bool,
) -> dict:
    def flat(values):  # (b, R) per micro-batch -> every process's valid tokens, float32
        mine = torch.cat([v[st.mb.mask] for v, st in zip(values, states)]).float()
        return gather_flat(accelerator, mine)[0]

    z = flat([st.zones for st in states]).long()
    te = flat([st.stats.teacher_entropy for st in states])
    se = flat([st.stats.student_entropy for st in states])
    fkl = flat([st.stats.fkl for st in states])
    rkl = flat([st.stats.rkl for st in states])
    tl = flat([st.token_losses for st in states])
    metrics = zone_statistics(z, te, se, fkl, rkl)
    metrics["loss/total"] = total_loss
    if uses_zone_loss(cfg.objective):
        denom = max(normalizer, 1.0)
        metrics["loss/zone_b"] = float(tl[z == 1].sum()) / denom
        metrics["loss/zone_c"] = float(tl[z == 2].sum()) / denom
    metrics["sched/alpha"] = alpha
    metrics["optim/lr"] = update.lr
    metrics["optim/grad_norm"] = update.grad_norm
    lengths = rollout.response_mask.sum(-1).float()
    metrics["rollout/response_len_mean"] = sum_processes(accelerator, float(lengths.sum())) / sum_processes(
        accelerator, float(lengths.numel())
    )
    if cfg.objective.top_k is not None and topk_logits:
        mass = torch.cat([topk_mass(st.teacher_view, cfg.objective.top_k)[st.mb.mask] for st in states])
        metrics["teacher/topk_mass"] = float(gather_flat(accelerator, mass)[0].mean())
    return metrics


def _sample_records(cfg, tokenizer, rollout: Rollout, states: list[_MicroState], rewards, step: int) -> list[dict]:
    records = []
    for st in states:
        for r in range(st.mb.mask.shape[0]):
            if len(records) >= cfg.logging.num_samples:
                return records
            row = st.mb.rows.start + r
            m = st.mb.mask[r]
            ids = st.mb.targets[r][m].tolist()
            records.append(
                {
                    "step": step + 1,
                    "method": cfg.objective.method,
                    "prompt": rollout.prompts[row],
                    "response": rollout.response_texts[row],
                    "tokens": [tokenizer.decode([t]) for t in ids],
                    "zone": st.zones[r][m].tolist(),
                    "teacher_entropy": [round(x, 5) for x in st.stats.teacher_entropy[r][m].tolist()],
                    "student_entropy": [round(x, 5) for x in st.stats.student_entropy[r][m].tolist()],
                    "loss": [round(x, 6) for x in st.token_losses[r][m].tolist()],
                    "fkl": [round(x, 6) for x in st.stats.fkl[r][m].tolist()],
                    "reward": None if rewards is None else rewards[row],
                }
            )
    return records
