"""Figures of ``sead report``, all from data read by :func:`sead.run_data.load_run` (the numbers
they show are computed in :mod:`sead.run_numbers`).

- matplotlib figures, drawn with the object API on the Agg canvas (no pyplot, no global backend
  switch); each returns a ``Figure`` or None when the run has nothing to draw. matplotlib (an
  optional dependency, the ``demo`` extra) is imported on use.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np

from sead.methods import reads_alpha
from sead.run_data import PAPER_FAIR_SHARE, ZONE_COLORS, ZONE_LETTERS, ZONE_NAMES, RunData
from sead.run_numbers import ZoneShare, pooled_tokens, zone_fair_share

__all__ = [
    "new_figure",
    "to_png",
    "training_curves",
    "zone_figure",
    "token_figure",
    "entropy_collapse",
]

_KEY_COLORS = {"loss/total": "k", "loss/zone_b": ZONE_COLORS[1], "loss/zone_c": ZONE_COLORS[2]}
_MAX_POINTS = 20000  # per scatter: more points are thinned evenly (the ranks stay exact)


# ---------------------------------------------------------------- matplotlib figures
def new_figure(width: float, height: float):
    """An empty matplotlib ``Figure`` (constrained layout) of ``width`` x ``height`` inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_png(fig, dpi: int = 110) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _smooth(values: list[float]) -> list[float]:
    """Centred running mean over about 1/25 of the steps (the input itself when that is one step)."""
    h = len(values) // 50
    if h == 0:
        return values
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    n = len(values)
    return [(prefix[min(n, i + h + 1)] - prefix[max(0, i - h)]) / (min(n, i + h + 1) - max(0, i - h)) for i in range(n)]


def _plot(ax, steps, values, label, color=None, style="-"):
    """Raw values faint plus a running mean when there are many steps."""
    if len(steps) == 1:
        return ax.plot(steps, values, "o", label=label, color=color)[0]
    sm = _smooth(values)
    if sm is not values:
        line = ax.plot(steps, sm, style, label=label, color=color, lw=1.6)[0]
        ax.plot(steps, values, style, color=line.get_color(), alpha=0.25, lw=0.8)
        return line
    return ax.plot(steps, values, style, label=label, color=color, lw=1.4)[0]


def _zlabel(z: int) -> str:
    return f"zone {ZONE_NAMES[z]}" if z in ZONE_LETTERS else "no zone (-1)"


def _empty(ax, text="not logged"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#999")
    ax.set_xticks([])
    ax.set_yticks([])


def uses_alpha(run: RunData) -> bool:
    """Whether the run's loss depends on the annealed forward-KL weight (the method registry says)."""
    return reads_alpha(run.method, (run.config or {}).get("objective") or {})


def training_curves(run: RunData):
    """Loss, KL to the teacher (all tokens), reward/eval accuracy, lr + alpha, response length, grad norm."""
    if not run.metrics:
        return None
    fig = new_figure(12, 6.2)
    axes = fig.subplots(2, 3).ravel()
    evals = sorted(k for k in run.metric_keys() if k.startswith("eval/") and k.endswith("pass@1"))
    panels = [
        ("Loss (optimised)", [("loss/total", "total"), ("loss/zone_b", "zone B"), ("loss/zone_c", "zone C")]),
        ("KL to teacher, all tokens", [("loss/fkl", "forward KL"), ("loss/rkl", "reverse KL")]),
        ("Reward / eval accuracy", [("reward/mean", "reward/mean")] + [(k, k[5:]) for k in evals]),
        ("Learning rate", [("optim/lr", "optim/lr")]),
        ("Response length (tokens)", [("rollout/response_len_mean", "mean")]),
        ("Gradient norm", [("optim/grad_norm", "optim/grad_norm")]),
    ]
    for ax, (title, keys) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        drawn = 0
        for key, label in keys:
            steps, vals = run.series(key)
            if steps:
                if key.startswith("eval/"):
                    ax.plot(steps, vals, "o--", label=label, ms=4)
                else:
                    _plot(ax, steps, vals, label, _KEY_COLORS.get(key))
                drawn += 1
        if not drawn:
            _empty(ax)
            continue
        if title == "Learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            steps, alpha = run.series("sched/alpha")
            if steps and uses_alpha(run):  # every method logs alpha; only SEAD's zone C uses it
                tw = ax.twinx()
                tw.plot(steps, alpha, color="#c2410c", lw=1.2, label="sched/alpha")
                tw.set_ylabel("alpha (FKL weight)", color="#c2410c", fontsize=9)
        if drawn > 1 or title.startswith("Reward"):
            ax.legend(fontsize=8)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name} ({run.method})", fontsize=11)
    return fig


