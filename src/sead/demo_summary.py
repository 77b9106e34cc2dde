"""The demo's verdict: seed-averaged held-out accuracy with bootstrap intervals, paired method
differences, the share of the teacher-student gap closed, and the console table that says it.

Intervals resample the evaluation problems (`sead.stats`, the same paired bootstrap as
``sead compare``); a method's per-problem score is its greedy correctness averaged over the seeds,
so the point estimate is the mean over seeds and the seed-to-seed spread is shown beside it.
"""

from __future__ import annotations

import itertools

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from sead.stats import compare_scores, mean_over_seeds, paired_difference

__all__ = ["summarise", "summary_rows", "caption", "print_table", "verdict_lines"]


def summarise(problems: dict, methods: list[str], n_resamples: int = 2000, seed: int = 0) -> dict:
    """Intervals from per-problem greedy scores.

    ``problems`` maps ``"before"`` and ``"teacher"`` to ``{problem id: 0/1}`` and each method to a
    list of such dicts, one per seed. Returns ``{"score": {name: interval}, "vs_before": {method:
    interval}, "pairs": {"b - a": interval}, "gap_closed": {method: fraction or None}}`` where an
    interval is ``{"mean", "low", "high"}`` (95%, accuracy as 0-1).
    """
    ids = list(problems["before"])

    def row(name: str) -> list[float]:
        value = problems[name]
        return mean_over_seeds(value if isinstance(value, list) else [value], ids).tolist()

    names = ["teacher", "before", *methods]
    rows = {name: row(name) for name in names}
    stats = compare_scores(
        {"heldout": np.array([rows[n] for n in names])}, reference=1, n_resamples=n_resamples, seed=seed
    )["heldout"]
    score = {n: stats["score"][i].to_dict() for i, n in enumerate(names)}
    vs_before = {m: stats["diff"][names.index(m)].to_dict() for m in methods}
    pairs = {
        f"{b} - {a}": paired_difference(rows[b], rows[a], n_resamples=n_resamples, seed=seed).to_dict()
        for a, b in itertools.combinations(methods, 2)
    }
    gap = score["teacher"]["mean"] - score["before"]["mean"]
    gap_closed = {m: (score[m]["mean"] - score["before"]["mean"]) / gap if gap > 0 else None for m in methods}
    return {
        "score": score,
        "vs_before": vs_before,
        "pairs": pairs,
        "gap_closed": gap_closed,
        "confidence": 0.95,
        "resamples": n_resamples,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _pt(iv: dict | None, digits: int = 1) -> str:
    """``+12.3 [8.1, 16.0]``: a difference and its interval, in percentage points."""
    if iv is None:
        return ""
    return f"{100 * iv['mean']:+.1f} [{100 * iv['low']:.{digits}f}, {100 * iv['high']:.{digits}f}]"


def _with_ci(iv: dict, digits: int = 1) -> str:
    return f"{100 * iv['mean']:.1f} [{100 * iv['low']:.{digits}f}, {100 * iv['high']:.{digits}f}]"


def verdict_lines(results: dict, methods: list[str]) -> list[str]:
    """The plain-language reading of the table, from the numbers alone (console, README, report)."""
    s, before, seeds = results["summary"], results["before"], results["seeds"]
    runs = f"mean over {len(seeds)} seed{'s' * (len(seeds) > 1)}"
    lines = []
    above = [m for m in methods if s["vs_before"][m]["low"] > 0]
    below = [m for m in methods if results["after"][m] < before]
    if len(above) == len(methods):
        lines.append(f"Every method lifted the student ({runs}); each lift's 95% interval excludes zero.")
    else:
        if above:
            lines.append(f"Lifted the student, interval above zero ({runs}): {', '.join(above)}.")
        unclear = [m for m in methods if m not in above and m not in below]
        if unclear:
            lines.append(f"No lift shown (the interval includes zero): {', '.join(unclear)}.")
        if below:
            lines.append(f"Ended below the starting student: {', '.join(below)}.")
    closed = {m: g for m, g in s["gap_closed"].items() if g is not None}
    if closed:
        best = max(closed, key=closed.get)
        lines.append(
            f"Best: {best}, closing {closed[best]:.0%} of the teacher-student gap "
            f"({_pct(before)} -> {_pct(results['after'][best])}, teacher {_pct(results['teacher'])})."
        )
    for pair, iv in s["pairs"].items():
        b, a = pair.split(" - ")
        if iv["low"] > 0 or iv["high"] < 0:
            lead, trail = (b, a) if iv["mean"] > 0 else (a, b)
            lines.append(f"{lead} beat {trail} by {abs(100 * iv['mean']):.1f} points ({pair}: {_pt(iv)}).")
        else:
            lines.append(
                f"{pair}: {_pt(iv)} points; the interval includes zero: no difference shown on "
                f"{results['n_eval']} problems."
            )
    churn = [f["fixed"] + f["broken"] for m in methods for f in results["flips"][m]]
    if churn and max(churn) > 0:
        lines.append(
            f"Churn: each run changed the greedy answer on {min(churn)}-{max(churn)} of the "
            f"{results['n_eval']} problems (fixed + broken)."
        )
    return lines


def summary_rows(results: dict, methods: list[str], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (teacher, student before, one row per method), in %.

    ``compact`` (the console at 80 columns): no per-seed column, intervals in whole points."""
    per_seed, digits = not compact, 0 if compact else 1
    k, sampled, s = results.get("eval_samples", 0), results.get("sampled", {}), results["summary"]
    header = [
        "model",
        "greedy [95% CI]",
        *(["per seed"] if per_seed else []),
        "vs before" if compact else "vs before [95% CI]",
        "gap" if compact else "gap closed",
        "fix/brk" if compact else "fixed/broken",
        *([f"avg@{k}"] if k else []),
    ]

    def row(label, key, trained=False):
        cells = [label, _with_ci(s["score"][key], digits)]
        if trained:
            flips, gap = results["flips"][key], s["gap_closed"][key]
            seeds = [" / ".join(f"{100 * v:.1f}" for v in results["per_seed"][key])] if per_seed else []
            cells += [
                *seeds,
                _pt(s["vs_before"][key], digits),
                "-" if gap is None else f"{gap:.0%}",
                f"{sum(f['fixed'] for f in flips)}/{sum(f['broken'] for f in flips)}",
            ]
        else:
            cells += [""] * (4 if per_seed else 3)
        return cells + ([f"{100 * sampled[key]:.1f}" if sampled.get(key) is not None else "-"] if k else [])

    rows = [row("teacher", "teacher"), row("student", "before")]
    return header, rows + [row(m, m, trained=True) for m in methods]


def caption(results: dict) -> str:
    """What the numbers are (the same budget for every method, what the intervals cover)."""
    k = results.get("eval_samples", 0)
    return (
        f"Held-out accuracy in %, {results['n_eval']} problems; {results['steps']} steps per run, batch "
        f"{results['batch_size']}, lr {results['lr']:g} for every method; seeds "
        f"{', '.join(map(str, results['seeds']))}. Greedy: mean over seeds, 95% percentile-bootstrap interval "
        "over problems (training noise shows in the per-seed values). vs before: paired difference in points. "
        "Gap closed: share of the teacher-student gap. fixed/broken: greedy answers that turned right / wrong "
        "against the student before training, summed over seeds."
        + (f" avg@{k}: mean over {k} samples at temperature 0.7." if k else "")
    )


def print_table(results: dict, methods: list[str]) -> None:
    table = Table(
        title=f"held-out accuracy %, {results['n_eval']} problems, mean of {len(results['seeds'])} seeds",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    header, rows = summary_rows(results, methods, compact=True)
    for name in header:
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for cells in rows:
        table.add_row(*cells)
    console = Console()
    console.print(table)
    console.print(
        "per seed (greedy %): "
        + "; ".join(f"{m} {' / '.join(f'{100 * v:.1f}' for v in results['per_seed'][m])}" for m in methods),
        highlight=False,
    )
    console.print(caption(results), style="dim", highlight=False)
    for line in verdict_lines(results, methods):
        console.print(line, highlight=False)
    console.print(f"report: {results['report']}   total time: {results['total_s']:.0f} s", highlight=False)
