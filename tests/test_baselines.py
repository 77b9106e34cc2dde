"""GRPO and OPSD baselines: the math by hand, and the privileged context only the teacher sees."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import char_tokenizer

from sead.grpo import group_advantages, k3_kl
from sead.objectives import clipped_pg_token_losses


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4, eps=0.0 + 1e-12)
    mean, std = 0.25, math.sqrt(0.25 * 0.75)
    expected = [(1 - mean) / std, -mean / std, -mean / std, -mean / std]
    torch.testing.assert_close(adv[:4], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards: no signal
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=3)


def test_clipped_surrogate_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))  # ratios 1.5, 0.5, 1.1, 1.5
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss = clipped_pg_token_losses(new, old, adv, mask, eps_low=0.2, eps_high=0.3)
    # min(r A, clip(r) A): 1.5*1 vs 1.3*1 -> 1.3; 0.5*-1 vs 0.8*-1 -> -0.8; 1.1*2 vs 1.1*2 -> 2.2; masked -> 0.
    torch.testing.assert_close(loss, -torch.tensor([[1.3, -0.8, 2.2, 0.0]]))


def test_on_policy_gradient_is_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.5], [0.0]])[:1]
    clipped_pg_token_losses(logp, logp.detach(), adv, torch.ones(1, 2, dtype=torch.bool)).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5]]))


def test_k3_is_nonnegative_and_zero_at_equality():
    a = torch.randn(100)
    b = torch.randn(100)
    assert (k3_kl(a, b) >= -1e-6).all()
    assert torch.allclose(k3_kl(a, a), torch.zeros(100))


def test_opsd_teacher_context_has_privileged_text_and_student_does_not(tmp_path):
    from tiny import tiny_llama

    from sead.config import load_config
    from sead.rollout import generate_rollouts
    from sead.step import _teacher_inputs
    from sead.stepping import split_micro_batches

    tok = char_tokenizer()
    cfg = load_config(None, ["objective.method=opsd", "rollout.max_new_tokens=5", "data.template={problem}"])
    model = tiny_llama(len(tok))
    prompts = ["1+2=", "3+4="]
    secret = [cfg.objective.opsd_template.format(prompt=p, answer=a) for p, a in zip(prompts, ["3", "7"])]
    rollout = generate_rollouts(model, tok, prompts, cfg.rollout)
    mb = split_micro_batches(rollout, 8)[0]
    ids, att, plen = _teacher_inputs(tok, cfg, mb, rollout, secret)
    teacher_text = [tok.decode(row[:plen][att[i, :plen].bool()]) for i, row in enumerate(ids)]
    student_text = [
        tok.decode(row[: mb.prompt_len][mb.attention_mask[i, : mb.prompt_len].bool()])
        for i, row in enumerate(mb.input_ids)
    ]
    for i, answer in enumerate(["3", "7"]):
        assert "reference answer" in teacher_text[i].lower() or "answer" in teacher_text[i].lower()
        assert teacher_text[i].endswith(answer) or answer in teacher_text[i][len(prompts[i]) :]
        assert student_text[i] == prompts[i]
    # Both score exactly the same response tokens.
    assert torch.equal(ids[:, plen:], mb.targets)
