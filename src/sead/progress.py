"""Console progress: the one rich progress-bar builder, the training progress over optimiser steps, quiet libraries.

On a terminal the training progress is a rich bar whose step count and ETA survive a narrow (80
column) console: the metrics text is cut first. Anywhere else (a batch job's log file) it is one
plain line every ``logging.log_every`` steps, the first and last steps always, and at every step
with evaluation results (`plain_line`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

__all__ = ["new_progress", "progress_bar", "StepProgress", "summary_line", "plain_line", "eval_line", "quiet_libraries"]

_KEYS = (
    ("loss/total", "loss", "{:.4f}"),
    ("loss/fkl", "fkl", "{:.3f}"),
    ("entropy/student_mean", "H_s", "{:.3f}"),
    ("zones/frac_b", "B", "{:.2f}"),
    ("reward/mean", "reward", "{:.2f}"),
    ("perf/tokens_per_s", "tok/s", "{:.0f}"),
)
_ZONES = ("zones/frac_a", "zones/frac_b", "zones/frac_c")


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


def new_progress(label: str, *extra: TextColumn, transient: bool = False, console: Console | None = None) -> Progress:
    """A rich bar: label, bar, done/total, elapsed, ETA, then ``extra`` columns (cut first when narrow)."""
    keep = lambda: Column(no_wrap=True)  # noqa: E731  (each column its own)
    return Progress(
        TextColumn(label, table_column=keep()),
        BarColumn(bar_width=24 if extra else 40),
        MofNCompleteColumn(table_column=keep()),
        TimeElapsedColumn(table_column=keep()),
        TextColumn("eta", table_column=keep()),
        TimeRemainingColumn(table_column=keep()),
        *extra,
        transient=transient,
        console=console,
        expand=bool(extra),  # the extra columns take the width that is left, and only that
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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0.0))))


def eval_line(record: dict) -> str:
    """``eval NAME pass@1 0.412 ...`` of a record's ``eval/<bench>/<metric>`` values; empty without any."""
    parts = [f"{key[len('eval/') :]} {v:.3f}" for key, v in record.items() if key.startswith("eval/") and _number(v)]
    return "eval " + "  ".join(parts) if parts else ""


def plain_line(step: int, total: int, record: dict, elapsed: float, eta: float | None) -> str:
    """One log line: ``step 10/200  loss 0.1234  zones A/B/C 0.50/0.40/0.10  tok/s 812  elapsed 0:01:40  eta 0:31:40``,
    then the eval results of that step, if any."""
    parts = [f"step {step}/{total}"]
    if _number(record.get("loss/total")):
        parts.append(f"loss {record['loss/total']:.4f}")
    if all(_number(record.get(k)) for k in _ZONES):
        parts.append("zones A/B/C " + "/".join(f"{record[k]:.2f}" for k in _ZONES))
    if _number(record.get("reward/mean")):
        parts.append(f"reward {record['reward/mean']:.2f}")
    if _number(record.get("perf/tokens_per_s")):
        parts.append(f"tok/s {record['perf/tokens_per_s']:.0f}")
    parts.append(f"elapsed {_clock(elapsed)}")
    parts.append(f"eta {_clock(eta) if eta is not None else '?'}")
    evals = eval_line(record)
    return "  ".join(parts + ([evals] if evals else []))


class StepProgress:
    """Progress over optimiser steps (see module doc); a no-op when disabled (non-main processes,
    ``logging.progress=false``). ``stream`` is where plain lines go (stdout), ``console`` the bar's."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool = True,
        log_every: int = 10,
        stream=None,
        console: Console | None = None,
        clock=time.monotonic,
    ):
        self.total, self.start, self.enabled, self.log_every = total, start, enabled, log_every
        self.stream = stream if stream is not None else sys.stdout
        self.console, self.clock = console, clock
        self.plain = enabled and console is None and not _is_terminal(self.stream)
        self._progress = None
        self._task = None
        self._t0 = clock()

    def __enter__(self):
        self._t0 = self.clock()
        if self.enabled and not self.plain:
            info = TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1))
            self._progress = new_progress("[bold]train", info, console=self.console)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, record: dict) -> None:
        evals = eval_line(record)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=summary_line(record))
            if evals:  # above the bar, where it stays
                self._progress.console.print(f"step {step}: {evals}", markup=False, highlight=False)
        elif self.plain and self.log_every > 0:
            due = step - self.start == 1 or step == self.total or step % self.log_every == 0 or evals
            if due:
                print(plain_line(step, self.total, record, *self._times(step)), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """One line of news (an evaluation starting): above the bar, or a plain line."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self.plain:
            print(text, file=self.stream, flush=True)

    def _times(self, step: int) -> tuple[float, float | None]:
        """(seconds since this session's first step began, estimated seconds to the last step)."""
        elapsed = self.clock() - self._t0
        done = step - self.start
        return elapsed, (elapsed / done * (self.total - step) if done > 0 else None)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False
