"""The demo's models: the character tokenizer of `sead.toy`'s task, tiny Llamas, the shipped assets, greedy eval.

The models (a teacher and a weaker student, both ``LlamaForCausalLM`` over the same character
vocabulary) are pre-built by ``tools/build_demo_models.py`` and shipped under ``sead/assets/demo``
so that ``sead demo`` runs a real on-policy distillation on a laptop CPU in minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from sead.errors import DataError
from sead.toy import CHARS, EOS, MAX_NEW_TOKENS, PAD, UNK, verify

# Model shapes (LlamaForCausalLM, tied embeddings). The student is 4x smaller and briefly trained; it
# keeps 4 layers because a 2-layer student learns multi-digit carries too slowly to improve in a demo.
TEACHER_SHAPE: dict[str, int] = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 512,
}
STUDENT_SHAPE: dict[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 256,
}
MAX_POSITIONS = 128  # the longest item (question, worked solution, eos) is 64 tokens


# ------------------------------------------------------------------------------------ tokenizer
def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer: ``<pad>``=0, ``<eos>``=1, ``<unk>``=2, then one token per task character.

    No bos token and no chat template: a prompt is the question's characters, as is.
    """

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # join pieces with no separator
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


# --------------------------------------------------------------------------------------- models
def build_model(tokenizer: PreTrainedTokenizerFast, shape: dict[str, int], seed: int) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` (tied embeddings) of ``shape`` over ``tokenizer``'s vocabulary."""

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        num_key_value_heads=shape["num_attention_heads"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **shape,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, max_new_tokens=MAX_NEW_TOKENS
    )
    return model


def demo_asset_dir() -> Path:
    """The folder of the shipped demo assets (``teacher/``, ``student/``, ``data/``, ``README.md``)."""
    return Path(str(files("sead") / "assets" / "demo"))


def demo_data_paths() -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl) of the shipped demo data."""
    data = demo_asset_dir() / "data"
    return data / "train.jsonl", data / "heldout.jsonl"


def load_demo_models(device: str = "cpu", dtype: Any = None):
    """Load the shipped (teacher, student, tokenizer) in eval mode; ``dtype`` defaults to float32."""

    root = demo_asset_dir()
    if not (root / "teacher" / "config.json").exists():
        raise DataError(f"demo models not found under {root}; build them: python tools/build_demo_models.py")
    dtype = dtype or torch.float32
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=dtype).to(device).eval()
    student = AutoModelForCausalLM.from_pretrained(root / "student", dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "student")
    return teacher, student, tokenizer


# ------------------------------------------------------------------------------------- evaluate
def greedy_responses(
    model, tokenizer, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 256
) -> list[str]:
    """Greedy completions of ``questions`` (batched, left-padded), decoded without special tokens."""
    side, out = tokenizer.padding_side, []
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for i in range(0, len(questions), batch_size):
            enc = tokenizer(list(questions[i : i + batch_size]), return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def greedy_accuracy(
    model,
    tokenizer,
    items: Sequence[dict[str, Any]],
    max_new_tokens: int = MAX_NEW_TOKENS,
    by_level: bool = False,
    batch_size: int = 256,
):
    """Share of ``items`` whose greedy response ``verify``-matches the answer.

    With ``by_level`` returns ``(overall, {level: accuracy})``.
    """
    responses = greedy_responses(model, tokenizer, [it["question"] for it in items], max_new_tokens, batch_size)
    ok = [verify(r, it["answer"]) for r, it in zip(responses, items)]
    overall = sum(ok) / max(1, len(ok))
    if not by_level:
        return overall
    levels: dict[int, list[bool]] = {}
    for it, good in zip(items, ok):
        levels.setdefault(int(it["level"]), []).append(good)
    return overall, {lv: sum(v) / len(v) for lv, v in sorted(levels.items())}
