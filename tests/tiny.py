"""Tiny real transformers models and a character tokenizer, built in-process (no downloads)."""

from __future__ import annotations

import string

import torch

CHARS = list(string.digits + "+-*=.,:A ?abcdefghijklmnopqrstuvwxyz")


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast with <pad>=0, <eos>=1, <bos>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="?"
    )


def tiny_llama(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0, tie: bool = True):
    """A randomly initialised LlamaForCausalLM small enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def save_tiny_pair(root, vocab_extra_teacher: int = 0):
    """Write a teacher and a student checkpoint (+ tokenizer) under ``root``; returns their paths."""
    tok = char_tokenizer()
    paths = {}
    for name, hidden, layers, extra, seed in (("teacher", 48, 2, vocab_extra_teacher, 1), ("student", 32, 1, 0, 2)):
        model = tiny_llama(len(tok) + extra, hidden=hidden, layers=layers, seed=seed)
        path = root / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = str(path)
    return paths


def save_addition_run(root, vocab_extra_teacher: int = 0) -> dict:
    """``save_tiny_pair`` plus ``data.jsonl`` of the 100 one-digit additions; returns the three paths."""
    import json

    paths = save_tiny_pair(root, vocab_extra_teacher)
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {**paths, "data": str(data)}


# A Qwen3-style ChatML template: a system turn when given, and an empty think block when thinking is off.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def chat_tokenizer():
    """`char_tokenizer` with ChatML special tokens and `CHAT_TEMPLATE` (stands in for a real chat tokenizer)."""
    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok
