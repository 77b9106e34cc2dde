"""One optimiser step of on-policy distillation: rollout -> teacher scoring -> zones -> objective -> update.

One ``Trainer.step`` is one optimiser step over a global batch of ``train.batch_size`` prompts
(times ``samples_per_prompt`` rollouts), split contiguously across processes and into
micro-batches of ``train.micro_batch_size`` rows. Zones and the loss normaliser are computed over
the whole global batch, so the update does not depend on how the batch is cut.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from sead.config import RunConfig
from sead.divergence import topk_mass
from sead.methods import alpha_at, normalizer_mask, uses_zone_loss
from sead.metrics import zone_statistics
from sead.rollout import Rollout, generate_rollouts
from sead.scoring import LogitsBackend
from sead.zones import MASKED, assign_zones, assign_zones_threshold

__all__ = ["MicroBatch", "split_micro_batches", "StepResult", "distill_step"]


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


@dataclass
class StepResult:
    metrics: dict
    samples: list[dict]
    finite: bool


def _gather_flat(accelerator, values_N: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate a 1-D tensor over processes in rank order; returns (global, this rank's offset)."""
    if accelerator is None or accelerator.num_processes == 1:
        return values_N, 0
    from accelerate.utils import gather, pad_across_processes

    sizes = gather(torch.tensor([values_N.numel()], device=values_N.device)).tolist()
    padded = pad_across_processes(values_N, dim=0)
    everything = gather(padded).reshape(len(sizes), -1)
    flat = torch.cat([everything[r, : sizes[r]] for r in range(len(sizes))])
    return flat, sum(sizes[: accelerator.process_index])


