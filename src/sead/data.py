"""Prompt data: load question/answer rows from files, dataset folders or the hub into `PromptItem`s.

Sources (``DataConfig.path``):
- a ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file (read here, so errors name the row);
- a local folder: a ``save_to_disk`` dataset, else anything ``datasets.load_dataset(folder)`` reads;
- a Hugging Face hub name ``owner/name`` (needs the hub or its local cache).
A path that is neither an existing file/folder nor of the form ``owner/name`` fails at once.

Template convention: ``DataConfig.template`` is a Python format string. ``{problem}`` is the text
of the prompt field whatever that field is called; other fields of the row can be used by their
column name (``{subject}``); literal braces are doubled (``\\boxed{{}}``). The chat template is
applied later by the rollout code, not here. A field name with dots reads nested mappings
(``reward_model.ground_truth``) when the row has no column of that exact name.

Chat data: with ``messages_field`` set, that column holds a conversation ``[{role, content}, ...]``;
the prompt is the conversation up to its last user turn, the template applied to that turn's text
(``{problem}``). ``system_prompt`` adds a system turn to every prompt that has none. Such a prompt
is a `ChatPrompt`: its text is the last user turn, and it carries the turns before it, which the
rollout renders through the tokenizer's chat template (`sead.chat`).
"""

from __future__ import annotations

import csv
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sead.chat import ChatPrompt, conversation_turns
from sead.errors import ConfigError, DataError
from sead.jsonio import read_jsonl_lines
from sead.settings import setting

__all__ = [
    "DEFAULT_TEMPLATE",
    "LONG_PROMPTS",
    "PromptRows",
    "DataConfig",
    "PromptItem",
    "load_prompts",
    "load_rows",
    "check_template",
]

DEFAULT_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
LONG_PROMPTS = ("error", "truncate", "drop")  # what `sead train` does with prompts too long to fit (sead.prompt_length)
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def check_template(template: str, key: str) -> set[str]:
    """Validate a prompt template (see module doc); return the field names it uses."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(f"{key} is not a valid format string ({err}); write literal braces as {{{{ }}}}") from None
    names = {name for _, name, _, _ in parts if name is not None}
    if "" in names or any(n.isdigit() for n in names):
        raise ConfigError(
            f"{key} has an empty or positional {{}} field; use {{problem}} and write literal braces as {{{{ }}}}"
        )
    if not names:
        raise ConfigError(f"{key} must contain {{problem}} (the prompt text); got {template!r}")
    return names


@dataclass
class PromptRows:
    """Which rows of a prompt source are used and how a row becomes a `PromptItem` (shared by
    ``data`` and ``eval``)."""

    split: str = setting("train", "split of a hub dataset or dataset folder")
    prompt_field: str = setting("problem", "prompt text column ({problem} in the template)")
    answer_field: str | None = setting("answer", "reference answer column; null (data only): none, pure distillation")
    id_field: str | None = setting(None, "row id column; null: the 0-based row number")
    template: str = setting(
        DEFAULT_TEMPLATE, "prompt format: {problem}, other columns by name, {{ }} for literal braces"
    )
    max_prompts: int | None = setting(None, "a seeded random subset of this many rows (eval: per benchmark); null: all")
    messages_field: str | None = setting(
        None, "conversation column [{role, content}, ...]: prompt = its turns up to the last user turn; null: off"
    )
    system_prompt: str | None = setting(None, "system turn for every prompt without one (needs a chat template)")

    def to_items(self, rows: list[tuple[str, dict]], key_prefix: str) -> list[PromptItem]:
        """``rows`` mapped to `PromptItem`s by this section's fields (`rows_to_items`), not subsampled."""
        return rows_to_items(
            rows,
            self.prompt_field,
            self.answer_field,
            self.id_field,
            self.template,
            key_prefix=key_prefix,
            messages_field=self.messages_field,
            system_prompt=self.system_prompt,
        )


