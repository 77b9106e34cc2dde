"""Start-up notes of a run: where training will differ from what its config suggests.

Setup collects them (a curriculum with nothing to order, a batch larger than the data, prompts cut
to fit, reference answers the verifier cannot match, ...). Once setup has succeeded each is printed
as one line ``sead: warning: ...`` on stderr and kept in ``RUN/notes.jsonl`` as
``{"step": S, "note": text}``, S being the step the run started or resumed from; a restart from
step S replaces the notes of earlier starts at S or later (those steps are run again).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sead.jsonio import read_jsonl, write_jsonl

__all__ = ["NOTES_NAME", "publish_notes"]

NOTES_NAME = "notes.jsonl"


def publish_notes(run_dir: Path, step: int, notes: list[str]) -> None:
    """Print ``notes`` and record them in ``RUN/notes.jsonl`` (main process only; see module doc)."""
    path = Path(run_dir) / NOTES_NAME
    earlier = read_jsonl(path, on_bad_line=None) if path.exists() else []
    kept = [r for r in earlier if isinstance(r.get("step"), int) and r["step"] < step]
    for note in notes:
        print(f"sead: warning: {note}", file=sys.stderr)
    records = kept + [{"step": step, "note": note} for note in notes]
    if records != earlier:
        write_jsonl(path, records, durable=True)
