"""JSON files on disk: one JSONL reader, one JSONL writer and one atomic writer for the whole package.

Writers go through a temporary file in the same folder and ``os.replace`` so a reader (or a run
killed half-way) never sees half a file. The reader reports each bad line to the caller, who
decides whether it is fatal (user data) or skipped (a crash-torn log line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sead.errors import DataError

__all__ = ["read_jsonl", "read_jsonl_lines", "write_jsonl", "atomic_write_text", "atomic_write_json"]


BadLine = Callable[[str, str], None]  # (where, problem) -> None, or raises


def _raise(where: str, problem: str) -> None:
    raise DataError(f"{where} {problem}; fix or delete that line")


def read_jsonl_lines(path: str | Path, on_bad_line: BadLine | None = _raise) -> list[tuple[str, dict]]:
    """``(where, object)`` for each JSON object of a JSONL file, in order; blank lines are ignored.

    ``where`` is "PATH line N", for the caller's own messages about a row. A line that is not UTF-8,
    not JSON, or not an object goes to ``on_bad_line(where, problem)``; the default raises
    ``DataError``, ``None`` skips the line silently.
    """
    path = Path(path)
    rows = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path} line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                if on_bad_line:
                    on_bad_line(where, "is not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if on_bad_line:
                    on_bad_line(where, f"is not valid JSON ({err.msg})")
                continue
            if not isinstance(row, dict):
                if on_bad_line:
                    on_bad_line(where, f"is a JSON {type(row).__name__}, not an object")
                continue
            rows.append((where, row))
    return rows


def read_jsonl(path: str | Path, on_bad_line: BadLine | None = _raise) -> list[dict]:
    """The JSON objects of a JSONL file, in order (bad lines as in `read_jsonl_lines`)."""
    return [row for _, row in read_jsonl_lines(path, on_bad_line)]


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename; ``durable`` also fsyncs first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, durable: bool = False) -> Path:
    """``data`` as one JSON document, written atomically (see ``atomic_write_text``)."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n", durable=durable)


def write_jsonl(path: str | Path, rows: Iterable[dict], *, durable: bool = False, ensure_ascii: bool = True) -> Path:
    """One JSON object per line, written atomically (see ``atomic_write_text``)."""
    text = "".join(json.dumps(row, ensure_ascii=ensure_ascii) + "\n" for row in rows)
    return atomic_write_text(path, text, durable=durable)
