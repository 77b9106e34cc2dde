"""End-to-end trainer tests on tiny random Llama models (CPU, no downloads)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from tiny import save_addition_run

from sead.config import load_config
from sead.metrics import read_metrics
from sead.trainer import Trainer

METHODS = ["opd", "rkl", "fkl", "jsd", "eopd", "sead", "opsd"]
REQUIRED_KEYS = [
    "step",
    "loss/total",
    "loss/fkl",
    "loss/rkl",
    "zones/frac_a",
    "zones/frac_b",
    "zones/frac_c",
    "entropy/teacher_mean",
    "entropy/student_mean",
    "entropy/teacher_zone_b",
    "entropy/student_zone_c",
    "sched/alpha",
    "optim/lr",
    "optim/grad_norm",
    "rollout/response_len_mean",
    "perf/tokens_per_s",
    "time/rollout_s",
    "time/teacher_s",
    "time/student_s",
    "time/backward_s",
    "time/optim_s",
    "reward/mean",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return save_addition_run(root, vocab_extra_teacher=5)  # teacher head has 5 padding rows


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
        "logging.samples_every": 1,
        "logging.progress": False,
        "train.torch_threads": 1,
        "optim.lr": 1e-3,
        "optim.schedule": "constant",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run(assets, out, **kw):
    trainer = Trainer(load_config(None, overrides(assets, out, **kw))).setup()
    trainer.train()
    return trainer


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_logs(assets, tmp_path, method):
    trainer = run(assets, tmp_path / method, method=method)
    records = read_metrics(tmp_path / method / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for key in REQUIRED_KEYS:
        assert key in records[0], key
    first = records[0]
    n = first["zones/tokens"]
    # Percentile zones hold within one token (round of each fraction).
    assert abs(first["zones/frac_c"] * n - round(0.1 * n)) < 1e-6
    assert abs(first["zones/frac_b"] * n - round(0.4 * n)) < 1e-6
    assert first["zones/frac_a"] + first["zones/frac_b"] + first["zones/frac_c"] == pytest.approx(1.0)
    samples = [json.loads(x) for x in (tmp_path / method / "samples.jsonl").read_text().splitlines()]
    assert samples and len(samples[0]["tokens"]) == len(samples[0]["zone"]) == len(samples[0]["loss"])
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(tmp_path / method / "final")
    unwrapped = trainer.accelerator.unwrap_model(trainer.student)
    assert torch.equal(final.model.embed_tokens.weight, unwrapped.model.embed_tokens.weight)


def test_grpo_runs_without_a_teacher(assets, tmp_path):
    trainer = run(
        assets,
        tmp_path / "grpo",
        method="grpo",
        **{"objective.group_size": 4, "train.batch_size": 2, "model.teacher": "/does/not/matter"},
    )
    assert trainer.teacher is None
    rec = read_metrics(tmp_path / "grpo" / "metrics.jsonl")[-1]
    for key in ("loss/total", "reward/mean", "reward/std", "optim/grad_norm", "entropy/student_mean"):
        assert key in rec


def test_sead_zone_a_loss_is_zero_and_loss_parts_add_up(assets, tmp_path):
    run(assets, tmp_path / "run", method="sead")
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert rec["loss/zone_b"] + rec["loss/zone_c"] == pytest.approx(rec["loss/total"], rel=1e-5)
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    assert all(loss == 0.0 for loss, z in zip(sample["loss"], sample["zone"]) if z == 0)


def test_distillation_reduces_kl_to_teacher(assets, tmp_path):
    run(
        assets,
        tmp_path / "run",
        method="rkl",
        **{
            "train.steps": 30,
            "optim.lr": 1e-2,
            "train.batch_size": 8,
            "train.micro_batch_size": 8,
            "logging.samples_every": 0,
        },
    )
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    early = sum(r["loss/rkl"] for r in records[:5]) / 5
    late = sum(r["loss/rkl"] for r in records[-5:]) / 5
    assert late < 0.5 * early


def _student_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.student).state_dict().items()}


@pytest.mark.parametrize("method", ["sead", "opd"])
def test_grad_accumulation_matches_full_batch(assets, tmp_path, method):
    full = _student_state(run(assets, tmp_path / "full", method=method, **{"train.steps": 1}))
    split = _student_state(
        run(assets, tmp_path / "split", method=method, **{"train.steps": 1, "train.micro_batch_size": 2})
    )
    for key in full:
        torch.testing.assert_close(split[key], full[key], rtol=1e-5, atol=1e-6)


def test_resume_after_signal_matches_uninterrupted_run(assets, tmp_path, monkeypatch):
    extra = {"train.steps": 5, "train.save_every": 2}
    reference = _student_state(run(assets, tmp_path / "ref", **extra))

    import sead.step

    real_step = sead.step.distill_step
    calls = {"n": 0}

    def interrupting_step(**kw):
        calls["n"] += 1
        if calls["n"] == 3:  # SIGTERM arrives in the middle of the third step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(**kw)

    monkeypatch.setattr(sead.step, "distill_step", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        run(assets, tmp_path / "cut", **extra)
    monkeypatch.setattr(sead.step, "distill_step", real_step)
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / "COMPLETE").exists()

    resumed = _student_state(run(assets, tmp_path / "cut", **extra, **{"train.resume": "true"}))
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]
    ref_loss = [r["loss/total"] for r in read_metrics(tmp_path / "ref" / "metrics.jsonl")]
    cut_loss = [r["loss/total"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert cut_loss == ref_loss


def test_resume_refuses_changed_config(assets, tmp_path):
    from sead.errors import ConfigError

    run(assets, tmp_path / "run", **{"train.steps": 1})
    with pytest.raises(ConfigError, match="changed config"):
        Trainer(
            load_config(
                None,
                overrides(assets, tmp_path / "run", **{"train.steps": 1, "train.resume": "true", "optim.lr": 5e-4}),
            )
        ).setup()


def test_tokenizer_mismatch_is_a_clear_error(assets, tmp_path):
    from tiny import char_tokenizer

    from sead.errors import ConfigError

    other = tmp_path / "other_tok"
    tok = char_tokenizer()
    tok.add_tokens(["<extra>"])
    vocab_swap = tmp_path / "teacher_copy"
    import shutil

    shutil.copytree(assets["teacher"], vocab_swap)
    tok.save_pretrained(vocab_swap)
    tok.save_pretrained(other)
    a = dict(assets, teacher=str(vocab_swap))
    with pytest.raises(ConfigError, match="tokenizers differ"):
        Trainer(load_config(None, overrides(a, tmp_path / "run"))).setup()


def test_all_tac_combinations_select(assets, tmp_path):
    from sead.methods import alpha_at, uses_zone_loss

    for zones in (False, True):
        for anneal in (False, True):
            cfg = load_config(
                None, overrides(assets, tmp_path / "x", **{"objective.zones": zones, "objective.anneal": anneal})
            )
            assert uses_zone_loss(cfg.objective) is zones
            mid = alpha_at(cfg.objective, 1, 2)
            assert (mid < cfg.objective.alpha_start) is anneal


@pytest.mark.parametrize("method", ["sead", "rkl", "eopd"])
def test_fused_backend_gives_the_same_update_as_logits(assets, tmp_path, method):
    extra = {"train.steps": 1, "train.micro_batch_size": 2, "objective.chunk_size": 5}
    fused = run(assets, tmp_path / "fused", method=method, **extra)
    plain = run(assets, tmp_path / "plain", method=method, **extra, **{"objective.fused": "false"})
    assert fused.backend.name == "fused" and plain.backend.name == "logits"
    a, b = _student_state(fused), _student_state(plain)
    for key in a:
        # Adam divides by |grad|, so float32 summation-order noise in near-zero gradients can move a
        # weight by a small fraction of one lr (1e-3) step; 2% of a step is far below a real error.
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=2e-5)
    ra = read_metrics(tmp_path / "fused" / "metrics.jsonl")[0]
    rb = read_metrics(tmp_path / "plain" / "metrics.jsonl")[0]
    for key in ("loss/total", "loss/fkl", "loss/rkl", "zones/frac_b", "entropy/student_mean"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
