"""The real-model recipes (configs/real/): they load, name hub models and data only, and each runs 2
steps on CPU through the real Trainer with tiny random models of the same architecture (built from the
transformers config classes), a character tokenizer with a chat template, and a tiny local data set
with the recipe's field names. Nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from tiny import chat_tokenizer

from sead.cli import main
from sead.config import load_config
from sead.config_files import real_recipe_names, recipe_names, recipe_path
from sead.trainer import Trainer

ARCHITECTURES = {"olmo3-sead": "olmo3", "qwen3-eopd": "qwen3"}


def tiny_model(kind: str, vocab: int, hidden: int, layers: int, seed: int):
    """A random Olmo3ForCausalLM / Qwen3ForCausalLM small enough for a CPU test."""
    from transformers import AutoModelForCausalLM, Olmo3Config, Qwen3Config

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2 if kind == "olmo3" else 1,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = Olmo3Config(**common) if kind == "olmo3" else Qwen3Config(**common, head_dim=hidden // 2)
    return AutoModelForCausalLM.from_config(config)


def write_pair(root, kind: str) -> dict[str, str]:
    tok = chat_tokenizer()
    paths = {}
    for name, hidden, layers, seed in (("teacher", 48, 2, 1), ("student", 32, 1, 2)):
        path = root / name
        tiny_model(kind, len(tok), hidden, layers, seed).save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = str(path)
    return paths


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def stand_ins(tmp_path, recipe: str) -> list[str]:
    """Overrides that swap the hub models and data for local tiny ones and shrink the lengths and batch."""
    cfg = load_config(recipe)
    pair = write_pair(tmp_path / "models", ARCHITECTURES[recipe])
    # DAPO rows as the recipe maps them: data.prompt_field / data.answer_field.
    train = [{cfg.data.prompt_field: f"what is {i} + {i}?", cfg.data.answer_field: str(2 * i)} for i in range(6)]
    bench = [{cfg.eval.prompt_field: f"what is {i} * 2?", cfg.eval.answer_field: str(2 * i)} for i in range(3)]
    data = write_jsonl(tmp_path / "dapo.jsonl", train)
    math500 = write_jsonl(tmp_path / "math500.jsonl", bench)
    aime = write_jsonl(tmp_path / "aime.jsonl", bench[:2])
    return [
        f"model.student={pair['student']}",
        f"model.teacher={pair['teacher']}",
        f"data.path={data}",
        f"eval.data=['math500={math500}[test]','aime24={aime}[train]']",
        "rollout.max_new_tokens=6",
        "rollout.max_prompt_tokens=400",
        "rollout.batch_size=8",
        "eval.max_new_tokens=4",
        "eval.max_prompt_tokens=400",
        "eval.every=2",
        "train.steps=2",
        "train.batch_size=2",
        "train.samples_per_prompt=2",
        "train.micro_batch_size=2",
        "train.save_every=1",
        "logging.samples_every=1",
        "logging.progress=false",
        f"train.output_dir={tmp_path / 'run'}",
    ]


def test_the_real_recipes_are_listed_apart_from_the_tiny_ones(capsys):
    assert set(real_recipe_names()) == set(ARCHITECTURES)
    assert not set(real_recipe_names()) & set(recipe_names())
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in real_recipe_names():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == load_config(name).objective.method
    assert "\nbase " not in out


@pytest.mark.parametrize("recipe", sorted(ARCHITECTURES))
def test_recipe_names_hub_models_and_data_only(recipe):
    cfg = load_config(recipe)
    assert recipe_path(recipe).parent.name == "real"
    for value in (cfg.model.student, cfg.model.teacher, cfg.data.path, *(e.split("=", 1)[1] for e in cfg.eval.data)):
        assert not value.startswith("/") and value.count("/") == 1, value  # owner/name, nothing local
    assert cfg.model.teacher_dtype == "bfloat16" and cfg.train.mixed_precision == "bf16"
    assert cfg.model.gradient_checkpointing and cfg.model.attn_implementation == "sdpa"
    assert cfg.rollout.max_new_tokens == cfg.eval.max_new_tokens == 4096
    assert cfg.train.batch_size % 8 == 0 and cfg.train.save_every < cfg.train.steps and cfg.eval.every > 0
    assert {e.split("=")[0] for e in cfg.eval.data} == {"math500", "aime24"}


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state: the recipes' bf16 must not meet the other tests' "no"."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("recipe", sorted(ARCHITECTURES))
def test_recipe_runs_two_steps_with_tiny_stand_ins(tmp_path, recipe, capsys, fresh_accelerator_state):
    cfg = load_config(recipe, stand_ins(tmp_path, recipe))
    trainer = Trainer(cfg).setup()
    student = trainer.accelerator.unwrap_model(trainer.student)
    assert student.config.model_type == trainer.teacher.config.model_type == ARCHITECTURES[recipe]
    assert trainer.teacher.dtype == torch.bfloat16 and student.dtype == torch.float32
    assert student.is_gradient_checkpointing and student.config._attn_implementation == "sdpa"
    final = trainer.train()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in records)
    assert {"eval/math500/pass@1", "eval/aime24/pass@1"} <= set(records[1])
    assert (final / "config.json").is_file() and (run / "checkpoints" / "step-2").is_dir()
    if cfg.objective.curriculum:  # estimated into the run folder, announced with its size
        assert (run / "difficulty.jsonl").is_file() and not list(run.glob("difficulty.jsonl.partial*"))
        assert "6 prompts x 4 rollouts = 24 rollouts" in capsys.readouterr().out
