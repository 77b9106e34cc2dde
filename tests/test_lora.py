"""LoRA through PEFT (`sead.lora`): adapters train, fused == logits, exact resume, final adapter and merged model,
the frozen initial model as the adapters-off base (OPSD's teacher, GRPO's reference), one-line config errors."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from tiny import save_addition_run

from sead.config import load_config
from sead.errors import ConfigError
from sead.lora import AdaptersOff, is_lora
from sead.metrics import read_metrics
from sead.models import load_model
from sead.trainer import Trainer

LORA = {"lora.r": 4, "lora.alpha": 8}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return save_addition_run(root, vocab_extra_teacher=5)


def overrides(assets, out, method="sead", **extra):
    base = {
        "model.student": assets["student"],
        "model.teacher": assets["teacher"],
        "data.path": assets["data"],
        "data.prompt_field": "question",
        "data.template": "{problem}",
        "verifier.kind": "exact",
        "objective.method": method,
        "train.steps": 2,
        "train.batch_size": 4,
        "train.micro_batch_size": 4,
        "train.save_every": 100,
        "rollout.max_new_tokens": 6,
        "rollout.batch_size": 8,
        "train.output_dir": str(out),
        "logging.samples_every": 0,
        "logging.progress": False,
        "train.torch_threads": 1,
        "optim.lr": 1e-2,
        "optim.schedule": "constant",
        **LORA,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run(assets, out, **kw):
    trainer = Trainer(load_config(None, overrides(assets, out, **kw))).setup()
    trainer.train()
    return trainer


def unwrapped(trainer):
    return trainer.accelerator.unwrap_model(trainer.student)


def trainable_state(trainer):
    return {n: p.detach().clone() for n, p in unwrapped(trainer).named_parameters() if p.requires_grad}


def probe_ids():
    return torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30]])


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_adapters_train_checkpoints_hold_them_and_final_holds_adapter_and_merged_model(assets, tmp_path, capsys):
    out = tmp_path / "run"
    trainer = run(assets, out, **{"train.save_every": 1, "lora.merge_final": "true"})
    student = unwrapped(trainer)
    assert is_lora(student)
    assert "parameters train (" in capsys.readouterr().out  # the start-up line counts what trains
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # the head and every base weight are frozen
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in optimised) == sum(p.numel() for p in student.parameters() if p.requires_grad)
    base = load_model(assets["student"])
    base_weights = dict(base.named_parameters())
    for name, p in student.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_weights[name.replace(".base_layer", "")]), name
    assert any(p.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n)  # B starts at 0

    ckpt = out / "checkpoints" / "step-2"
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    final = out / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    ids = probe_ids()
    want = logits(student.eval(), ids)
    # `sead eval RUN/final` (load_model) finds the adapter and its base; final/merged is a plain full model.
    torch.testing.assert_close(logits(load_model(str(final)), ids), want)
    merged = load_model(str(final / "merged"))
    assert not is_lora(merged) and (final / "merged" / "model.safetensors").exists()
    torch.testing.assert_close(logits(merged, ids), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(base, ids), want)


@pytest.mark.parametrize("save", [[], ["lm_head"]], ids=["head-frozen", "head-trained"])
def test_fused_backend_gives_the_same_update_as_logits_under_lora(assets, tmp_path, save):
    extra = {"train.steps": 1, "train.micro_batch_size": 2, "objective.chunk_size": 5}
    extra["lora.modules_to_save"] = "[" + ",".join(save) + "]"
    fused = run(assets, tmp_path / "fused", **extra)
    plain = run(assets, tmp_path / "plain", **extra, **{"objective.fused": "false"})
    assert fused.backend.name == "fused" and plain.backend.name == "logits"
    head = unwrapped(fused).get_output_embeddings().weight
    assert head.requires_grad == bool(save)
    a, b = trainable_state(fused), trainable_state(plain)
    assert a.keys() == b.keys() and any("modules_to_save" in k for k in a) == bool(save)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=2e-5)
    ra, rb = (read_metrics(tmp_path / name / "metrics.jsonl")[0] for name in ("fused", "plain"))
    for key in ("loss/total", "loss/fkl", "loss/rkl"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key


def test_resume_under_lora_matches_uninterrupted_run(assets, tmp_path, monkeypatch):
    extra = {"train.steps": 4, "train.save_every": 2, "lora.dropout": 0.1}
    reference = trainable_state(run(assets, tmp_path / "ref", **extra))

    import sead.step

    real_step = sead.step.distill_step
    calls = {"n": 0}

    def interrupting_step(**kw):
        calls["n"] += 1
        if calls["n"] == 3:  # SIGTERM in the third step: it finishes, checkpoints step-3 and stops
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(**kw)

    monkeypatch.setattr(sead.step, "distill_step", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        run(assets, tmp_path / "cut", **extra)
    monkeypatch.setattr(sead.step, "distill_step", real_step)
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / "adapter" / "adapter_model.safetensors").exists()

    resumed = trainable_state(run(assets, tmp_path / "cut", **extra, **{"train.resume": "true"}))
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    losses = [[r["loss/total"] for r in read_metrics(tmp_path / n / "metrics.jsonl")] for n in ("ref", "cut")]
    assert losses[0] == losses[1]


def _assert_is_the_base_model(trainer, frozen, assets):
    """``frozen`` is the student's own base weights with adapters off: no copy, the initial model's outputs."""
    student = unwrapped(trainer)
    assert isinstance(frozen, AdaptersOff) and frozen.peft_model is student
    shared = {p.data_ptr() for p in student.parameters()}
    assert {p.data_ptr() for p in frozen.parameters()} <= shared
    ids = probe_ids()
    base = load_model(assets["student"])
    torch.testing.assert_close(logits(frozen, ids), logits(base, ids), rtol=0, atol=0)
    assert student.training  # the frozen view's eval mode is its own, for its calls only
    assert not torch.allclose(logits(student, ids), logits(base, ids))  # the adapters did move


def test_opsd_initial_teacher_is_the_base_model_with_adapters_off(assets, tmp_path):
    trainer = run(assets, tmp_path / "opsd", method="opsd", **{"objective.opsd_teacher": "initial"})
    _assert_is_the_base_model(trainer, trainer.teacher, assets)
    # The fused teacher reads the decoder's last hidden state: also with adapters off.
    assert trainer.backend.name == "fused" and isinstance(trainer.backend.t_backbone, AdaptersOff)
    ids = probe_ids()
    hidden = trainer.backend.t_backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    with torch.no_grad():
        want = load_model(assets["student"]).model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(hidden, want, rtol=0, atol=0)


def test_grpo_kl_reference_is_the_base_model_with_adapters_off(assets, tmp_path):
    extra = {"objective.group_size": 4, "train.batch_size": 2, "objective.kl_coef": 0.5, "optim.lr": 5e-2}
    trainer = run(assets, tmp_path / "grpo", method="grpo", **extra)
    assert trainer.teacher is None
    _assert_is_the_base_model(trainer, trainer.reference, assets)
    assert all("kl/ref_k3" in r for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl"))


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("lora.r", "-1", "lora.r must be >= 0"),
        ("lora.alpha", "0", "lora.alpha must be > 0"),
        ("lora.dropout", "1", r"lora.dropout must be in \[0, 1\)"),
        ("lora.target_modules", "[]", "names no module"),
        ("lora.modules_to_save", "['']", "empty name"),
    ],
)
def test_bad_lora_settings_are_one_line_errors(assets, tmp_path, key, value, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(None, overrides(assets, tmp_path, **{key: value}))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs lora.r > 0"):
        load_config(None, overrides(assets, tmp_path, **{"lora.r": 0, "lora.merge_final": "true"}))


def test_target_modules_that_match_nothing_name_the_linear_layers(assets, tmp_path):
    cfg = load_config(None, overrides(assets, tmp_path, **{"lora.target_modules": "[nope_proj]"}))
    with pytest.raises(ConfigError, match="its linear layers are: .*q_proj") as err:
        Trainer(cfg).setup()
    assert "\n" not in str(err.value)
