"""Loading student/teacher models and tokenizers, and checking that they share a vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch

from sead.errors import ConfigError, SeadError

__all__ = ["load_model", "load_tokenizer", "check_shared_vocab", "head_rows", "torch_dtype", "context_length"]


def torch_dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# Files one of which every saved tokenizer has (fast, sentencepiece, BPE and WordPiece formats).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "tekken.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_GGUF_KEYS = {"model.student": "model.gguf_file", "model.teacher": "model.teacher_gguf_file"}


def _looks_local(path: str) -> bool:
    """A path, not a hub name: explicit (./, /, ~), not a valid ``owner/name``, or under an existing folder."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if path.startswith((".", "/", "~")) or "\\" in path:
        return True
    try:
        validate_repo_id(path)
    except HFValidationError:
        return True
    parent = Path(path).parent
    return str(parent) != "." and parent.is_dir()  # `models/nostudent` next to an existing `models/`


def _check_source(path: str, key: str, what: str = "model", gguf_file: str | None = None) -> None:
    """Refuse at once (no hub retries) an empty value, a missing local path, or a file where a folder is due."""
    if not path:
        raise ConfigError(f"{key} is empty; set {key}=PATH_OR_HUB_NAME")
    local = Path(path).expanduser()
    if local.is_file():
        holds = "config.json and the weights" if what == "model" else "the tokenizer files"
        gguf = f" (for a GGUF file: {key}=ITS_FOLDER {_GGUF_KEYS[key]}=ITS_NAME)" if key in _GGUF_KEYS else ""
        raise ConfigError(f"{key}={path!r} is a file, not a folder; give the folder that holds {holds}{gguf}")
    if local.is_dir():
        if what == "tokenizer" and not gguf_file and not any((local / f).is_file() for f in TOKENIZER_FILES):
            fix = "; or set model.tokenizer to a folder that has them" if key == "model.student" else ""
            raise ConfigError(
                f"{key}={path!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:4])}, ...); "
                f"save the tokenizer into it with tokenizer.save_pretrained(FOLDER){fix}"
            )
        return
    if _looks_local(path):
        parent = local.parent
        near = ""
        if parent.is_dir():
            names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
            near = f" ({parent} holds: {', '.join(names[:6]) or 'no folders'})"
        raise ConfigError(f"{key}={path!r} does not exist{near}; give an existing model directory or a hub name")


def load_tokenizer(path: str, gguf_file: str | None = None, key: str = "model.tokenizer", trust_remote_code=False):
    from transformers import AutoTokenizer

    _check_source(path, key, "tokenizer", gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise SeadError(
            f"cannot load the tokenizer from {key}={path!r} ({str(err).splitlines()[0]}); check the path"
        ) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ConfigError(f"the tokenizer at {path!r} has no pad or EOS token; add one to it")
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str,
    dtype: str | None = "float32",
    gguf_file: str | None = None,
    key: str = "model.student",
    trust_remote_code: bool = False,
):
    """Load a causal LM (local dir, hub name, or GGUF file inside a dir)."""
    from transformers import AutoModelForCausalLM

    _check_source(path, key, "model", gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as err:
        raise SeadError(
            f"cannot load the model from {key}={path!r} ({str(err).splitlines()[0]}); check the path"
        ) from None
    return model


def head_rows(model) -> int:
    """Rows of the output embedding (may exceed the tokenizer's size by padding rows)."""
    return model.get_output_embeddings().weight.shape[0]


def context_length(model) -> int | None:
    """The most positions ``model`` was built for (its config's ``max_position_embeddings`` or alias), or None."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_shared_vocab(student_tok, teacher_tok, student_rows: int, teacher_rows: int) -> int:
    """Return the vocabulary size V both models are scored on, or raise with the fix.

    The tokenizers must map every token to the same id; the heads may carry extra padding rows
    (e.g. 151,936 vs 152,064): only the first V = min(rows) rows are scored.
    """
    if teacher_tok is not None and teacher_tok is not student_tok:
        s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
        if s_vocab != t_vocab:
            diff = [tok for tok in s_vocab if t_vocab.get(tok) != s_vocab[tok]][:3]
            extra = len(set(t_vocab) ^ set(s_vocab))
            raise ConfigError(
                f"teacher and student tokenizers differ ({len(s_vocab)} vs {len(t_vocab)} tokens, "
                f"{extra} not shared, e.g. {diff}); on-policy distillation needs one vocabulary: "
                "pick a teacher from the student's model family"
            )
    vocab = min(student_rows, teacher_rows)
    if vocab < len(student_tok):
        raise ConfigError(
            f"the tokenizer has {len(student_tok)} tokens but a model head has only {vocab} rows; "
            "the checkpoint and tokenizer do not belong together: fix model.tokenizer"
        )
    return vocab