def check_chat_keys(rows: PromptRows, key_prefix: str) -> None:
    """``messages_field`` and ``system_prompt`` are non-empty strings or null."""
    for key in ("messages_field", "system_prompt"):
        value = getattr(rows, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{key_prefix}.{key} must be a non-empty string or null, got {value!r}")


@dataclass
class DataConfig(PromptRows):
    """Where the training prompts come from and how rows map to `PromptItem`s."""

    path: str = setting("", "prompt file (.jsonl/.json/.parquet/.csv), dataset folder or hub name owner/name")
    subset: str | None = setting(None, "hub dataset configuration name, e.g. main for openai/gsm8k")
    shuffle_seed: int = setting(0, "seed of the max_prompts subset")
    long_prompts: str = setting(
        "error", "prompts longer than the context allows: error | truncate (keep the end) | drop"
    )

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ConfigError(f"data.path must be a string, got {self.path!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ConfigError("data.split must be a non-empty string; set data.split=train")
        if not isinstance(self.prompt_field, str) or not self.prompt_field:
            raise ConfigError("data.prompt_field must be a non-empty string; set data.prompt_field=question")
        for key in ("answer_field", "id_field", "subset"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"data.{key} must be a non-empty string or null, got {value!r}")
        check_template(self.template, "data.template")
        if self.max_prompts is not None and (not isinstance(self.max_prompts, int) or self.max_prompts <= 0):
            raise ConfigError(f"data.max_prompts must be a positive integer or null, got {self.max_prompts!r}")
        if not isinstance(self.shuffle_seed, int):
            raise ConfigError(f"data.shuffle_seed must be an integer, got {self.shuffle_seed!r}")
        if self.long_prompts not in LONG_PROMPTS:
            raise ConfigError(f"data.long_prompts must be one of {', '.join(LONG_PROMPTS)}, got {self.long_prompts!r}")
        check_chat_keys(self, "data")


@dataclass
class PromptItem:
    """One prompt: ``prompt`` is the template applied to ``question`` (no chat template yet; a
    `ChatPrompt` for chat data)."""

    id: str
    question: str
    answer: str | None
    prompt: str


# ---------------------------------------------------------------- raw rows


_JSONL_FIXES = {
    "is not UTF-8": "re-encode the file as UTF-8",
    "is not valid JSON": "fix or delete that line",
    "is a JSON": "write one {...} per line",
}


def _bad_prompt_line(where: str, problem: str) -> None:
    fix = next(fix for start, fix in _JSONL_FIXES.items() if problem.startswith(start))
    raise DataError(f"{where} {problem}; {fix}")


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    return read_jsonl_lines(path, _bad_prompt_line)


def _read_json(path: Path) -> list[tuple[str, dict]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as err:
        hint = "; for one object per line name the file .jsonl" if err.msg == "Extra data" else ""
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}){hint}") from None
    if isinstance(data, dict):  # {"data": [...]}, or columns {"problem": [...], "answer": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(data) == 1 and lists:
            data = lists[0]
        elif lists and len(lists) == len(data) and len({len(v) for v in lists}) == 1:
            data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of objects (or one list of them); got a {type(data).__name__}")
    rows = []
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {i} is a JSON {type(row).__name__}, not an object; make every row an object")
        rows.append((f"{path} row {i}", row))
    return rows


def _read_csv(path: Path) -> list[tuple[str, dict]]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return [(f"{path} row {i}", dict(row)) for i, row in enumerate(csv.DictReader(f), start=1)]
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8; re-encode the file as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path} is not a readable CSV file ({err}); check its quoting") from None


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path} is not a readable parquet file ({type(err).__name__}); rewrite it") from None
    return [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]


def _rows_of(dataset: Any, name: str) -> list[tuple[str, dict]]:
    return [(f"{name} row {i}", dict(row)) for i, row in enumerate(dataset, start=1)]


def _read_dataset_dir(path: Path, split: str) -> list[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:  # not a save_to_disk folder: let load_dataset read its files
        try:
            ds = datasets.load_dataset(str(path), split=split)
        except Exception as err:
            raise DataError(f"{path} is not a dataset folder datasets can read ({type(err).__name__}: {err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path} has no split {split!r}; set data.split to one of {sorted(ds)}")
        ds = ds[split]
    return _rows_of(ds, f"{path}[{split}]")


def _read_hub(name: str, subset: str | None, split: str) -> list[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"cannot load hub dataset {name!r} split {split!r} ({msg}); check the name, data.subset and "
            "data.split, or point data.path at a local .jsonl/.parquet file"
        ) from None
    return _rows_of(ds, f"{name}[{split}]")


def load_rows(path: str, split: str = "train", subset: str | None = None) -> list[tuple[str, dict]]:
    """Read raw rows as ``(where, row)`` pairs; ``where`` names the file and row for error messages."""
    if not path:
        raise DataError(
            "no data path given; set data.path to a .jsonl/.json/.parquet/.csv file, a folder or owner/name"
        )
    p = Path(path).expanduser()
    if p.is_dir():
        rows = _read_dataset_dir(p, split)
    elif p.is_file():
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
        reader = readers.get(p.suffix.lower())
        if reader is None:
            raise DataError(f"{path} has an unknown file type; use one of {', '.join(FILE_SUFFIXES)}")
        rows = reader(p)
    elif _HUB_NAME.fullmatch(path) and not path.lower().endswith(FILE_SUFFIXES):
        rows = _read_hub(path, subset, split)
    else:
        raise DataError(f"{path} does not exist; give an existing file or folder, or a hub dataset name owner/name")
    if not rows:
        raise DataError(f"{path} has no rows; point data.path at a non-empty data set")
    return rows


# ---------------------------------------------------------------- items


def _text(value: Any, where: str, field: str, fix: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, int, float)):
        return str(value[0])
    raise DataError(f"{where}: field {field!r} is a {type(value).__name__}, not text; {fix}")


