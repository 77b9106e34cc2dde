"""Config settings with help text: ``key: type = setting(default, "what it does")`` in a section dataclass.

Each section of a run config (`sead.config.RunConfig`) declares its keys this way, so the help of a
key sits beside its default and ``sead config show`` can print it next to the value (`help_texts`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

__all__ = ["setting", "help_texts"]


def setting(default: Any, help: str) -> Any:
    """A dataclass field with ``default`` and a one-line ``help``; a list or dict default is copied per instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_texts(cls: type) -> dict[str, str]:
    """``{key: help}`` for every field of the dataclass ``cls`` (empty for a field without help)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
