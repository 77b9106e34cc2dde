"""Console progress: the one rich progress-bar builder, the training bar over optimiser steps, quiet libraries."""

from __future__ import annotations

import contextlib
import logging
import math
import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["new_progress", "progress_bar", "StepProgress", "summary_line", "quiet_libraries"]

_KEYS = (
    ("loss/total", "loss", "{:.4f}"),
    ("loss/fkl", "fkl", "{:.3f}"),
    ("entropy/student_mean", "H_s", "{:.3f}"),
    ("zones/frac_b", "B", "{:.2f}"),
    ("reward/mean", "reward", "{:.2f}"),
    ("perf/tokens_per_s", "tok/s", "{:.0f}"),
)


def quiet_libraries() -> None:
    """Keep the console to our own progress bar: no per-file load bars or hub chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # imported here: quieting transformers should not be what loads it
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    # accelerate warns on every checkpoint that tied embeddings are saved once; that is expected.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def new_progress(label: str, *extra: TextColumn, transient: bool = False) -> Progress:
    """A rich bar: label, bar, done/total, elapsed, ETA, then ``extra`` columns."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *extra,
        transient=transient,
    )


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True):
    """A progress bar over ``total`` items; yields ``advance(n)``. Disabled: a no-op."""
    if not enabled:
        yield lambda n=1: None
        return
    with new_progress(description) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def summary_line(record: dict) -> str:
    parts = []
    for key, label, fmt in _KEYS:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {fmt.format(value)}")
    return "  ".join(parts)


class StepProgress:
    """A progress bar over optimiser steps; a no-op on non-main processes or when disabled."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            self._progress = new_progress("[bold]train", TextColumn("{task.fields[info]}"))
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, record: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=summary_line(record))

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
