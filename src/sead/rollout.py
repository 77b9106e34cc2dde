"""Student rollouts: batched sampling from a causal LM, returned as aligned tensors.

Prompts are left-padded so every row's response starts at the same column ``prompt_len``; the
response part is right-padded. ``response_mask`` marks generated tokens up to and including the
first EOS, which is what every objective trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sead.chat import chat_messages
from sead.errors import ConfigError
from sead.settings import setting

__all__ = [
    "RolloutConfig",
    "Rollout",
    "format_prompts",
    "encode_prompts",
    "check_template_kwargs",
    "generate_rollouts",
    "position_ids_from_mask",
]


@dataclass
class RolloutConfig:
    """How the student samples. ``batch_size`` is the generation micro-batch (rows per ``generate``)."""

    max_new_tokens: int = setting(256, "longest response, in tokens")
    temperature: float = setting(0.7, "sampling temperature; 0 = greedy")
    top_p: float = setting(1.0, "nucleus sampling mass in (0, 1]; 1 = off")
    batch_size: int = setting(8, "generation micro-batch: rows per generate call")
    chat_template: str = setting("auto", "auto: the tokenizer's chat template when it has one | on | off")
    max_prompt_tokens: int = setting(1024, "longest prompt, in tokens; a longer one is an error")
    chat_template_kwargs: dict[str, Any] = setting(
        {}, "extra arguments of the chat template, e.g. {enable_thinking: false} for Qwen3"
    )

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"rollout.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"rollout.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ConfigError(f"rollout.batch_size must be >= 1, got {self.batch_size}")
        if self.chat_template not in ("auto", "on", "off"):
            raise ConfigError(f"rollout.chat_template must be auto, on or off, got {self.chat_template!r}")
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"rollout.max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        check_template_kwargs(self, "rollout")


def check_template_kwargs(cfg: RolloutConfig, key_prefix: str) -> None:
    """``chat_template_kwargs`` is a mapping with text keys, and a chat template is not switched off."""
    kwargs = cfg.chat_template_kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k for k in kwargs):
        raise ConfigError(
            f"{key_prefix}.chat_template_kwargs must be a mapping of names to values, got {kwargs!r}; "
            f"e.g. {key_prefix}.chat_template_kwargs={{enable_thinking: false}}"
        )
    if kwargs and cfg.chat_template == "off":
        raise ConfigError(
            f"{key_prefix}.chat_template_kwargs is set but {key_prefix}.chat_template=off uses no chat template; "
            f"set {key_prefix}.chat_template=auto or remove the arguments"
        )


@dataclass
class Rollout:
    """A batch of sampled responses, rows prompt-major (all samples of prompt 0 first).

    ``input_ids``/``attention_mask``/``response_mask``: (B, P + R); ``prompt_len`` = P.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: int
    prompts: list[str]
    response_texts: list[str]
    prompt_index: list[int] = field(default_factory=list)

    @property
    def response_ids(self) -> torch.Tensor:
        """(B, R) generated ids (padding included; see ``response_mask``)."""
        return self.input_ids[:, self.prompt_len :]

    def to(self, device) -> Rollout:
        return Rollout(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.prompt_len,
            self.prompts,
            self.response_texts,
            self.prompt_index,
        )


