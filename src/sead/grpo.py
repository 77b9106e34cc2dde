"""GRPO baseline: verifier rewards, group-normalised advantages, clipped surrogate, no teacher.

One step samples ``objective.group_size`` responses per prompt, scores them with the verifier,
normalises rewards within each prompt's group, and minimises the token-level clipped surrogate
(sum over all response tokens of the global batch / their count), optionally plus
``kl_coef`` * k3 KL to the initial policy.
"""

from __future__ import annotations

import contextlib
import time

import torch

from sead.divergence import entropy
from sead.methods import sampled_logprobs
from sead.objectives import clipped_pg_token_losses
from sead.rollout import generate_rollouts
from sead.scoring import response_logits
from sead.stepping import StepResult, apply_update, split_micro_batches, sum_processes

__all__ = ["group_advantages", "k3_kl", "grpo_step"]


def group_advantages(rewards_N: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps) for rewards laid out group-major: (N,) -> (N,).

    The std is the population std of the group; a group with equal rewards gets advantage 0.
    """
    if rewards_N.numel() % group_size:
        raise ValueError(f"{rewards_N.numel()} rewards do not split into groups of {group_size}")
    groups = rewards_N.float().reshape(-1, group_size)
    mean = groups.mean(-1, keepdim=True)
    std = groups.std(-1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(pi || ref) per sampled token: exp(d) - d - 1, d = ref - logp."""
    d = ref_logprobs.float() - logprobs.float()
    return torch.exp(d) - d - 1.0


def grpo_step(
    *,
    cfg,
    accelerator,
    student,
    reference,
    tokenizer,
    optimizer,
    scheduler,
    prompts,
    answers,
    verifier,
    step: int,
    vocab: int,
    want_samples: bool = False,
) -> StepResult:
    """One GRPO optimiser step on this process's prompts (groups never straddle processes)."""
    obj, timings = cfg.objective, {}
    group = obj.group_size
    t0 = time.perf_counter()
    rollout = generate_rollouts(accelerator.unwrap_model(student), tokenizer, prompts, cfg.rollout, group)
    rollout = rollout.to(accelerator.device)
    timings["time/rollout_s"] = time.perf_counter() - t0
    row_answers = [a for a in answers for _ in range(group)]
    rewards = torch.tensor([float(verifier(t, a)) for t, a in zip(rollout.response_texts, row_answers)])
    advantages = group_advantages(rewards, group).to(accelerator.device)
    mbs = split_micro_batches(rollout, cfg.train.micro_batch_size)
    tokens = sum_processes(accelerator, float(sum(int(mb.mask.sum()) for mb in mbs)))
    world, t_fwd, t_bwd = accelerator.num_processes, 0.0, 0.0
    loss_sum, kl_sum, ent_sum = 0.0, 0.0, 0.0
    for i, mb in enumerate(mbs):
        ctx = accelerator.no_sync(student) if i < len(mbs) - 1 else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            logits = response_logits(student, mb.input_ids, mb.attention_mask, mb.prompt_len, vocab)
            logprobs = sampled_logprobs(logits, mb.targets)
            adv = advantages[mb.rows].unsqueeze(-1)
            eps_high = obj.clip_eps_high if obj.clip_eps_high is not None else obj.clip_eps
            tl = clipped_pg_token_losses(logprobs, logprobs.detach(), adv, mb.mask, obj.clip_eps, eps_high)
            if obj.kl_coef > 0:
                with torch.no_grad():
                    ref_lp = sampled_logprobs(
                        response_logits(reference, mb.input_ids, mb.attention_mask, mb.prompt_len, vocab), mb.targets
                    )
                kl = torch.where(mb.mask, k3_kl(logprobs, ref_lp), torch.zeros_like(logprobs))
                tl = tl + obj.kl_coef * kl
                kl_sum += float(kl.detach().sum())
            t_fwd += time.perf_counter() - t0
            t0 = time.perf_counter()
            accelerator.backward(tl.sum() / max(tokens, 1.0) * world)
            t_bwd += time.perf_counter() - t0
        loss_sum += float(tl.detach().sum())
        ent_sum += float(entropy(logits.detach())[mb.mask].sum())
    t0 = time.perf_counter()
    loss = sum_processes(accelerator, loss_sum) / max(tokens, 1.0)
    update = apply_update(accelerator, student, optimizer, scheduler, cfg.optim.max_grad_norm, loss)
    timings.update(
        {
            "time/student_s": t_fwd,
            "time/backward_s": t_bwd,
            "time/optim_s": time.perf_counter() - t0,
            "time/teacher_s": 0.0,
        }
    )
    n_rows = sum_processes(accelerator, float(len(rewards)))
    reward_mean = sum_processes(accelerator, float(rewards.sum())) / n_rows
    metrics = {
        "loss/total": loss,
        "zones/tokens": tokens,
        "entropy/student_mean": sum_processes(accelerator, ent_sum) / max(tokens, 1.0),
        "reward/mean": reward_mean,
        "reward/std": float(rewards.std(unbiased=False)),
        "reward/zero_adv_groups": float((rewards.reshape(-1, group).std(-1) == 0).float().mean()),
        "optim/lr": update.lr,
        "optim/grad_norm": update.grad_norm,
        "rollout/response_len_mean": float(rollout.response_mask.sum(-1).float().mean()),
        **timings,
    }
    if obj.kl_coef > 0:
        metrics["kl/ref_k3"] = sum_processes(accelerator, kl_sum) / max(tokens, 1.0)
    per_prompt = rewards.reshape(-1, group).mean(-1).tolist()  # one pass fraction per prompt
    samples = []
    if want_samples and accelerator.is_main_process:
        for row in range(min(cfg.logging.num_samples, len(rollout.response_texts))):
            ids = rollout.response_ids[row][rollout.response_mask[row, rollout.prompt_len :]].tolist()
            samples.append(
                {
                    "step": step + 1,
                    "method": "grpo",
                    "prompt": rollout.prompts[row],
                    "response": rollout.response_texts[row],
                    "tokens": [tokenizer.decode([t]) for t in ids],
                    "zone": [-1] * len(ids),
                    "reward": float(rewards[row]),
                    "advantage": float(advantages[row]),
                }
            )
    return StepResult(metrics=metrics, samples=samples, finite=update.applied, prompt_rewards=per_prompt)