_ABSENT = object()


def _field(row: dict, name: str):
    """``row[name]``; a dotted name reads nested mappings when no column has that name; `_ABSENT` if missing."""
    if name in row:
        return row[name]
    node = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _missing(where: str, field: str, row: dict, key: str) -> DataError:
    if _field(row, field) is not _ABSENT:  # present but null: the field name is right, the value is not
        return DataError(f"{where}: field {field!r} is null; fill it in or remove the row")
    fields = ", ".join(sorted(map(str, row))) or "none"
    return DataError(f"{where} has no field {field!r} (fields: {fields}); set {key} to the right field name")


def _question(row: dict, where: str, prompt_field: str, messages_field: str | None, key_prefix: str):
    """(the prompt text, the turns before it) of one row."""
    if messages_field is not None:
        value = _field(row, messages_field)
        if value is _ABSENT or value is None:
            raise _missing(where, messages_field, row, f"{key_prefix}.messages_field")
        turns = conversation_turns(value, where, messages_field, key_prefix)
        return turns[-1]["content"], turns[:-1]
    value = _field(row, prompt_field)
    if value is _ABSENT or value is None:
        raise _missing(where, prompt_field, row, f"{key_prefix}.prompt_field")
    return _text(value, where, prompt_field, f"set {key_prefix}.prompt_field to a text field"), []


def rows_to_items(
    rows: list[tuple[str, dict]],
    prompt_field: str,
    answer_field: str | None,
    id_field: str | None,
    template: str,
    key_prefix: str = "data",
    messages_field: str | None = None,
    system_prompt: str | None = None,
) -> list[PromptItem]:
    """Map raw rows to `PromptItem`s with the field mapping and template (see module doc)."""
    names = check_template(template, f"{key_prefix}.template")
    items, seen = [], {}
    for index, (where, row) in enumerate(rows):
        question, context = _question(row, where, prompt_field, messages_field, key_prefix)
        if not question.strip():
            field = messages_field or prompt_field
            raise DataError(f"{where}: field {field!r} is empty; remove the row or fill in the prompt")
        if system_prompt is not None and not any(turn["role"] == "system" for turn in context):
            context = [{"role": "system", "content": system_prompt}, *context]
        answer = None
        if answer_field is not None:
            value = _field(row, answer_field)
            if value is _ABSENT or value is None:
                err = _missing(where, answer_field, row, f"{key_prefix}.answer_field")
                if key_prefix == "eval":  # evaluation needs every answer; it has no answer-free mode
                    raise err
                raise DataError(f"{err} (or {key_prefix}.answer_field=null for data without answers)")
            answer = _text(value, where, answer_field, f"set {key_prefix}.answer_field to a text field")
        if id_field is None:
            item_id = str(index)
        else:
            value = _field(row, id_field)
            if value is _ABSENT or value is None:
                raise _missing(where, id_field, row, f"{key_prefix}.id_field")
            item_id = _text(value, where, id_field, f"set {key_prefix}.id_field to a text or integer field")
            if item_id in seen:
                raise DataError(
                    f"{where}: id {item_id!r} repeats {seen[item_id]}; "
                    f"make {key_prefix}.id_field unique or set it to null"
                )
            seen[item_id] = where
        values = {n: row.get(n) for n in names if n != "problem"}
        for n, v in values.items():
            if v is None:
                raise DataError(
                    f"{where} has no field {n!r} used by {key_prefix}.template; fix the template or the data"
                )
        values["problem"] = question
        text = template.format(**values)
        prompt = ChatPrompt(text, context) if context else text
        items.append(PromptItem(id=item_id, question=question, answer=answer, prompt=prompt))
    return items


def subsample(items: list, max_items: int | None, seed: int) -> list:
    """A seeded random subset of ``max_items`` items, kept in their original order."""
    if max_items is None or max_items >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), max_items))
    return [items[i] for i in keep]


def load_prompts(cfg: DataConfig) -> list[PromptItem]:
    """Load, map and subsample the prompts described by ``cfg`` (see module doc)."""
    rows = load_rows(cfg.path, cfg.split, cfg.subset)
    return subsample(cfg.to_items(rows, "data"), cfg.max_prompts, cfg.shuffle_seed)
