"""The difficulty file: where ``curriculum.difficulty_path`` points, and reading it for a prompt list.

`sead.difficulty` writes it (one ``{"id", "pass_rate", "difficulty", "k", "correct"}`` line per
prompt); the curriculum samplers read it through `load_difficulties`.
"""

from __future__ import annotations

from pathlib import Path

from sead.data import PromptItem
from sead.errors import DataError
from sead.jsonio import read_jsonl_lines

__all__ = ["RUN_FOLDER", "difficulty_file", "load_difficulties"]

RUN_FOLDER = "{output_dir}"  # in curriculum.difficulty_path: the run folder (train.output_dir)


def difficulty_file(path: str | None, output_dir: str) -> str | None:
    """``curriculum.difficulty_path`` with `RUN_FOLDER` standing for the run folder."""
    return None if path is None else path.replace(RUN_FOLDER, str(output_dir))


def load_difficulties(path: str, items: list[PromptItem]) -> list[float]:
    """Difficulties aligned with ``items``, matched by id, from a `sead difficulty` JSONL file.

    Each line is ``{"id": str, "pass_rate": float, "difficulty": float}``; ``difficulty`` wins,
    else ``1 - pass_rate``. Later lines for the same id replace earlier ones.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"difficulty file {path} does not exist; run `sead difficulty` or fix curriculum.difficulty_path"
        )
    bad = '{where} is not {{"id", "pass_rate", "difficulty"}} JSON; fix the line or re-run `sead difficulty`'

    def bad_line(where: str, problem: str) -> None:
        raise DataError(bad.format(where=where))

    by_id: dict[str, float] = {}
    for where, row in read_jsonl_lines(p, bad_line):
        try:
            value = row["difficulty"] if row.get("difficulty") is not None else 1.0 - float(row["pass_rate"])
            key, value = str(row["id"]), float(value)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(bad.format(where=where)) from None
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: difficulty {value} is outside [0, 1]; re-run `sead difficulty`")
        by_id[key] = value
    missing = [it.id for it in items if it.id not in by_id]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(items)} prompts have no difficulty in {path} (first id {missing[0]!r}); "
            "re-run `sead difficulty` with the same data config (it resumes)"
        )
    return [by_id[it.id] for it in items]