def _by_step_from_samples(run: RunData):
    """Per logged step: zone token fractions and FKL-share / token-share ratios from samples.jsonl."""
    groups = defaultdict(list)
    for s in run.samples:
        groups[s.step].append(s)
    out = {}
    for step in sorted(groups):
        tok = pooled_tokens(groups[step])
        shares = zone_fair_share(tok["fkl"], tok["zone"])
        if shares:
            out[step] = shares
    return out


def zone_figure(run: RunData, shares: dict[int, ZoneShare], ratios: dict[int, tuple[list[int], list[float]]]):
    """Zone fractions over training, fair-share ratio over training, pooled fair-share bars; the bars carry
    the paper's ratios (black ticks) only when ``run.zones_as_paper``, i.e. the same zone rule."""
    fig = new_figure(12, 3.6)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    per_step = None
    steps, fa = run.series("zones/frac_a")
    fb, fc = run.series("zones/frac_b")[1], run.series("zones/frac_c")[1]
    source = "metrics"
    if not (steps and len(fa) == len(fb) == len(fc)):
        per_step = _by_step_from_samples(run)
        steps = list(per_step)
        fa, fb, fc = ([per_step[s][z].token_share for s in steps] for z in ZONE_LETTERS)
        source = "samples"
    if steps:
        ax1.stackplot(
            steps,
            fa,
            fb,
            fc,
            colors=[ZONE_COLORS[z] for z in ZONE_LETTERS],
            alpha=0.85,
            labels=[f"zone {ZONE_NAMES[z]}" for z in ZONE_LETTERS],
        )
        ax1.set_ylim(0, 1)
        ax1.set_xlim(steps[0], steps[-1] if len(steps) > 1 else steps[0] + 1)
        ax1.legend(fontsize=8, loc="lower left")
        ax1.set_xlabel("step", fontsize=9)
    else:
        _empty(ax1)
    ax1.set_title(f"Token fraction per zone ({source})", fontsize=10)

    source = "metrics"
    if not ratios:
        per_step = per_step if per_step is not None else _by_step_from_samples(run)
        ratios = (
            {z: (list(per_step), [per_step[s][z].ratio for s in per_step]) for z in ZONE_LETTERS} if per_step else {}
        )
        source = "samples"
    for z, (st, vals) in ratios.items():
        _plot(ax2, st, vals, f"zone {ZONE_NAMES[z]}", ZONE_COLORS[z])
    if ratios:
        ax2.axhline(1.0, color="k", lw=0.8, ls=":")
        top = max((v for _, vals in ratios.values() for v in vals if math.isfinite(v)), default=1.0)
        ax2.set_ylim(0, max(top, 1.0) * 1.3)
        ax2.legend(fontsize=8, loc="upper left", ncol=3)
        ax2.set_xlabel("step", fontsize=9)
        ax2.grid(alpha=0.3)
    else:
        _empty(ax2)
    ax2.set_title(f"Forward-KL share ÷ token share (from {source})", fontsize=10)

    if shares:
        zs = list(ZONE_LETTERS)
        vals = [shares[z].ratio if math.isfinite(shares[z].ratio) else 0.0 for z in zs]
        ax3.bar([f"zone {ZONE_NAMES[z]}\n{v:.2f}×" for z, v in zip(zs, vals)], vals, color=[ZONE_COLORS[z] for z in zs])
        paper = [PAPER_FAIR_SHARE[z] for z in zs] if run.zones_as_paper else []  # other zones: another quantity
        if paper:
            ax3.plot(range(len(zs)), paper, "k_", ms=28, mew=2, label="paper (OLMo-3-7B)")
            ax3.legend(fontsize=8, loc="upper left")
        ax3.axhline(1.0, color="k", lw=0.8, ls=":")
        ax3.set_ylim(0, max(vals + paper) * 1.18 or 1.0)
    else:
        _empty(ax3, "no samples with zones")
    ax3.set_title("Loss concentration, all logged samples", fontsize=10)
    fig.suptitle(f"{run.name} ({run.method})", fontsize=11)
    return fig


def _thin(n: int) -> list[int]:
    if n <= _MAX_POINTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (_MAX_POINTS - 1)) for i in range(_MAX_POINTS)})


