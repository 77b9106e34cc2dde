"""Methods side by side: training curves of several runs overlaid on shared axes, seeds averaged.

Runs of one method (``RunData.method``; sead's T/A/C variants by config name) are averaged step by
step over their seeds, then lightly smoothed, so each method is one line per panel.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from sead.plots import new_figure
from sead.run_data import RunData

__all__ = ["method_overlay", "overlay_caption", "PANELS"]

PANELS = (
    ("reward/mean", "Sampled reward (verifier, training batch)"),
    ("loss/rkl", "Reverse KL to the teacher, all tokens"),
    ("entropy/student_mean", "Mean student entropy (nats)"),
    ("eval/heldout/pass@1", "Held-out greedy accuracy (in-training eval)"),
)


def _running_mean(values: list[float], half: int) -> list[float]:
    n = len(values)
    return [statistics.fmean(values[max(0, i - half) : i + half + 1]) for i in range(n)]


def _mean_series(runs: Sequence[RunData], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for r in runs:
        for s, v in zip(*r.series(key)):  # series() keeps finite values only
            by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def method_overlay(runs: Sequence[RunData]):
    """One figure, a panel per quantity, one line per method (mean over its runs); None without metrics."""
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        if r.metrics:
            groups.setdefault(r.method, []).append(r)
    series = {(k, m): _mean_series(g, k) for k, _ in PANELS for m, g in groups.items()}
    panels = [(k, t) for k, t in PANELS if any(series[k, m][0] for m in groups)]
    if len(groups) < 2 or not panels:
        return None
    fig = new_figure(4.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels):
        for method, group in groups.items():
            steps, vals = series[key, method]
            if not steps:
                continue
            label = f"{method} ({len(group)} run{'s' * (len(group) > 1)})"
            if key.startswith("eval/"):
                ax.plot(steps, vals, "o-", ms=4, label=label)
            else:
                # Light smoothing: a centred running mean over ~5% of the steps (at least 5 steps).
                line = ax.plot(steps, _running_mean(vals, max(2, len(vals) // 40)), lw=1.6, label=label)[0]
                ax.plot(steps, vals, color=line.get_color(), alpha=0.2, lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def overlay_caption(runs: Sequence[RunData]) -> str:
    """The overlay's caption; it says so where the curriculum makes the batch reward fall by design."""
    text = "Methods on shared axes: mean over each method's runs (seeds), a light running mean, raw values faint."
    curriculum = sorted(
        {
            r.method
            for r in runs
            if ((r.config or {}).get("objective") or {}).get("curriculum")
            and ((r.config or {}).get("curriculum") or {}).get("sampler", "uniform") != "uniform"
        }
    )
    if curriculum:
        text += (
            f" With the curriculum ({', '.join(curriculum)}) batches start with the easiest prompts and grow "
            "harder, so the sampled reward of those runs falls by design; compare held-out accuracy instead."
        )
    return text
