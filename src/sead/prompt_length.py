"""Prompt lengths against ``rollout.max_prompt_tokens`` and the models' context windows.

A rollout occupies prompt + ``rollout.max_new_tokens`` positions, and a model scores positions past
its ``max_position_embeddings`` as noise (no error, a loss several times too high), so every prompt
is measured once before training, as the rollout will tokenize it (chat template included), and
for OPSD also the teacher's privileged prompt. ``data.long_prompts`` says what happens to prompts
that do not fit: ``error`` (the default) refuses the run naming the first one and the count;
``truncate`` keeps each such prompt's last tokens (the question and any instruction after it, as
TRL does); ``drop`` leaves them out. Both name the count in a start-up note.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sead.chat import with_text
from sead.data import PromptItem
from sead.errors import ConfigError, DataError
from sead.rollout import RolloutConfig, format_prompts

__all__ = ["fit_prompts"]


def _lengths(tokenizer, texts: list[str], rollout: RolloutConfig) -> list[int]:
    """Token counts of ``texts`` as the rollout encodes them (chat template, special tokens)."""
    if not texts:
        return []
    formatted, templated = format_prompts(tokenizer, texts, rollout.chat_template, rollout.chat_template_kwargs)
    return [len(ids) for ids in tokenizer(formatted, add_special_tokens=not templated)["input_ids"]]


def _binding_context(contexts: dict[str, int | None], max_new_tokens: int) -> tuple[str, int] | None:
    """(model name, context) of the model with the smallest known context; refuse when no prompt fits."""
    known = [(n, c) for n, c in contexts.items() if c is not None]
    if not known:
        return None
    name, ctx = min(known, key=lambda nc: nc[1])
    if max_new_tokens >= ctx:
        raise ConfigError(
            f"rollout.max_new_tokens={max_new_tokens} leaves no room for a prompt in the {name}'s context of "
            f"{ctx} positions (max_position_embeddings); lower rollout.max_new_tokens below {ctx}"
        )
    return name, ctx


def fit_prompts(
    items: list[PromptItem],
    tokenizer,
    rollout: RolloutConfig,
    long_prompts: str,
    source: str,
    contexts: dict[str, int | None],
    teacher_template: str | None = None,
) -> tuple[list[PromptItem], list[str]]:
    """Items that fit (truncated or dropped as ``long_prompts`` says) and the notes to print (module doc).

    ``contexts`` maps model names ("student", "teacher") to their context length (None: unknown);
    ``teacher_template`` (OPSD) is the teacher's prompt, ``{prompt}`` and ``{answer}`` filled per item;
    ``source`` names the data in messages (``data.path=...``).
    """
    binding = _binding_context(contexts, rollout.max_new_tokens)
    room = None if binding is None else binding[1] - rollout.max_new_tokens  # prompt positions the context leaves
    limit = rollout.max_prompt_tokens if room is None else min(rollout.max_prompt_tokens, room)

    def measure(prompts: list[str], answers: list) -> list[tuple[int, str, int]]:
        """(tokens to cut, which prompt is too long, its length) per prompt; the first is <= 0 when it fits."""
        out = [(n - limit, "prompt", n) for n in _lengths(tokenizer, prompts, rollout)]
        if teacher_template is not None and room is not None:
            texts = [with_text(p, teacher_template.format(prompt=p, answer=a)) for p, a in zip(prompts, answers)]
            teacher = _lengths(tokenizer, texts, rollout)
            out = [s if s[0] >= n - room else (n - room, "teacher prompt", n) for s, n in zip(out, teacher)]
        return out

    sizes = measure([it.prompt for it in items], [it.answer for it in items])
    long = [i for i, (cut, _, _) in enumerate(sizes) if cut > 0]
    if not long:
        return items, []
    count = f"{len(long)} of {len(items)} prompts"
    if long_prompts == "error":
        raise DataError(_too_long(items[long[0]], sizes[long[0]], source, rollout, binding, limit, count))
    if long_prompts == "drop":
        dropped = set(long)
        kept = [it for i, it in enumerate(items) if i not in dropped]
        if not kept:
            raise DataError(f"every prompt of {source} is longer than {limit} tokens; nothing is left to train on")
        return kept, [f"data.long_prompts=drop: left out {count} of {source}, longer than the {limit} tokens that fit"]
    out = list(items)
    for i in long:
        fits = lambda text, answer: measure([text], [answer])[0][0]  # noqa: E731
        out[i] = dataclasses.replace(items[i], prompt=_truncate(items[i], tokenizer, sizes[i][0], fits, source))
    return out, [f"data.long_prompts=truncate: cut {count} of {source} to their last tokens, {limit} at most"]


def _too_long(
    item: PromptItem,
    size: tuple[int, str, int],
    source: str,
    rollout: RolloutConfig,
    binding: tuple[str, int] | None,
    limit: int,
    count: str,
) -> str:
    """The one-line refusal: the first long prompt, what it exceeds, how many are too long, the fixes."""
    _, which, n = size
    what = (
        f"prompt {item.id!r} of {source}"
        if which == "prompt"
        else f"the OPSD teacher prompt (objective.opsd_template) of prompt {item.id!r} of {source}"
    )
    if binding is None or (which == "prompt" and limit == rollout.max_prompt_tokens):
        problem = f"has {n} tokens, more than rollout.max_prompt_tokens={rollout.max_prompt_tokens}"
        fix = "raise rollout.max_prompt_tokens"
    else:
        m = rollout.max_new_tokens
        problem = (
            f"has {n} tokens; with rollout.max_new_tokens={m} that is {n + m} positions, more than the "
            f"{binding[0]}'s context of {binding[1]} (max_position_embeddings)"
        )
        fix = "lower rollout.max_new_tokens"
    return (
        f"{what} {problem} ({count} are too long); set data.long_prompts=truncate (keeps their last tokens) "
        f"or data.long_prompts=drop, {fix}, or shorten the prompts"
    )


def _truncate(item: PromptItem, tokenizer, cut: int, excess_of: Callable[[str, str | None], int], source: str) -> str:
    """``item.prompt`` without its first tokens, short enough that ``excess_of`` is <= 0."""
    ids = tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
    keep = len(ids) - cut
    for _ in range(8):  # decode/encode may not round-trip exactly at the cut: shorten until it fits
        if keep < 1:
            break
        text = with_text(item.prompt, tokenizer.decode(ids[-keep:]))  # a chat prompt keeps its earlier turns
        over = excess_of(text, item.answer)
        if over <= 0:
            return text
        keep -= over
    raise DataError(
        f"prompt {item.id!r} of {source} cannot be cut to fit: the template and chat template alone are too long; "
        "shorten data.template (or objective.opsd_template) or lower rollout.max_new_tokens"
    )
