"""``sead report``: one self-contained HTML file (figures inlined as base64 PNG) from run directories.

Layers, bottom up: the run data model (:mod:`sead.run_data`, from the files of docs/FORMATS.md
alone, so any old run can be re-reported), figures and their numbers (:mod:`sead.plots`,
:mod:`sead.comparison_plots`), HTML pieces (:mod:`sead.report_html`), and this module: the page and the
``sead report`` command. A missing or unreadable piece never stops the report: its section says what
is missing. Paper reference numbers are shown only beside the same quantity measured the same way.

Output: ``build_report([RUN])`` writes ``RUN/report/report.html``; with several runs it writes
``<parent of the first run>/report/report.html``. ``out`` may name a directory (``out/report.html``)
or an ``.html`` file. Every figure is also written as a PNG next to the HTML.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import yaml

from sead import demo_summary, plots, run_numbers, toy
from sead.comparison_plots import method_overlay, overlay_caption
from sead.errors import SeadError
from sead.report_html import CSS, Figures, esc, html_table, make_slug, missing_note, pct, render_rollout, rollout_legend
from sead.run_data import (
    PAPER_FAIR_SHARE,
    PAPER_FRACTIONS,
    PAPER_JACCARD,
    ZONE_LETTERS,
    ZONE_NAMES,
    RunData,
    Sample,
    load_run,
)

__all__ = ["SECTIONS", "build_report", "add_report_arguments", "report_main"]

SECTIONS = [
    ("result", "Result"),
    ("overview", "Runs"),
    ("training", "Training curves"),
    ("zones", "Token zones and loss concentration"),
    ("tokens", "Per-token loss and entropy"),
    ("entropy", "Student entropy over training"),
    ("rollouts", "Rollouts coloured by zone"),
    ("eval", "Evaluation"),
]
_PAPER_ZONES = "/".join(f"{100 * f:g}" for f in PAPER_FRACTIONS)  # "50/40/10"


def _resolve_out(runs: list[Path], out: str | Path | None) -> Path:
    if out is None:
        return (runs[0] / "report" if len(runs) == 1 else runs[0].resolve().parent / "report") / "report.html"
    out = Path(out)
    return out if out.suffix.lower() in (".html", ".htm") else out / "report.html"


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    max_rollouts: int = 3,
    max_tokens: int = 1500,
    demo: dict | None = None,
) -> Path:
    """Write the HTML report of ``run_dirs`` and one PNG per figure next to it; return the HTML path.

    ``out``: a directory (HTML at ``out/report.html``) or an ``.html`` file; default ``RUN/report/``
    for one run, ``<parent of the first run>/report/`` for several. Rollouts: the first
    ``max_rollouts`` of the latest logged step of each run, at most ``max_tokens`` tokens each.
    ``demo``: the results of ``sead demo`` (``results.json``), shown first as the comparison table."""
    if not run_dirs:
        raise SeadError("no run directory given; pass one or more folders holding metrics.jsonl")
    if importlib.util.find_spec("matplotlib") is None:  # an optional dependency: say so before any work
        raise SeadError("`sead report` needs matplotlib; install it with pip install 'sead[demo]'")
    runs = [load_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    for r in runs:  # the config's name is often the default one: tell the runs apart by their folder
        if names.count(r.name) > 1:
            r.name = f"{r.name} [{r.path.resolve().name}]"
    html_path = _resolve_out([Path(p) for p in run_dirs], out)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    figs, taken = Figures(html_path.parent), set()
    parts = {sid: [] for sid, _ in SECTIONS}
    parts["result"].append(_result_section(demo))
    parts["overview"].append(_overview(runs))
    parts["rollouts"].append(rollout_legend())
    parts["training"].append(_overlay(runs, figs))
    for r in runs:
        slug, head = make_slug(r.name, taken), f"<h3>{esc(r.name)} <span class=small>({esc(r.method)})</span></h3>"
        fig = plots.training_curves(r)
        parts["training"].append(
            head
            + (
                figs.add(fig, f"training_{slug}", f"{r.name}: training curves")
                if fig
                else missing_note(f"{r.name} has no metrics.jsonl rows")
            )
        )
        tok = run_numbers.pooled_tokens(r.samples)
        parts["zones"].append(head + _zone_section(r, slug, tok, figs))
        if not tok["fkl"]:
            parts["tokens"].append(head + missing_note(f"{r.name} has no samples.jsonl (per-token values)"))
        else:
            jac = run_numbers.top_fraction_jaccard(tok["teacher_entropy"], tok["student_entropy"], 0.2)
            fig = plots.token_figure(r, tok, jac)
            parts["tokens"].append(
                head
                + figs.add(fig, f"tokens_{slug}", f"{r.name}: sorted per-token forward KL and entropy scatter")
                + f'<p id="jaccard-{slug}"><b>Jaccard overlap of the top-20% teacher-entropy and top-20% '
                f"student-entropy tokens: {pct(jac)}%</b> over {len(tok['fkl'])} logged tokens "
                f"(paper: {pct(PAPER_JACCARD)}%).</p>"
            )
        latest = r.latest_samples()[:max_rollouts]
        parts["rollouts"].append(
            head
            + (
                f'<p class="note">Latest logged step ({latest[0].step}).</p>'
                + "".join(render_rollout(s, max_tokens) for s in latest)
                if latest
                else missing_note(f"{r.name} has no samples.jsonl")
            )
        )
    parts["entropy"].append(_entropy_section(runs, figs))
    parts["eval"].append(_eval_table(runs))
    toc = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{"".join(parts[sid])}</section>' for sid, title in SECTIONS)
    title = "sead report: " + (
        ", ".join(r.name for r in runs)
        if len(runs) <= 3
        else f"{len(runs)} runs of {', '.join(dict.fromkeys(r.method for r in runs))}"
    )
    html_path.write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><nav>{toc}</nav>{body}"
        f"</body></html>\n",
        encoding="utf-8",
    )
    return html_path


def _result_section(demo: dict | None) -> str:
    """The demo's comparison table (seed means, intervals, churn); plain runs point to the eval section."""
    if demo is None:
        return '<p class="note">Per-run evaluation files are listed under <a href="#eval">Evaluation</a>.</p>'
    methods = list(demo["after"])
    header, rows = demo_summary.summary_rows(demo, methods)
    return (
        html_table(header, [[esc(c) for c in row] for row in rows], "eval")
        + f'<p class="note">{esc(demo_summary.caption(demo))}</p>'
        + "".join(f"<p>{esc(line)}</p>" for line in demo_summary.verdict_lines(demo, methods))
    )