def format_prompts(
    tokenizer, prompts: list[str], chat_template: str = "auto", template_kwargs: dict | None = None
) -> tuple[list[str], bool]:
    """Apply the tokenizer's chat template when asked/available; returns (texts, templated).

    A `sead.chat.ChatPrompt` (system prompt, earlier turns) needs the chat template; ``template_kwargs``
    go to ``apply_chat_template`` (``rollout.chat_template_kwargs``)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has_template:
        raise ConfigError(
            "rollout.chat_template=on but the tokenizer has no chat template; set rollout.chat_template=off"
        )
    if chat_template == "off" or not has_template:
        if any(getattr(p, "context", ()) for p in prompts):
            why = "chat_template=off is set" if chat_template == "off" else "the tokenizer has no chat template"
            raise ConfigError(
                f"the prompts have a system prompt or earlier turns (system_prompt / messages_field) but {why}; "
                "set rollout.chat_template=auto (eval.chat_template for eval) with a tokenizer that has one, "
                "or remove data.system_prompt / data.messages_field"
            )
        return [str(p) for p in prompts], False
    try:
        texts = [
            tokenizer.apply_chat_template(
                chat_messages(p), tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
            )
            for p in prompts
        ]
    except Exception as err:  # jinja raises its own types (e.g. a template that refuses a system turn)
        raise ConfigError(
            f"the tokenizer's chat template failed on a prompt ({type(err).__name__}: {err}); check "
            "data.system_prompt, the conversation turns and rollout.chat_template_kwargs"
        ) from None
    return texts, True


def encode_prompts(tokenizer, prompts: list[str], chat_template: str = "auto", template_kwargs: dict | None = None):
    """Format (chat template when asked/available) and tokenize, left-padded: ids and mask (B, P)."""
    texts, templated = format_prompts(tokenizer, prompts, chat_template, template_kwargs)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated)
    finally:
        tokenizer.padding_side = old_side


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses: (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ConfigError("the tokenizer has neither a pad nor an EOS token; add one (tokenizer.pad_token = ...)")


def _response_mask(response_ids: torch.Tensor, eos_id: int | None, pad_id: int) -> torch.Tensor:
    """True up to and including the first EOS; everything after is padding. (B, R) -> (B, R)."""
    if eos_id is None:
        return response_ids != pad_id
    is_eos = (response_ids == eos_id).long()
    # Tokens strictly after the first EOS have cumsum(is_eos) - is_eos >= 1.
    return (is_eos.cumsum(-1) - is_eos) == 0


@torch.no_grad()
def generate_rollouts(
    model,
    tokenizer,
    prompts: list[str],
    cfg: RolloutConfig,
    num_samples: int = 1,
    greedy: bool = False,
) -> Rollout:
    """Sample ``num_samples`` responses per prompt from ``model`` (an unwrapped HF causal LM).

    Generation runs in micro-batches of ``cfg.batch_size`` rows; the result is one left-padded
    prompt block of width P and one response block of width R (longest response).
    """
    from transformers import GenerationConfig

    pad_id = _pad_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    rows = [p for p in prompts for _ in range(num_samples)]
    index = [i for i in range(len(prompts)) for _ in range(num_samples)]
    enc = encode_prompts(tokenizer, rows, cfg.chat_template, cfg.chat_template_kwargs)
    prompt_len = enc["input_ids"].shape[1]
    if prompt_len > cfg.max_prompt_tokens:
        raise ConfigError(
            f"a prompt has {prompt_len} tokens, more than rollout.max_prompt_tokens={cfg.max_prompt_tokens}; "
            "shorten the prompts or raise rollout.max_prompt_tokens"
        )
    do_sample = not greedy and cfg.temperature > 0
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=do_sample,
        temperature=cfg.temperature if do_sample else None,
        top_p=cfg.top_p if do_sample else None,
        top_k=0 if do_sample else None,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(rows), cfg.batch_size):
            ids = enc["input_ids"][start : start + cfg.batch_size].to(device)
            att = enc["attention_mask"][start : start + cfg.batch_size].to(device)
            out = model.generate(input_ids=ids, attention_mask=att, generation_config=gen_cfg)
            chunks.append(out[:, prompt_len:].cpu())
    finally:
        model.train(was_training)
    width = max(c.shape[1] for c in chunks)
    response_ids = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks])
    response_mask = _response_mask(response_ids, eos_id, pad_id)
    response_ids = response_ids.masked_fill(~response_mask, pad_id)
    input_ids = torch.cat([enc["input_ids"], response_ids], dim=1)
    attention_mask = torch.cat([enc["attention_mask"].bool(), response_mask], dim=1)
    full_mask = torch.cat([torch.zeros_like(enc["attention_mask"], dtype=torch.bool), response_mask], dim=1)
    response_texts = [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response_ids, response_mask)]
    return Rollout(input_ids, attention_mask.long(), full_mask, prompt_len, rows, response_texts, index)
