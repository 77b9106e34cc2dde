"""Mixed precision and memory: autocast reaches the student (not the teacher), the fused loss matches logits under
bf16 weights and accumulates in float32, gradient checkpointing changes no update and leaves generation its KV
cache, ``model.attn_implementation`` reaches both models, and a tiny Qwen3 pair trains with bf16 weights, bf16
autocast, gradient checkpointing and LoRA end to end."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate.state import AcceleratorState
from tiny import char_tokenizer, save_addition_run, tiny_llama

import sead.fused_kernels
from sead.config import load_config
from sead.errors import ConfigError
from sead.methods import ObjectiveConfig
from sead.metrics import read_metrics
from sead.models import load_model
from sead.scoring import FusedBackend, LogitsBackend, fused_support
from sead.stepping import MicroBatch
from sead.trainer import Trainer
from sead.zones import assign_zones


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one state per process: after a bf16 run every later Accelerator() would be bf16 too."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return {**save_addition_run(root, vocab_extra_teacher=5), "root": root}


def overrides(assets, out, **extra):
    base = {
        "model.student": assets["student"],
        "model.teacher": assets["teacher"],
        "data.path": assets["data"],
        "data.prompt_field": "question",
        "data.template": "{problem}",
        "verifier.kind": "exact",
        "objective.method": "sead",
        "train.steps": 1,
        "train.batch_size": 4,
        "train.micro_batch_size": 2,
        "train.save_every": 100,
        "rollout.max_new_tokens": 6,
        "rollout.batch_size": 8,
        "train.output_dir": str(out),
        "logging.samples_every": 0,
        "logging.progress": False,
        "train.torch_threads": 1,
        "optim.lr": 1e-3,
        "optim.schedule": "constant",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def setup(assets, out, **extra) -> Trainer:
    return Trainer(load_config(None, overrides(assets, out, **extra))).setup()


def unwrapped(trainer):
    return trainer.accelerator.unwrap_model(trainer.student)


def first_projection(model):
    return model.model.layers[0].self_attn.q_proj


def test_mixed_precision_autocasts_the_student_and_the_teacher_keeps_its_dtype(assets, tmp_path):
    trainer = setup(assets, tmp_path / "amp", **{"train.mixed_precision": "bf16"})
    assert trainer.accelerator.mixed_precision == "bf16"
    assert trainer.backend.name == "fused"  # bf16 logits still pass the fused head check
    seen = {"student": set(), "teacher": set()}
    for name, model in (("student", unwrapped(trainer)), ("teacher", trainer.teacher)):
        first_projection(model).register_forward_hook(
            lambda mod, inp, out, name=name: seen[name].add((torch.is_grad_enabled(), out.dtype))
        )
    trainer.train()
    assert first_projection(unwrapped(trainer)).weight.dtype == torch.float32  # master weights stay float32
    assert (True, torch.bfloat16) in seen["student"]  # the training forward runs under bf16 autocast
    assert seen["teacher"] == {(False, torch.float32)}  # the teacher is not autocast: its own dtype
    record = read_metrics(tmp_path / "amp" / "metrics.jsonl")[0]
    assert math.isfinite(record["loss/total"]) and record["optim/grad_norm"] > 0

    AcceleratorState._reset_state(True)
    mixed = setup(assets, tmp_path / "dtypes", **{"model.dtype": "float32", "model.teacher_dtype": "bfloat16"})
    assert next(mixed.teacher.parameters()).dtype == torch.bfloat16
    assert next(unwrapped(mixed).parameters()).dtype == torch.float32


def test_fused_loss_matches_logits_under_bf16_weights_and_accumulates_in_float32(monkeypatch):
    vocab = len(char_tokenizer())
    student = tiny_llama(vocab, hidden=32, layers=1, seed=2).to(torch.bfloat16).train()
    teacher = tiny_llama(vocab, hidden=48, layers=2, seed=1).to(torch.bfloat16).eval().requires_grad_(False)
    cfg = ObjectiveConfig(method="sead")
    ids = torch.randint(3, vocab, (3, 14), generator=torch.Generator().manual_seed(0))
    att, prompt_len = torch.ones_like(ids), 4
    mask = torch.ones(3, 10, dtype=torch.bool)
    mb = MicroBatch(slice(0, 3), ids, att, ids[:, prompt_len:], mask, prompt_len)
    accumulators = []
    real_addmm = sead.fused_kernels._addmm_fp32

    def spy(acc, *args):
        accumulators.append(acc.dtype)
        return real_addmm(acc, *args)

    monkeypatch.setattr(sead.fused_kernels, "_addmm_fp32", spy)
    zones, results = None, {}
    for backend in (LogitsBackend(cfg, vocab), FusedBackend(cfg, vocab, student, teacher, chunk_size=4)):
        student.zero_grad(set_to_none=True)
        t_view = backend.teacher(teacher, ids, att, prompt_len)
        s_view = backend.student(student, mb)
        stats = backend.stats(s_view.detach(), t_view, mask)
        if zones is None:  # the same zones for both: bf16 noise may swap two near-equal entropies
            zones = assign_zones(stats.teacher_entropy, stats.student_entropy, mask, cfg.fractions)
        loss, token_losses = backend.losses(s_view, t_view, mb, zones, 0.5, float(mask.sum()), stats)
        loss.backward()
        grads = {n: p.grad.float() for n, p in student.named_parameters() if p.grad is not None}
        results[backend.name] = (loss.detach(), token_losses, grads)
    assert accumulators and set(accumulators) == {torch.float32}  # the head gradient sums in float32
    (loss_f, tokens_f, grads_f), (loss_l, tokens_l, grads_l) = results["fused"], results["logits"]
    assert loss_f.dtype == tokens_f.dtype == torch.float32
    assert student.get_output_embeddings().weight.grad.dtype == torch.bfloat16  # cast once, at the end
    assert loss_f.item() == pytest.approx(loss_l.item(), rel=1e-2)
    torch.testing.assert_close(tokens_f, tokens_l.float(), rtol=2e-2, atol=1e-3)
    assert grads_f.keys() == grads_l.keys()
    for name in grads_l:
        scale = grads_l[name].abs().max().item()
        torch.testing.assert_close(grads_f[name], grads_l[name], rtol=2e-2, atol=1e-2 * scale, msg=name)


def test_fused_head_check_allows_bf16_rounding_and_still_refuses_a_wrong_head():
    model = tiny_llama(len(char_tokenizer()), seed=3).to(torch.bfloat16)
    assert fused_support(model, len(char_tokenizer())) == (True, "")
    model.config.logit_scale = 1.05  # a 5% logit scale the model never applies: the rebuild must fail
    ok, why = fused_support(model, len(char_tokenizer()))
    assert not ok and "differs from the logits" in why


def test_gradient_checkpointing_gives_the_same_update_and_generation_keeps_its_cache(assets, tmp_path):
    states, calls = {}, {}
    for on in (False, True):
        trainer = setup(assets, tmp_path / str(on), **{"model.gradient_checkpointing": on})
        seen = calls[on] = []
        first_projection(unwrapped(trainer)).register_forward_hook(
            lambda mod, inp, out, seen=seen: seen.append((torch.is_grad_enabled(), inp[0].shape[1]))
        )
        trainer.train()
        states[on] = {k: v.detach().clone() for k, v in unwrapped(trainer).state_dict().items()}
    with_grad = {on: sum(grad for grad, _ in calls[on]) for on in calls}
    assert with_grad[False] == 2 and with_grad[True] == 4  # two micro-batches; each runs again in backward
    assert any(not grad and width == 1 for grad, width in calls[True])  # decoding one token at a time: KV cache
    for key in states[False]:
        torch.testing.assert_close(states[True][key], states[False][key], rtol=1e-6, atol=1e-7)


def test_attn_implementation_reaches_both_models_and_a_bad_one_is_one_line(assets, tmp_path):
    trainer = setup(assets, tmp_path / "eager", **{"model.attn_implementation": "eager"})
    assert unwrapped(trainer).config._attn_implementation == "eager" == trainer.teacher.config._attn_implementation
    with pytest.raises(ConfigError, match="model.attn_implementation='nope'") as err:
        setup(assets, tmp_path / "bad", **{"model.attn_implementation": "nope"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="is empty"):
        load_config(None, overrides(assets, tmp_path, **{"model.attn_implementation": ""}))


def save_tiny_qwen3_pair(root) -> dict:
    """A Qwen3-architecture teacher (2 layers) and student (1 layer) with the character tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = char_tokenizer()
    paths = {}
    for name, hidden, layers, seed in (("teacher", 48, 2, 1), ("student", 32, 1, 2)):
        torch.manual_seed(seed)
        config = Qwen3Config(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
        path = root / f"qwen3_{name}"
        Qwen3ForCausalLM(config).save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = str(path)
    return paths


def test_bf16_checkpointing_and_lora_train_a_tiny_qwen3_pair_end_to_end(assets, tmp_path):
    qwen3 = save_tiny_qwen3_pair(assets["root"])
    extra = {
        "model.student": qwen3["student"],
        "model.teacher": qwen3["teacher"],
        "model.dtype": "bfloat16",
        "model.gradient_checkpointing": "true",
        "train.mixed_precision": "bf16",
        "train.steps": 2,
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.merge_final": "true",
        "optim.lr": 1e-2,
    }
    trainer = setup(assets, tmp_path / "qwen3", **extra)
    assert trainer.backend.name == "fused" and type(unwrapped(trainer).get_base_model()).__name__ == "Qwen3ForCausalLM"
    trainer.train()
    records = read_metrics(tmp_path / "qwen3" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss/total"]) and r["health/skipped_step"] == 0.0 for r in records)
    merged = load_model(str(tmp_path / "qwen3" / "final" / "merged"), "auto")
    assert next(merged.parameters()).dtype == torch.bfloat16
    base = load_model(qwen3["student"], "auto")
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), base.parameters()))  # adapters merged in