def _overlay(runs: list[RunData], figs: Figures) -> str:
    fig = method_overlay(runs)
    return "" if fig is None else figs.add(fig, "methods_overlay", overlay_caption(runs)) + "<h3>Each run</h3>"


def _overview(runs: list[RunData]) -> str:
    rows = [
        [
            esc(r.name),
            esc(r.method),
            f'<span class="small">{esc(r.path)}</span>',
            str(r.metrics[-1]["step"]) if r.metrics else "–",
            str(len(r.samples)),
            ", ".join(esc(k) for k in r.evals) or "–",
            esc("; ".join([f"missing {m}" for m in r.missing] + r.notes)),
        ]
        for r in runs
    ]
    out = html_table(["run", "method", "path", "last step", "samples", "eval files", "notes"], rows)
    for r in runs:
        if r.config:
            out += (
                f"<details><summary>config.yaml of {esc(r.name)}</summary>"
                f"<pre>{esc(yaml.safe_dump(r.config, sort_keys=False))}</pre></details>"
            )
    return out


def _zone_section(r: RunData, slug: str, tok: dict[str, list], figs: Figures) -> str:
    if not r.has_zones:
        return missing_note(f"{r.name} ({r.method}) has no token zones (no zones/frac_* metrics, samples log zone -1)")
    shares = run_numbers.zone_fair_share(tok["fkl"], tok["zone"])
    paper = r.zones_as_paper  # the paper's numbers hold for its zone rule only
    if paper:
        markers = f"black ticks: the SEAD paper's ratios (OLMo-3-7B), with the same {_PAPER_ZONES} percentile zones"
    else:
        why = "its zones are not" if r.config else "no config.yaml says whether its zones are"
        markers = f"no paper markers: {why} the paper's {_PAPER_ZONES} percentile zones"
    fig = plots.zone_figure(r, shares, run_numbers.fair_share_from_metrics(r))
    body = figs.add(
        fig,
        f"zones_{slug}",
        f"{r.name}: zone fractions and loss concentration (forward KL share "
        f"divided by token share; 1 = fair share); {markers}",
    )
    if not shares:
        return body + missing_note(f"{r.name} has no samples with zones for the per-zone share table")
    steps = sorted({s.step for s in r.samples})
    rows = [
        [
            ZONE_NAMES[z],
            str(s.tokens),
            pct(s.token_share),
            pct(s.loss_share),
            f"{s.ratio:.2f}×" if math.isfinite(s.ratio) else "–",
        ]
        + ([f"{PAPER_FAIR_SHARE[z]}×"] if paper else [])
        for z, s in shares.items()
    ]
    header = ["zone", "tokens", "token share %", "forward-KL share %", "× fair share"] + (["paper"] if paper else [])
    return (
        body
        + html_table(header, rows)
        + f'<p class="note">From {len(r.samples)} logged rollouts (steps {steps[0]}–{steps[-1]}), per-token '
        f"<code>fkl</code> and <code>zone</code> of samples.jsonl. B+C carry "
        f"{pct(shares[1].loss_share + shares[2].loss_share)}% of the forward KL"
        + (" (paper: about 90%)." if paper else ".")
        + "</p>"
        + _category_section(r, slug)
    )


