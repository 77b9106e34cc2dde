"""Chat prompts: a prompt's text plus the turns before it (system prompt, earlier turns), and the
conversation rows of ``messages`` datasets they come from.

A `ChatPrompt` is a ``str`` (its last user turn, after the data template), so every step that
treats prompts as text (lengths, samples, OPSD's teacher template) still can; `chat_messages` gives
the conversation the rollout renders through the tokenizer's chat template, and `with_text` keeps
the turns when a step rewrites the text (truncation, OPSD's privileged prompt).
"""

from __future__ import annotations

from sead.errors import DataError

__all__ = ["ChatPrompt", "chat_messages", "with_text", "conversation_turns"]


class ChatPrompt(str):
    """A prompt's text (its last user turn) that also carries the turns before it: a system prompt,
    earlier turns. Everything that treats prompts as text still can; the rollout renders the turns."""

    context: tuple[dict, ...]

    def __new__(cls, text: str, context=()):
        prompt = super().__new__(cls, text)
        prompt.context = tuple(dict(turn) for turn in context)
        return prompt

    def __reduce__(self):  # copies and pickles keep the turns
        return ChatPrompt, (str(self), self.context)


def chat_messages(prompt: str) -> list[dict]:
    """The conversation the chat template renders: the prompt's earlier turns, then it as the user turn."""
    return [*getattr(prompt, "context", ()), {"role": "user", "content": str(prompt)}]


def with_text(prompt: str, text: str) -> str:
    """``text`` as the last user turn of ``prompt``'s conversation (a plain prompt gives plain text)."""
    context = getattr(prompt, "context", ())
    return ChatPrompt(text, context) if context else text


def conversation_turns(value, where: str, field: str, key_prefix: str) -> list[dict]:
    """A conversation field's ``{role, content}`` turns up to its last user turn (a reply after it is dropped)."""
    fix = f"fix the row, or set {key_prefix}.messages_field to a column of [{{role, content}}, ...] turns"
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r} is a {type(value).__name__}, not a list of turns; {fix}")
    turns = []
    for i, turn in enumerate(value):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise DataError(f"{where}: turn {i} of field {field!r} is not a {{role, content}} mapping of text; {fix}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    users = [i for i, turn in enumerate(turns) if turn["role"] == "user"]
    if not users:
        roles = ", ".join(sorted({turn["role"] for turn in turns}))
        raise DataError(f"{where}: field {field!r} has no user turn (roles: {roles}); give every conversation one")
    return turns[: users[-1] + 1]