def _sum_processes(accelerator, value: float) -> float:
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import reduce

    return float(reduce(torch.tensor([value], dtype=torch.float64, device=accelerator.device), "sum"))


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
    from sead.rollout import encode_prompts

    rows = [teacher_prompts[i] for i in rollout.prompt_index[mb.rows]]
    enc = encode_prompts(tokenizer, rows, cfg.rollout.chat_template)
    device = mb.input_ids.device
    ids = torch.cat([enc["input_ids"].to(device), mb.targets], dim=1)
    att = torch.cat([enc["attention_mask"].to(device), mb.mask.long()], dim=1)
    return ids, att, enc["input_ids"].shape[1]


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
    mbs = split_micro_batches(rollout, cfg.train.micro_batch_size)

    backend = backend or LogitsBackend(obj, vocab)
    t0 = time.perf_counter()
    teacher_views = [backend.teacher(teacher, *_teacher_inputs(tokenizer, cfg, mb, rollout, teacher_prompts))
                     for mb in mbs]
    timings["time/teacher_s"] = time.perf_counter() - t0

    # Zoned SEAD needs every process's entropies before any loss: with one micro-batch keep its
    # graph; with several, a no-grad pass first (cheaper than holding every graph).
    keep_graph = len(mbs) == 1
    t0 = time.perf_counter()
    graphs: list[torch.Tensor | None] = [None] * len(mbs)
    stats = []
    for i, mb in enumerate(mbs):
        if keep_graph:
            graphs[i] = backend.student(student, mb)
            stats.append(backend.stats(graphs[i].detach(), teacher_views[i], mb.mask))
        else:
            with torch.no_grad():
                stats.append(backend.stats(backend.student(student, mb), teacher_views[i], mb.mask))
    timings["time/student_s"] = time.perf_counter() - t0
    teacher_ent = [st.teacher_entropy for st in stats]
    student_ent = [st.student_entropy for st in stats]
    fkl_list = [st.fkl for st in stats]
    rkl_list = [st.rkl for st in stats]

    masks = [mb.mask for mb in mbs]
    t_flat = torch.cat([e[m] for e, m in zip(teacher_ent, masks)])
    s_flat = torch.cat([e[m] for e, m in zip(student_ent, masks)])
    t_global, offset = _gather_flat(accelerator, t_flat)
    s_global, _ = _gather_flat(accelerator, s_flat)
    if uses_zone_loss(obj) and obj.zone_mode == "threshold":
        zones_global = assign_zones_threshold(
            t_global, s_global, torch.ones_like(t_global, dtype=torch.bool), obj.teacher_threshold, obj.student_threshold
        )
    else:  # percentile zones: the loss's for zoned SEAD, an analysis label for every other method
        zones_global = assign_zones(t_global, s_global, torch.ones_like(t_global, dtype=torch.bool), obj.fractions)
    zones = _scatter_zones(zones_global[offset : offset + t_flat.numel()], masks)
    counted = sum(int(normalizer_mask(obj, m, z).sum()) for m, z in zip(masks, zones))
    normalizer = _sum_processes(accelerator, float(counted))
    world = accelerator.num_processes
    alpha = alpha_at(obj, step, cfg.train.steps)

    t_bwd = 0.0
    token_loss_list = []
    loss_sum = torch.zeros((), device=device)
    for i, mb in enumerate(mbs):
        last = i == len(mbs) - 1
        ctx = accelerator.no_sync(student) if not last else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            view = graphs[i] if graphs[i] is not None else backend.student(student, mb)
            # DDP averages gradients over processes; divide by global count / world so the
            # update is (sum over the global batch) / (global count).
            loss, tl = backend.losses(view, teacher_views[i], mb, zones[i], alpha, max(normalizer, 1.0) / world,
                                      stats[i])
            timings["time/student_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            accelerator.backward(loss)
            t_bwd += time.perf_counter() - t0
        token_loss_list.append(tl)
        loss_sum += tl.sum()
        graphs[i] = view = None
    timings["time/backward_s"] = t_bwd

    t0 = time.perf_counter()
    lr = float(scheduler.get_last_lr()[0])  # the rate this update uses
    grad_norm = accelerator.clip_grad_norm_(student.parameters(), cfg.optim.max_grad_norm)
    grad_norm = float(grad_norm)
    total_loss = _sum_processes(accelerator, float(loss_sum)) / max(normalizer, 1.0)
    finite = math.isfinite(grad_norm) and math.isfinite(total_loss)
    if finite:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    timings["time/optim_s"] = time.perf_counter() - t0

    metrics = _step_metrics(
        cfg, accelerator, zones, masks, teacher_ent, student_ent, fkl_list, rkl_list, token_loss_list,
        normalizer, total_loss, grad_norm, alpha, lr, rollout, teacher_views if backend.name == "logits" else None,
    )
    metrics.update(timings)
    if rewards_fn is not None:
        rewards = rewards_fn(rollout)
        metrics["reward/mean"] = _sum_processes(accelerator, float(sum(rewards))) / _sum_processes(
            accelerator, float(len(rewards))
        )
        metrics["_rewards"] = rewards
    samples = []
    if want_samples and accelerator.is_main_process:
        samples = _sample_records(cfg, tokenizer, rollout, mbs, zones, teacher_ent, student_ent,
                                  token_loss_list, fkl_list, metrics.get("_rewards"), step)
    return StepResult(metrics=metrics, samples=samples, finite=finite)


def _step_metrics(cfg, accelerator, zones, masks, teacher_ent, student_ent, fkl_list, rkl_list, token_loss_list,
                  normalizer, total_loss, grad_norm, alpha, lr, rollout, teacher_logits) -> dict:
    flat = lambda xs: torch.cat([x[m] for x, m in zip(xs, masks)]).float()  # noqa: E731
    gathered = [_gather_flat(accelerator, flat(xs))[0] for xs in (zones, teacher_ent, student_ent, fkl_list, rkl_list,
                                                                   token_loss_list)]
    z, te, se, fkl, rkl, tl = gathered
    metrics = zone_statistics(z.long(), te, se, fkl, rkl)
    metrics["loss/total"] = total_loss
    if uses_zone_loss(cfg.objective):
        denom = max(normalizer, 1.0)
        metrics["loss/zone_b"] = float(tl[z == 1].sum()) / denom
        metrics["loss/zone_c"] = float(tl[z == 2].sum()) / denom
    metrics["sched/alpha"] = alpha
    metrics["optim/lr"] = lr
    metrics["optim/grad_norm"] = grad_norm
    lengths = rollout.response_mask.sum(-1).float()
    metrics["rollout/response_len_mean"] = _sum_processes(accelerator, float(lengths.sum())) / _sum_processes(
        accelerator, float(lengths.numel())
    )
    if cfg.objective.top_k is not None and teacher_logits is not None:
        mass = torch.cat([topk_mass(t, cfg.objective.top_k)[m] for t, m in zip(teacher_logits, masks)])
        metrics["teacher/topk_mass"] = float(_gather_flat(accelerator, mass)[0].mean())
    return metrics


def _sample_records(cfg, tokenizer, rollout, mbs, zones, teacher_ent, student_ent, token_loss_list, fkl_list,
                    rewards, step) -> list[dict]:
    records = []
    for i, mb in enumerate(mbs):
        for r in range(mb.mask.shape[0]):
            if len(records) >= cfg.logging.num_samples:
                return records
            row = mb.rows.start + r
            m = mb.mask[r]
            ids = mb.targets[r][m].tolist()
            records.append({
                "step": step + 1,
                "method": cfg.objective.method,
                "prompt": rollout.prompts[row],
                "response": rollout.response_texts[row],
                "tokens": [tokenizer.decode([t]) for t in ids],
                "zone": zones[i][r][m].tolist(),
                "teacher_entropy": [round(x, 5) for x in teacher_ent[i][r][m].tolist()],
                "student_entropy": [round(x, 5) for x in student_ent[i][r][m].tolist()],
                "loss": [round(x, 6) for x in token_loss_list[i][r][m].tolist()],
                "fkl": [round(x, 6) for x in fkl_list[i][r][m].tolist()],
                "reward": None if rewards is None else rewards[row],
            })
    return records
