"""Scoring backends on real HF architectures whose logits are not plain ``hidden @ head.T``.

The fused backend rebuilds logits from the last hidden state with each model's own scale and
soft-cap (Gemma-2 soft-caps, Cohere and Granite scale); its statistics, loss and gradients must equal the
materialised-logits backend's, also when student and teacher transform differently.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from sead.config import ObjectiveConfig
from sead.scoring import FusedBackend, LogitsBackend, fused_support, matching_backbone, response_hidden
from sead.stepping import MicroBatch
from sead.zones import assign_zones

VOCAB = 24


def tiny(kind: str, seed: int):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
    )
    if kind == "gemma2":  # tanh soft-cap small enough to bend these logits
        cfg = transformers.Gemma2Config(
            **common,
            final_logit_softcapping=1.5,
            attn_logit_softcapping=None,
            query_pre_attn_scalar=8,
            sliding_window=16,
        )
        model = transformers.Gemma2ForCausalLM(cfg)
    elif kind == "cohere":
        model = transformers.CohereForCausalLM(transformers.CohereConfig(**common, logit_scale=0.37))
    elif kind == "granite":  # divides its logits by logits_scaling
        model = transformers.GraniteForCausalLM(transformers.GraniteConfig(**common, logits_scaling=2.5))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, tie_word_embeddings=False))
    with torch.no_grad():  # sharper heads than the init, so entropies spread and zones mean something
        model.get_output_embeddings().weight.mul_(25.0)
    return model.float().eval()


def batch(seed=0, rows=3, prompt=4, resp=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, prompt + resp), generator=g)
    att = torch.ones_like(ids)
    att[0, :2] = 0  # left padding
    mask = torch.rand(rows, resp, generator=g) > 0.2
    return MicroBatch(slice(0, rows), ids, att, ids[:, prompt:], mask, prompt)


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite", "llama"])
def test_fused_support_rebuilds_each_architecture(kind):
    ok, why = fused_support(tiny(kind, 0), VOCAB)
    assert ok, why


def test_fused_support_refuses_a_head_with_bias():
    model = tiny("llama", 0)
    model.lm_head.bias = torch.nn.Parameter(torch.ones(VOCAB))
    ok, why = fused_support(model, VOCAB)
    assert not ok and "output embedding" in why


@pytest.mark.parametrize(
    "student_kind,teacher_kind", [("llama", "gemma2"), ("cohere", "llama"), ("gemma2", "cohere"), ("granite", "llama")]
)
@pytest.mark.parametrize("method", ["sead", "eopd", "fkl"])
def test_fused_equals_logits_with_different_logit_transforms(student_kind, teacher_kind, method):
    student, teacher, mb = tiny(student_kind, 1), tiny(teacher_kind, 2), batch()
    cfg = ObjectiveConfig(method=method, tau=1.5)
    results = []
    for backend in (LogitsBackend(cfg, VOCAB), FusedBackend(cfg, VOCAB, student, teacher, chunk_size=5)):
        student.zero_grad(set_to_none=True)
        t = backend.teacher(teacher, mb.input_ids, mb.attention_mask, mb.prompt_len)
        s = backend.student(student, mb)
        stats = backend.stats(s, t, mb.mask)
        zones = assign_zones(stats.teacher_entropy, stats.student_entropy, mb.mask)
        loss, _ = backend.losses(s, t, mb, zones, 0.6, float(mb.mask.sum()), stats)
        loss.backward()
        grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
        results.append((stats, zones, loss.detach(), grads))
    (want_stats, want_zones, want_loss, want_grads), (stats, zones, loss, grads) = results
    for field in ("teacher_entropy", "student_entropy", "fkl", "rkl"):
        torch.testing.assert_close(getattr(stats, field), getattr(want_stats, field), rtol=1e-4, atol=1e-5)
    assert torch.equal(zones, want_zones)
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-6)
    assert len(grads) == len(want_grads) and loss.item() > 0
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite", "llama"])
def test_teacher_backbone_gives_the_same_hidden_states(kind):
    model, mb = tiny(kind, 3), batch(seed=4)
    backbone = matching_backbone(model, VOCAB)
    assert backbone is model.get_decoder()
    with torch.no_grad():
        want = response_hidden(model, mb.input_ids, mb.attention_mask, mb.prompt_len)
        got = response_hidden(model, mb.input_ids, mb.attention_mask, mb.prompt_len, backbone)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class _Shifted(torch.nn.Module):
    """A decoder whose last hidden state is not the model's: the backbone shortcut must be refused."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kw):
        out = self.inner(**kw)
        out.last_hidden_state = out.last_hidden_state + 1.0
        return out


def test_mismatched_or_missing_backbone_is_not_used(monkeypatch):
    model = tiny("llama", 5)
    monkeypatch.setattr(model, "get_decoder", lambda: _Shifted(model.model))
    assert matching_backbone(model, VOCAB) is None
    monkeypatch.setattr(model, "get_decoder", lambda: model)
    assert matching_backbone(model, VOCAB) is None