def _category_zones(samples: Sequence[Sample]) -> dict[str, dict] | None:
    """P(zone | token category) over the logged rollouts when all are of the embedded demo task (its
    questions as prompts, its character tokens): the token categories exist for that task only."""
    if not samples or not all(toy.is_question(s.prompt) for s in samples):
        return None
    categories = [toy.response_token_categories(s.tokens) for s in samples]
    if any(c is None for c in categories):
        return None
    return (
        toy.zones_by_category(
            [c for cs in categories for c in cs],
            [z for s in samples for z in s.zone],
            [h for s in samples for h in s.teacher_entropy],
            ZONE_LETTERS,
        )
        or None
    )


def _category_section(r: RunData, slug: str) -> str:
    table = _category_zones(r.samples)
    if table is None:
        return ""
    rows = [
        [
            esc(cat),
            str(v["tokens"]),
            pct(v["share"]),
            f"{v['teacher_entropy']:.3f}" if math.isfinite(v["teacher_entropy"]) else "–",
        ]
        + [pct(v["p_zone"][name]) for name in ZONE_LETTERS.values()]
        for cat, v in table.items()
    ]
    header = ["category", "tokens", "token share %", "teacher entropy"] + [f"zone {n} %" for n in ZONE_LETTERS.values()]
    return (
        f'<h4 id="categories-{slug}">P(zone | token category)</h4>'
        + html_table(header, rows)
        + "<p class=\"note\">The paper's Table 3 on the demo task: the share of each token category's tokens "
        "in each zone, over the same logged rollouts and zones (<code>sead.toy.token_categories</code>: step "
        "start = the first character of a step, where the path is chosen). The shipped models' table, at the "
        "first step on 512 prompts, is in the demo assets README.</p>"
    )


def _entropy_section(runs: list[RunData], figs: Figures) -> str:
    fig = plots.entropy_collapse(runs)
    if fig is None:
        return missing_note("no run logged entropy/student_mean")
    rows = []
    for r in runs:
        _, v = r.series("entropy/student_mean")
        if v:
            w = max(1, len(v) // 10)
            a, b = sum(v[:w]) / w, sum(v[-w:]) / w
            rows.append([esc(r.name), esc(r.method), f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"])
    return (
        figs.add(fig, "entropy_student", "Mean student entropy over training, all runs")
        + html_table(["run", "method", "start", "end", "change"], rows)
        + '<p class="note">Start/end: mean over the first/last 10% of logged steps. '
        "Paper (OLMo-3-7B): OPD collapses 0.39 → 0.31, SEAD holds.</p>"
    )


def _eval_table(runs: list[RunData]) -> str:
    rows_in = [(r, label, data) for r in runs for label, data in r.evals.items()]
    if not rows_in:
        return missing_note("no run has eval/*.json")
    benches = sorted({b for _, _, d in rows_in for b in d["benchmarks"]})
    rows = []
    for r, label, data in rows_in:
        cells = [esc(r.name), esc(label), esc(data.get("model", ""))]
        p1 = []
        for b in benches:
            m = data["benchmarks"].get(b)
            if not isinstance(m, dict):
                cells.append("–")
                continue
            v = m.get("pass@1")
            if isinstance(v, (int, float)):
                p1.append(v)
            pk = m.get("pass@k") if isinstance(m.get("pass@k"), dict) else {}
            kmax = max(pk, key=lambda k: int(k) if str(k).isdigit() else 0) if pk else None
            extra = (f"avg@k {pct(m.get('avg@k'))}" if isinstance(m.get("avg@k"), (int, float)) else "") + (
                f" · pass@{kmax} {pct(pk[kmax])}" if kmax and isinstance(pk[kmax], (int, float)) else ""
            )
            cells.append(
                f"{pct(v) if isinstance(v, (int, float)) else '–'}"
                f'<br><span class="small">{esc(extra)} (n={esc(m.get("n", "?"))}, k={esc(m.get("k", "?"))})</span>'
            )
        avg = (data.get("average") or {}).get("pass@1")
        avg = avg if isinstance(avg, (int, float)) else (sum(p1) / len(p1) if p1 else None)
        rows.append(cells + [f"<b>{pct(avg)}</b>"])
    return (
        html_table(["run", "file", "model"] + [esc(b) for b in benches] + ["average"], rows, "eval")
        + '<p class="note">pass@1 in %; small print: avg@k and the largest pass@k logged, with n problems and '
        "k samples. One row per eval/*.json file of each run.</p>"
    )


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (metrics.jsonl, samples.jsonl, eval/)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output directory or .html file (default: RUN/report/ for one "
        "run, <parent of the first run>/report/ for several)",
    )
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts shown per run (default 3)")
    parser.add_argument("--max-tokens", type=int, default=1500, help="tokens shown per rollout (default 1500)")
    return parser


def report_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """CLI entry: ``args`` is a Namespace from :func:`add_report_arguments` or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = add_report_arguments(argparse.ArgumentParser(prog="sead report", description=SECTIONS[0][1]))
        args = parser.parse_args(list(args) if args is not None else None)
    path = build_report(args.runs, args.out, max_rollouts=args.rollouts, max_tokens=args.max_tokens)
    print(f"report: {path} (figures as PNG in {path.parent})")
    return 0
