"""Train SEAD through TRL: ``sead.integrations.trl.SEADTrainer`` on the shipped demo models and task.

TRL's DistillationTrainer generates and steps; sead's objective (zones, annealed Zone C forward KL,
optional curriculum) is the loss. Every ``SEADConfig`` field (TRL's and sead's) is a flag; the
defaults below are the demo recipe's (batch 32, lr 1e-4, cosine with 5 warm-up steps, 56 new
tokens at temperature 0.7, 40 steps). Greedy held-out accuracy is measured before and after.

    pip install -e ".[trl]"
    python examples/trl_sead.py                                # SEAD T+A, 40 steps, CPU
    python examples/trl_sead.py --max_steps 10                 # a quicker look
    python examples/trl_sead.py --curriculum                   # + C: competence curriculum over the demo levels
    python examples/trl_sead.py --method eopd --tau 0.5        # any method of SEADConfig.method

On a GPU with vLLM (``pip install "trl[vllm]"``), TRL's own flags move generation to vLLM:

    python examples/trl_sead.py --use_vllm --vllm_mode colocate --vllm_gpu_memory_utilization 0.3 --bf16
    # or a server: `trl vllm-serve --model <student>` in another shell, then
    python examples/trl_sead.py --use_vllm --vllm_mode server --vllm_server_base_url http://localhost:8000

``--curriculum`` reads per-prompt difficulties from ``--difficulty_path``; when that file does not
exist, a stand-in is written there from the demo data's ``level`` field ((level - 1) / 3).
``sead difficulty`` measures real ones from student rollouts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from sead.config import RolloutConfig
from sead.integrations.trl import SEADConfig, SEADTrainer
from sead.rollout import generate_rollouts
from sead.toy import verify
from sead.toy_models import demo_asset_dir, demo_data_paths

DEMO = demo_asset_dir()
TRAIN, HELDOUT = demo_data_paths()


@dataclass
class ScriptArguments:
    student: str = field(default=str(DEMO / "student"), metadata={"help": "student model folder or hub id"})
    teacher: str = field(default=str(DEMO / "teacher"), metadata={"help": "teacher model folder or hub id"})
    train_file: str = field(default=str(TRAIN), metadata={"help": "JSONL with id, question, answer (level)"})
    heldout_file: str = field(default=str(HELDOUT), metadata={"help": "JSONL evaluated greedily before and after"})
    max_prompts: int = field(default=1024, metadata={"help": "train on the first this many prompts"})
    eval_prompts: int = field(default=200, metadata={"help": "held-out prompts to evaluate (0: skip)"})


DEMO_DEFAULTS = dict(
    output_dir="runs/trl-sead",
    max_steps=40,
    per_device_train_batch_size=32,
    learning_rate=1e-4,
    lr_scheduler_type="cosine",
    warmup_steps=5,
    max_grad_norm=1.0,
    max_completion_length=56,
    temperature=0.7,
    top_p=1.0,
    top_k=0,
    bf16=False,
    gradient_checkpointing=False,
    logging_steps=5,
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
    difficulty_path="runs/trl-sead-difficulty.jsonl",
)


def read_rows(path: str, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def level_difficulties(rows: list[dict], path: str) -> Path:
    """A stand-in difficulty file from the demo's ``level`` field (1-4 -> 0, 1/3, 2/3, 1)."""
    top, path = max(r["level"] for r in rows), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"id": r["id"], "difficulty": (r["level"] - 1) / max(top - 1, 1)}) + "\n" for r in rows)
    )
    return path


def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int) -> float:
    """Share of ``rows`` whose greedy answer the demo's verifier accepts."""
    cfg = RolloutConfig(max_new_tokens=max_new_tokens, batch_size=len(rows), chat_template="off")
    rollout = generate_rollouts(model, tokenizer, [r["question"] for r in rows], cfg, greedy=True)
    return sum(verify(text, r["answer"]) for text, r in zip(rollout.response_texts, rows)) / len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((ScriptArguments, SEADConfig))
    parser.set_defaults(**DEMO_DEFAULTS)
    script, args = parser.parse_args_into_dataclasses(argv)
    rows = read_rows(script.train_file, script.max_prompts)
    if args.curriculum and not Path(args.difficulty_path).exists():
        print(
            f"writing stand-in difficulties from the data's levels to {level_difficulties(rows, args.difficulty_path)}"
        )

    tokenizer = AutoTokenizer.from_pretrained(script.student, padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(script.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(script.teacher, dtype=torch.float32)
    data = Dataset.from_dict({"prompt": [r["question"] for r in rows], "id": [str(r["id"]) for r in rows]})
    heldout = read_rows(script.heldout_file, script.eval_prompts) if script.eval_prompts else []

    trainer = SEADTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = greedy_accuracy(model, tokenizer, heldout, args.max_completion_length) if heldout else None
    trainer.train()
    trainer.save_model(args.output_dir)
    if heldout and trainer.accelerator.is_main_process:
        after = greedy_accuracy(model, tokenizer, heldout, args.max_completion_length)
        print(
            f"{args.method} through TRL ({trainer.backend.name} loss), {args.max_steps} steps: greedy accuracy on "
            f"{len(heldout)} held-out problems {before:.1%} -> {after:.1%}; model saved to {args.output_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