def token_figure(run: RunData, tok: dict[str, list], jaccard: float):
    """Sorted per-token forward KL coloured by zone (with cumulative share) and the entropy scatter."""
    fkl = np.asarray(tok["fkl"], dtype=float)
    zone = np.asarray(tok["zone"], dtype=int)
    ht, hs = np.asarray(tok["teacher_entropy"], dtype=float), np.asarray(tok["student_entropy"], dtype=float)
    from matplotlib.lines import Line2D

    fig = new_figure(12, 4.6)
    left, right = fig.subfigures(1, 2)
    ok = np.isfinite(fkl)
    order = np.argsort(-fkl[ok], kind="stable")
    f_sorted, z_sorted = fkl[ok][order], zone[ok][order]
    n, zones = len(f_sorted), sorted(set(zone[ok].tolist()))
    zoned = any(z >= 0 for z in zones)
    ax1, strip = left.subplots(2, 1, sharex=True, height_ratios=[4, 1]) if zoned else (left.subplots(), None)
    if n:
        keep = np.random.default_rng(0).permutation(np.asarray(_thin(n)))  # mixed draw order: no zone hides another
        x = np.arange(n) / max(n - 1, 1)
        floor = max(f_sorted[f_sorted > 0].min() if (f_sorted > 0).any() else 1e-6, 1e-8)
        ax1.scatter(
            x[keep],
            np.maximum(f_sorted[keep], floor),
            s=5,
            lw=0,
            rasterized=True,
            c=[ZONE_COLORS.get(z, "#555") for z in z_sorted[keep].tolist()],
        )
        ax1.set_yscale("log")
        total = f_sorted.sum()
        if total > 0:
            tw = ax1.twinx()
            tw.plot(x, np.cumsum(f_sorted) / total, color="k", lw=1.0)
            tw.set_ylim(0, 1.02)
            tw.set_ylabel("cumulative share of forward KL (line)", fontsize=9)
        handles = [Line2D([], [], ls="", marker="o", color=ZONE_COLORS.get(z, "#555"), label=_zlabel(z)) for z in zones]
        ax1.legend(handles=handles, fontsize=8, loc="lower left")
        ax1.set_ylabel("forward KL (nats)", fontsize=9)
        bottom_ax = strip if strip is not None else ax1
        bottom_ax.set_xlabel(f"token rank (fraction of {n} tokens, highest forward KL first)", fontsize=9)
        if strip is not None:  # zone composition of each rank bin
            bins = min(50, n)
            edges = np.linspace(0, n, bins + 1).astype(int)
            acc = np.zeros(bins)
            for z in zones:
                frac = np.array([(z_sorted[a:b] == z).mean() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
                strip.bar(
                    edges[:-1] / max(n - 1, 1),
                    frac,
                    width=np.diff(edges) / max(n - 1, 1),
                    bottom=acc,
                    align="edge",
                    color=ZONE_COLORS.get(z, "#555"),
                    lw=0,
                )
                acc += frac
            strip.set_ylim(0, 1)
            strip.set_ylabel("zone mix", fontsize=8)
            strip.tick_params(labelsize=8)
    else:
        _empty(ax1, "no finite fkl values")
    ax1.set_title(
        "Sorted per-token forward KL" + (", coloured by zone" if zoned else " (run without zones)"), fontsize=10
    )
    ax2 = right.subplots()

    ok = np.isfinite(ht) & np.isfinite(hs)
    if ok.any():
        keep = np.asarray(_thin(int(ok.sum())))
        floor = 1e-4  # log axes: entropies span 1e-6 to 1 nats here; zeros sit on the floor
        t, s, z = np.maximum(ht[ok][keep], floor), np.maximum(hs[ok][keep], floor), zone[ok][keep]
        for zz in sorted(set(z.tolist())):
            m = z == zz
            ax2.scatter(
                t[m], s[m], s=6, alpha=0.6, color=ZONE_COLORS.get(zz, "#555"), label=_zlabel(zz), rasterized=True, lw=0
            )
        ax2.axvline(np.quantile(ht[ok], 0.8), color="#c2410c", ls="--", lw=0.9, label="top 20% teacher")
        ax2.axhline(np.quantile(hs[ok], 0.8), color="#1d4ed8", ls="--", lw=0.9, label="top 20% student")
        lim = max(ht[ok].max(), hs[ok].max(), 10 * floor) * 1.5
        ax2.plot([floor, lim], [floor, lim], color="#999", lw=0.7, ls=":")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlim(floor * 0.8, lim)
        ax2.set_ylim(floor * 0.8, lim)
        ax2.legend(fontsize=8, loc="upper left", markerscale=2)
        ax2.set_xlabel(f"teacher entropy (nats, log; floor {floor:g})", fontsize=9)
        ax2.set_ylabel(f"student entropy (nats, log; floor {floor:g})", fontsize=9)
    else:
        _empty(ax2, "no entropies")
    jac = "–" if not math.isfinite(jaccard) else f"{100 * jaccard:.1f}%"
    ax2.set_title(f"Teacher vs student entropy (top-20% Jaccard {jac})", fontsize=10)
    fig.suptitle(f"{run.name} ({run.method})", fontsize=11)
    return fig


def entropy_collapse(runs: list[RunData]):
    """Mean student entropy over training, every run on one plot."""
    series = [(r, *r.series("entropy/student_mean")) for r in runs]
    series = [(r, s, v) for r, s, v in series if s]
    if not series:
        return None
    fig = new_figure(8, 4)
    ax = fig.subplots()
    for r, steps, vals in series:
        _plot(ax, steps, vals, f"{r.name} ({r.method})")
    ax.set_xlabel("step")
    ax.set_ylabel("mean student entropy (nats)")
    ax.set_title("Student entropy over training (entropy collapse)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
