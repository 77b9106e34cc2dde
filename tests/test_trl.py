"""SEAD inside TRL (``sead.integrations.trl``): loss, gradients, zones, curriculum; skipped without TRL.

Run as a script (``torch.distributed.run``), this file is the 2-process worker of
``test_two_processes_with_accumulation_match_one_batch``.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from tiny import char_tokenizer, tiny_llama  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl.trainer.utils import split_tensor_dict  # noqa: E402

from sead.errors import ConfigError  # noqa: E402
from sead.integrations.trl import SEADConfig, SEADTrainer  # noqa: E402
from sead.methods import ObjectiveConfig, alpha_at, normalizer_mask, token_losses  # noqa: E402
from sead.scoring import response_logits, token_stats  # noqa: E402
from sead.zones import Zone, assign_zones, assign_zones_threshold  # noqa: E402

PROMPTS = ["1+2=", "34-5=", "6*7=", "8+9-1=", "2*3+4=", "55-6=", "7+7=", "9-8+1=", "12+1=", "3*3=", "40-2=", "5+5+5="]
TOK = char_tokenizer()
V = len(TOK)


def _models():
    """(student, teacher): tiny Llamas whose heads are scaled so entropies spread over (0, log V)."""
    student = tiny_llama(V, hidden=32, layers=1, seed=2, tie=False)
    teacher = tiny_llama(V, hidden=48, layers=2, seed=1, tie=False)
    with torch.no_grad():
        student.lm_head.weight.mul_(8.0)
        teacher.lm_head.weight.mul_(25.0)
    return student, teacher


def _fixed_completions(prompt_ids, *args, **kwargs):
    """A stand-in for TRL's generation: each prompt's completion depends on its tokens alone (3-8 tokens, some EOS)."""
    out = []
    for ids in prompt_ids:
        g = torch.Generator().manual_seed(1009 * sum(ids) + len(ids))
        n = int(torch.randint(3, 9, (1,), generator=g))
        tokens = torch.randint(3, V, (n,), generator=g).tolist()
        out.append(tokens + [TOK.eos_token_id] if n % 2 else tokens)
    return out


def _args(tmp, **kw) -> SEADConfig:
    base = dict(
        output_dir=str(tmp),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=3,
        learning_rate=1e-2,
        max_completion_length=8,
        temperature=1.0,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return SEADConfig(**{**base, **kw})


def _trainer(tmp, prompts=PROMPTS, fixed=True, **kw) -> SEADTrainer:
    student, teacher = _models()
    ids = [f"p{i}" for i in range(len(prompts))]
    data = Dataset.from_dict({"prompt": list(prompts), "id": ids})
    trainer = SEADTrainer(
        model=student, teacher_model=teacher, args=_args(tmp, **kw), train_dataset=data, processing_class=TOK
    )
    if fixed:
        trainer._generate_single_turn = _fixed_completions
    return trainer


# ---------------------------------------------------------------------------------------- config
def test_config_builds_the_objective_and_names_its_own_fields_in_errors(tmp_path):
    args = _args(tmp_path, method="eopd", tau=0.5, zone_fractions=[0.6, 0.3, 0.1], teacher_top_k=None, beta=0.3)
    obj = args.sead_objective()
    assert (obj.method, obj.tau, obj.fractions, obj.beta) == ("eopd", 0.5, [0.6, 0.3, 0.1], 0.3)
    assert SEADConfig.__dataclass_fields__["alpha_start"].default == ObjectiveConfig().alpha_start
    with pytest.raises(ConfigError, match=r"SEADConfig\.zone_fractions"):
        _args(tmp_path, zone_fractions=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match=r"SEADConfig\.alpha_start"):
        _args(tmp_path, alpha_start=2.0)
    with pytest.raises(ConfigError, match="does not train on a teacher"):
        _args(tmp_path, method="grpo")
    with pytest.raises(ConfigError, match="difficulty_path"):
        _args(tmp_path, curriculum=True)
    with pytest.raises(ConfigError, match="refreshing needs verifier"):
        _args(tmp_path, curriculum=True, curriculum_sampler="refreshing", difficulty_path="d.jsonl")
    with pytest.raises(ConfigError, match="max_steps"):
        _args(tmp_path, curriculum=True, difficulty_path="d.jsonl", max_steps=-1)


# ---------------------------------------------------------------------------------------- loss
def _reference(student, teacher, batch: dict, obj: ObjectiveConfig, alpha: float):
    """sead's objective on the same tokens, materialised logits: (loss, zones); grads land on ``student``."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    prompt_len, mask = batch["prompt_ids"].shape[1], batch["completion_mask"].bool()
    with torch.no_grad():
        t = response_logits(teacher, ids, att, prompt_len, V)
    s = response_logits(student, ids, att, prompt_len, V)
    stats = token_stats(s, t, mask)
    if obj.zone_mode == "threshold":
        zones = assign_zones_threshold(
            stats.teacher_entropy, stats.student_entropy, mask, obj.teacher_threshold, obj.student_threshold
        )
    else:
        zones = assign_zones(stats.teacher_entropy, stats.student_entropy, mask, obj.fractions)
    losses = token_losses(obj, s, t, batch["completion_ids"], mask, zones, alpha)
    loss = losses.sum() / normalizer_mask(obj, mask, zones).sum().clamp_min(1)
    loss.backward()
    return loss.detach(), zones, stats


