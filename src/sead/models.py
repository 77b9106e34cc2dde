"""Loading student/teacher models and tokenizers, and checking that they share a vocabulary.

`load_run_models` loads everything one training run needs: the tokenizer, the student (with
gradient checkpointing and LoRA adapters when asked), the teacher, or for methods without one the
frozen initial student (a copy, or under LoRA the base model with adapters off, `sead.lora`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sead.errors import ConfigError, SeadError
from sead.lora import AdaptersOff, is_lora, wrap_with_lora

__all__ = [
    "load_model",
    "load_tokenizer",
    "check_shared_vocab",
    "head_rows",
    "torch_dtype",
    "context_length",
    "enable_gradient_checkpointing",
    "RunModels",
    "load_run_models",
]


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
    attn_implementation: str | None = None,
    weights: bool = True,
):
    """Load a causal LM (local dir, hub name, or GGUF file inside a dir); no ``attn_implementation``: transformers'.

    ``weights=False``: the same model with its parameters on the meta device (its buffers real), read
    from the config alone, for a process that receives its shards from process 0 (``sead.sharding``).
    """
    from transformers import AutoModelForCausalLM

    _check_source(path, key, "model", gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if not weights:
            return _empty_model(path, dtype, trust_remote_code, kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError, ImportError) as err:
        if attn_implementation and (isinstance(err, ImportError) or "attn_implementation" in str(err)):
            raise ConfigError(
                f"model.attn_implementation={attn_implementation!r} cannot be used for {key}={path!r} "
                f"({str(err).splitlines()[0][:160]}); set sdpa, eager or null, or install its package"
            ) from None
        if isinstance(err, ImportError):
            raise
        raise SeadError(
            f"cannot load the model from {key}={path!r} ({str(err).splitlines()[0]}); check the path"
        ) from None
    return model


def _empty_model(path: str, dtype: str | None, trust_remote_code: bool, kwargs: dict):
    """What ``from_pretrained`` builds, parameters on meta; buffers (e.g. rotary frequencies) computed as usual.

    transformers 5.x reads the weights on every process even under accelerate's
    ``cpu_ram_efficient_loading``, so sead builds the empty model itself.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    gguf = {"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **gguf)
    resolved = torch_dtype(dtype)
    if resolved == "auto":  # as from_pretrained resolves it, so process 0's shards fit these parameters
        resolved = getattr(config, "dtype", None) or torch.float32
        resolved = getattr(torch, resolved) if isinstance(resolved, str) else resolved
    extra = {"attn_implementation": kwargs["attn_implementation"]} if "attn_implementation" in kwargs else {}
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=resolved, trust_remote_code=trust_remote_code, **extra)
    model.tie_weights()  # the context gives each registration a new meta tensor, the tied head one of its own
    try:  # generate() reads it: every process must stop and sample as process 0 does
        model.generation_config = GenerationConfig.from_pretrained(path, **gguf)
    except OSError:
        pass  # none saved: from_pretrained too derives it from the config
    return model.eval()


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


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward, non-reentrant (what TRL and transformers recommend).

    transformers checkpoints a layer only when it runs in training mode with grad enabled, so rollouts
    (``generate`` in eval mode under no_grad, with the KV cache) and no-grad scoring passes run as
    before; the student's training forward is the one that saves memory.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.gradient_checkpointing=true, but {type(model).__name__} does not support it; set it to false"
        )
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@dataclass
class RunModels:
    """The models of one training run. ``teacher`` None for a self-teaching method: the live student."""

    tokenizer: Any
    student: Any
    teacher: Any
    reference: Any  # GRPO's frozen KL reference, else None
    vocab: int


def _frozen_initial(student):
    """The initial student, frozen: under LoRA the base model with adapters off (no copy), else a deep copy."""
    if is_lora(student):
        return AdaptersOff(student)
    return copy.deepcopy(student).eval().requires_grad_(False)


def load_run_models(model_cfg, lora_cfg, teacher_kind: str, initial_copy: bool, weights: bool = True) -> RunModels:
    """Tokenizer, student, teacher and reference for a method whose teacher is ``teacher_kind``.

    ``teacher_kind`` is the method record's ``teacher`` (``model``, ``self`` or ``none``);
    ``initial_copy`` whether it keeps the frozen initial student (as its teacher or KL reference);
    ``weights=False``: models on the meta device (see :func:`load_model`).
    """
    m = model_cfg
    tokenizer = load_tokenizer(
        m.tokenizer or m.student,
        m.gguf_file if not m.tokenizer else None,
        key="model.tokenizer" if m.tokenizer else "model.student",
        trust_remote_code=m.trust_remote_code,
    )
    student = load_model(
        m.student, m.dtype, m.gguf_file, "model.student", m.trust_remote_code, m.attn_implementation, weights
    )
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    if lora_cfg.enabled:
        student = wrap_with_lora(student, lora_cfg, m.student)
    if teacher_kind != "model":
        # No separate teacher: GRPO has none, OPSD's is the student itself (the frozen initial one or live).
        vocab = check_shared_vocab(tokenizer, None, head_rows(student), head_rows(student))
        frozen = _frozen_initial(student) if initial_copy else None
        teacher, reference = (None, frozen) if teacher_kind == "none" else (frozen, None)
        student.train()
        return RunModels(tokenizer, student, teacher, reference, vocab)
    teacher = load_model(
        m.teacher,
        m.teacher_dtype or m.dtype,
        m.teacher_gguf_file,
        "model.teacher",
        m.trust_remote_code,
        m.attn_implementation,
        weights,
    )
    teacher_tok = None
    if m.teacher != (m.tokenizer or m.student):
        try:
            teacher_tok = load_tokenizer(m.teacher, m.teacher_gguf_file, "model.teacher", m.trust_remote_code)
        except SeadError:
            teacher_tok = None  # a teacher folder without a tokenizer uses the student's
    vocab = check_shared_vocab(tokenizer, teacher_tok, head_rows(student), head_rows(teacher))
    teacher.eval().requires_grad_(False)
    student.train()
    if getattr(student.config, "use_cache", None) is not None:
        student.config.use_cache = False
    return RunModels(tokenizer, student, teacher, None, vocab)