CASES = {
    "sead-T-A": dict(method="sead", zones=True, anneal=True),
    "sead-T": dict(method="sead", zones=True, anneal=False),
    "sead-A": dict(method="sead", zones=False, anneal=True),
    "sead-none": dict(method="sead", zones=False, anneal=False),
    "sead-threshold-interpolate": dict(
        method="sead", zone_mode="threshold", teacher_threshold=1.0, zone_c_mix="interpolate"
    ),
    "eopd": dict(method="eopd", tau=1.0),
    "rkl": dict(method="rkl"),
    "opd": dict(method="opd"),
}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "logits"])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_equal_seads_objective_on_the_same_tokens(tmp_path, case, fused):
    """4 generated rows, 2 accumulation micro-batches of 2: summed loss and grads = one-batch sead objective."""
    trainer = _trainer(
        tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=10, fused=fused, **CASES[case]
    )
    assert trainer.backend.name == ("fused" if fused and case != "opd" else "logits")
    trainer.state.global_step = 3  # alpha follows the trainer's step
    student = trainer.model
    student.train()
    reference_student = copy.deepcopy(student)

    batch = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:4]])
    total = torch.zeros(())
    for chunk in split_tensor_dict(batch, 2):
        loss = trainer.compute_loss(student, chunk)
        loss.backward()
        total += loss.detach()

    obj = trainer.objective
    alpha = alpha_at(obj, 3, 10)
    if obj.anneal and obj.method == "sead":
        assert alpha != obj.alpha_start
    want, zones, stats = _reference(reference_student, trainer.teacher_model, batch, obj, alpha)
    assert torch.equal(batch["sead_zones"], zones)
    valid = batch["completion_mask"].bool()
    if case == "eopd":  # the gate really splits the tokens
        assert 0 < (stats.teacher_entropy[valid] > obj.tau).float().mean() < 1
    if obj.method == "sead" and obj.zones:  # both trained zones are there
        assert (zones == Zone.B).any() and (zones == Zone.C).any()
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(student.named_parameters(), reference_student.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------- training
def test_training_steps_move_the_student_and_the_curriculum_serves_its_order(tmp_path):
    difficulty = tmp_path / "difficulty.jsonl"
    levels = [(i * 7) % 12 / 11 for i in range(len(PROMPTS))]
    difficulty.write_text("".join(json.dumps({"id": f"p{i}", "difficulty": d}) + "\n" for i, d in enumerate(levels)))
    trainer = _trainer(
        tmp_path,
        fixed=False,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        curriculum=True,
        curriculum_sampler="sorted",
        difficulty_path=str(difficulty),
    )
    served = []
    generate = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda rows: served.append([r["prompt"] for r in rows]) or generate(rows)
    before = copy.deepcopy(trainer.model.state_dict())
    trainer.train()

    sampler = trainer.curriculum_batches.new_sampler()
    order = [sampler.next_batch(step, 4) for step in range(3)]
    assert served == [[PROMPTS[i] for i in batch] for batch in order]  # one generation per step (2 accumulation steps)
    assert [sum(levels[i] for i in b) for b in order] == sorted(sum(levels[i] for i in b) for b in order)
    logs = [r for r in trainer.state.log_history if "zones/frac_b" in r]
    assert len(logs) == 3
    for record, batch in zip(logs, order):
        assert record["curriculum/batch_difficulty"] == pytest.approx(sum(levels[i] for i in batch) / 4)
        assert record["zones/frac_a"] + record["zones/frac_b"] + record["zones/frac_c"] == pytest.approx(1.0)
        assert record["loss/total"] == pytest.approx(record["loss"], rel=1e-4)
        assert record["loss/zone_b"] + record["loss/zone_c"] == pytest.approx(record["loss/total"], rel=1e-5)
    alphas = [r["sched/alpha"] for r in logs]
    assert alphas[0] == pytest.approx(0.8) and alphas[0] > alphas[1] > alphas[2]
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------- processes
class _Grads(TrainerCallback):
    def __init__(self):
        self.grads = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step(out: Path, per_device: int, accumulation: int) -> None:
    """Train one step on fixed generations; write this process's zones by prompt, normaliser, grads, log."""
    trainer = _trainer(
        out / "run",
        prompts=PROMPTS[:8],
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        max_grad_norm=0.0,
    )
    zones_by_prompt, grads = {}, _Grads()
    trainer.add_callback(grads)
    generate = trainer._generate_and_score_completions

    def recording(rows):
        batch = generate(rows)
        for row, item in enumerate(rows):
            valid = batch["completion_mask"][row].bool()
            zones_by_prompt[item["prompt"]] = batch["sead_zones"][row][valid].tolist()
        return batch

    trainer._generate_and_score_completions = recording
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {
        "world": trainer.accelerator.num_processes,
        "zones": zones_by_prompt,
        "normalizer": trainer._steps["train"].normalizer,
        "grads": grads.grads,
        "log": trainer.state.log_history[0],
    }
    torch.save(record, out / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_accumulation_match_one_batch(tmp_path):
    """2 gloo processes x 2 accumulation steps of 1 row = 1 process, 1 batch of 4: zones, normaliser, grads."""
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += [__file__, str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _one_step(one, per_device=4, accumulation=1)

    ranks = [torch.load(two / f"rank{r}.pt") for r in (0, 1)]
    single = torch.load(one / "rank0.pt")
    assert [r["world"] for r in ranks] == [2, 2] and single["world"] == 1
    assert len(ranks[0]["zones"]) == len(ranks[1]["zones"]) == 2  # each process generated its own 2 rows
    assert {**ranks[0]["zones"], **ranks[1]["zones"]} == single["zones"]
    assert ranks[0]["normalizer"] == ranks[1]["normalizer"] == single["normalizer"]
    for name, grad in single["grads"].items():
        for r in ranks:
            torch.testing.assert_close(
                r["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
            )
    for key in ("zones/tokens", "zones/frac_a", "zones/frac_b", "zones/frac_c", "sched/alpha"):
        assert ranks[0]["log"][key] == single["log"][key], key
    for key in ("loss", "loss/total", "loss/zone_b", "loss/zone_c", "entropy/teacher_mean"):
        assert ranks[0]["log"][key] == pytest.approx(single["log"][key], rel=1e-5, abs=1e-6), key


if __name__ == "__main__":  # the 2-process worker (see the test above)
    torch.set_num_threads(1)
    _one_step(Path(sys.argv[1]), per_device=1, accumulation=2)
