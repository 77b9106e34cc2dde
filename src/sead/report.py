"""``sead report``: one self-contained HTML file (figures inlined as base64 PNG) from run directories.

Everything is read through :func:`load_run` (figures and their numbers: :mod:`sead.plots`), from the files of docs/FORMATS.md alone
(``metrics.jsonl``, ``samples.jsonl``, ``config.yaml``, ``eval/*.json``), so any old run can be
re-reported. A missing or unreadable piece never stops the report: its section says what is missing.

Output: ``build_report([RUN])`` writes ``RUN/report/report.html``; with several runs it writes
``<parent of the first run>/report/report.html``. ``out`` may name a directory (``out/report.html``)
or an ``.html`` file. Every figure is also written as a PNG next to the HTML.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sead.errors import DataError, SeadError

__all__ = ["Sample", "RunData", "load_run", "build_report", "add_report_arguments", "report_main"]

ZONE_NAMES = {0: "A", 1: "B", 2: "C", -1: "none"}
ZONE_COLORS = {0: "#9e9e9e", 1: "#3b82f6", 2: "#f59e0b", -1: "#a78bfa"}  # A grey, B blue, C orange
PAPER_FAIR_SHARE = {0: 0.19, 1: 1.46, 2: 3.19}  # SEAD paper: FKL share / token share per zone
PAPER_JACCARD = 0.637
_EVAL_ORDER = (("before", "base", "init", "pre", "start"), ("after", "final", "end"))  # first, last; others between
SECTIONS = [("result", "Result"), ("overview", "Runs"), ("training", "Training curves"),
            ("zones", "Token zones and loss concentration"),
            ("tokens", "Per-token loss and entropy"), ("entropy", "Student entropy over training"),
            ("rollouts", "Rollouts coloured by zone"), ("eval", "Evaluation")]


def _floats(values) -> list[float]:
    return [float(v) if isinstance(v, (int, float)) else math.nan for v in values]


@dataclass
class Sample:
    """One logged rollout of ``samples.jsonl``; per-token lists are cut to the length of ``tokens``."""

    step: int
    method: str
    prompt: str
    response: str
    tokens: list[str]
    zone: list[int]
    teacher_entropy: list[float]
    student_entropy: list[float]
    loss: list[float]
    fkl: list[float]
    reward: float | None = None

    @classmethod
    def from_json(cls, row: dict) -> Sample:
        tokens = [str(t) for t in row.get("tokens") or []]
        n = len(tokens)

        def cut(key: str, fill) -> list:
            vals = list(row.get(key) or [])[:n]
            return vals + [fill] * (n - len(vals))

        reward = row.get("reward")
        return cls(int(row.get("step", 0)), str(row.get("method") or ""), str(row.get("prompt") or ""),
                   str(row.get("response") or ""), tokens,
                   [int(z) if isinstance(z, (int, float)) else -1 for z in cut("zone", -1)],
                   _floats(cut("teacher_entropy", None)), _floats(cut("student_entropy", None)),
                   _floats(cut("loss", None)), _floats(cut("fkl", None)),
                   float(reward) if isinstance(reward, (int, float)) else None)


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    name: str
    method: str
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)  # one merged row per step, sorted by step
    samples: list[Sample] = field(default_factory=list)
    evals: dict[str, dict] = field(default_factory=dict)  # eval file stem -> parsed JSON
    missing: list[str] = field(default_factory=list)  # files of the format that are absent
    notes: list[str] = field(default_factory=list)  # problems met while reading

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric over the steps that logged a finite value for it."""
        pts = [(r["step"], float(r[key])) for r in self.metrics
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [s for s, _ in pts], [v for _, v in pts]

    def metric_keys(self) -> set[str]:
        return {k for r in self.metrics for k in r}

    @property
    def has_zones(self) -> bool:
        return bool(self.series("zones/frac_c")[0]) or any(z >= 0 for s in self.samples for z in s.zone)

    def latest_samples(self) -> list[Sample]:
        if not self.samples:
            return []
        last = max(s.step for s in self.samples)
        return [s for s in self.samples if s.step == last]


def _read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: skipped {bad} unreadable line(s)")
    return rows


def _eval_order(f: Path) -> tuple:
    """before/base/... first, after/final last, the rest by name with numbers compared as numbers (step-20 < step-100)."""
    stem = f.stem.lower()
    rank = 0 if stem.startswith(_EVAL_ORDER[0]) else 2 if stem.startswith(_EVAL_ORDER[1]) else 1
    return rank, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", stem) if p]


def _config_value(config: dict, *keys: str) -> str | None:
    for key in keys:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (str, int, float)) and str(node):
            return str(node)
    return None


def load_run(path: str | Path) -> RunData:
    """Read a run directory (docs/FORMATS.md). Raises DataError only when ``path`` is not a directory."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"run directory {str(root)!r} does not exist; pass the folder holding metrics.jsonl")
    notes: list[str] = []
    missing = [f for f in ("config.yaml", "metrics.jsonl", "samples.jsonl") if not (root / f).is_file()]
    config: dict = {}
    if (root / "config.yaml").is_file():
        try:
            import yaml

            loaded = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except Exception as err:  # a broken config must not hide the metrics
            notes.append(f"config.yaml: unreadable ({type(err).__name__})")
    merged: dict[int, dict] = {}
    if (root / "metrics.jsonl").is_file():
        for row in _read_jsonl(root / "metrics.jsonl", notes):
            if isinstance(row.get("step"), (int, float)):
                merged.setdefault(int(row["step"]), {}).update(row, step=int(row["step"]))
    samples: list[Sample] = []
    if (root / "samples.jsonl").is_file():
        for row in _read_jsonl(root / "samples.jsonl", notes):
            try:
                samples.append(Sample.from_json(row))
            except (TypeError, ValueError):
                notes.append("samples.jsonl: skipped a malformed record")
    evals: dict[str, dict] = {}
    eval_files = sorted((root / "eval").glob("*.json")) if (root / "eval").is_dir() else []
    for f in sorted(eval_files, key=_eval_order):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), dict):
                raise ValueError("no 'benchmarks' object")
            evals[f.stem] = data
        except (ValueError, OSError) as err:
            notes.append(f"eval/{f.name}: unreadable ({err})")
    if not evals:
        missing.append("eval/*.json")
    name = _config_value(config, "name", "run_name", "run.name") or root.resolve().name
    method = _config_value(config, "method", "objective.method", "loss.method", "train.method", "algorithm.name")
    method = method or (samples[0].method if samples and samples[0].method else "unknown")
    return RunData(root, name, method, config, [merged[s] for s in sorted(merged)], samples, evals, missing, notes)


# ---------------------------------------------------------------- HTML
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "run"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def _missing(text: str) -> str:
    return f'<p class="missing">Not available: {_e(text)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:auto;
padding:1em 2em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:2em;
border-bottom:1px solid #eee}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}.missing{color:#a33;font-style:italic}
.note{color:#666;font-size:.9em}.tok{border-radius:2px}.rollout{border:1px solid #ddd;border-radius:6px;
padding:.6em;margin:1em 0}.rollout .text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.88em;line-height:1.6}.meta{color:#555;font-size:.9em}.more{color:#888}nav a{margin-right:1em}
pre{white-space:pre-wrap}.small{color:#666;font-size:.85em}"""


class _Figures:
    """Saves each figure as PNG under ``out_dir`` and returns the <figure> tag that inlines it."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.written = out_dir, []

    def add(self, fig, name: str, caption: str) -> str:
        from sead.plots import to_png

        data = to_png(fig)
        path = self.out_dir / f"{name}.png"
        path.write_bytes(data)
        self.written.append(path)
        return (f'<figure id="fig-{_e(name)}"><img alt="{_e(caption)}" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}"><figcaption>{_e(caption)}</figcaption></figure>')


def _resolve_out(runs: list[Path], out: str | Path | None) -> Path:
    if out is None:
        return (runs[0] / "report" if len(runs) == 1 else runs[0].resolve().parent / "report") / "report.html"
    out = Path(out)
    return out if out.suffix.lower() in (".html", ".htm") else out / "report.html"


def build_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, *, max_rollouts: int = 3,
                 max_tokens: int = 1500, demo: dict | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` and one PNG per figure next to it; return the HTML path.

    ``out``: a directory (HTML at ``out/report.html``) or an ``.html`` file; default ``RUN/report/``
    for one run, ``<parent of the first run>/report/`` for several. Rollouts: the first
    ``max_rollouts`` of the latest logged step of each run, at most ``max_tokens`` tokens each.
    ``demo``: the results of ``sead demo`` (``results.json``), shown first as the comparison table."""
    if not run_dirs:
        raise SeadError("no run directory given; pass one or more folders holding metrics.jsonl")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise SeadError("`sead report` needs matplotlib; install it with pip install 'sead[demo]'")
    from sead import plots

    runs = [load_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    for r in runs:  # the config's name is often the default one: tell the runs apart by their folder
        if names.count(r.name) > 1:
            r.name = f"{r.name} [{r.path.resolve().name}]"
    html_path = _resolve_out([Path(p) for p in run_dirs], out)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    figs, taken = _Figures(html_path.parent), set()
    parts = {sid: [] for sid, _ in SECTIONS}
    parts["result"].append(_result_section(demo))
    parts["overview"].append(_overview(runs))
    parts["rollouts"].append(plots.rollout_legend())
    parts["training"].append(_overlay(runs, figs))
    for r in runs:
        slug, head = _slug(r.name, taken), f"<h3>{_e(r.name)} <span class=small>({_e(r.method)})</span></h3>"
        fig = plots.training_curves(r)
        parts["training"].append(head + (figs.add(fig, f"training_{slug}", f"{r.name}: training curves")
                                         if fig else _missing(f"{r.name} has no metrics.jsonl rows")))
        tok = plots.pooled_tokens(r.samples)
        parts["zones"].append(head + _zone_section(r, slug, tok, figs))
        if not tok["fkl"]:
            parts["tokens"].append(head + _missing(f"{r.name} has no samples.jsonl (per-token values)"))
        else:
            jac = plots.top_fraction_jaccard(tok["teacher_entropy"], tok["student_entropy"], 0.2)
            fig = plots.token_figure(r, tok, jac)
            parts["tokens"].append(
                head + figs.add(fig, f"tokens_{slug}", f"{r.name}: sorted per-token forward KL and entropy scatter")
                + f'<p id="jaccard-{slug}"><b>Jaccard overlap of the top-20% teacher-entropy and top-20% '
                f"student-entropy tokens: {_pct(jac)}%</b> over {len(tok['fkl'])} logged tokens "
                f"(paper: {_pct(PAPER_JACCARD)}%).</p>")
        latest = r.latest_samples()[:max_rollouts]
        parts["rollouts"].append(head + (
            f'<p class="note">Latest logged step ({latest[0].step}).</p>'
            + "".join(plots.render_rollout(s, max_tokens) for s in latest)
            if latest else _missing(f"{r.name} has no samples.jsonl")))
    parts["entropy"].append(_entropy_section(runs, figs))
    parts["eval"].append(_eval_table(runs))
    toc = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{"".join(parts[sid])}</section>' for sid, title in SECTIONS)
    title = "sead report: " + (", ".join(r.name for r in runs) if len(runs) <= 3 else
                               f"{len(runs)} runs of {', '.join(dict.fromkeys(r.method for r in runs))}")
    html_path.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
                         f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1><nav>{toc}</nav>{body}"
                         f"</body></html>\n", encoding="utf-8")
    return html_path


def _result_section(demo: dict | None) -> str:
    """The demo's comparison table (seed means, intervals, churn); plain runs point to the eval section."""
    if demo is None:
        return '<p class="note">Per-run evaluation files are listed under <a href="#eval">Evaluation</a>.</p>'
    from sead.demo_summary import caption, summary_rows, verdict_lines

    methods = list(demo["after"])
    header, rows = summary_rows(demo, methods)
    return (_table(header, [[_e(c) for c in row] for row in rows], "eval")
            + f'<p class="note">{_e(caption(demo))}</p>'
            + "".join(f"<p>{_e(line)}</p>" for line in verdict_lines(demo, methods)))


def _overlay(runs: list[RunData], figs: _Figures) -> str:
    from sead.comparison_plots import method_overlay, overlay_caption

    fig = method_overlay(runs)
    return "" if fig is None else figs.add(fig, "methods_overlay", overlay_caption(runs)) + "<h3>Each run</h3>"


def _overview(runs: list[RunData]) -> str:
    rows = [[_e(r.name), _e(r.method), f'<span class="small">{_e(r.path)}</span>',
             str(r.metrics[-1]["step"]) if r.metrics else "–", str(len(r.samples)),
             ", ".join(_e(k) for k in r.evals) or "–", _e("; ".join([f"missing {m}" for m in r.missing] + r.notes))]
            for r in runs]
    out = _table(["run", "method", "path", "last step", "samples", "eval files", "notes"], rows)
    for r in runs:
        if r.config:
            import yaml

            out += (f"<details><summary>config.yaml of {_e(r.name)}</summary>"
                    f"<pre>{_e(yaml.safe_dump(r.config, sort_keys=False))}</pre></details>")
    return out


def _zone_section(r: RunData, slug: str, tok: dict[str, list], figs: _Figures) -> str:
    from sead import plots

    if not r.has_zones:
        return _missing(f"{r.name} ({r.method}) has no token zones (no zones/frac_* metrics, samples log zone -1)")
    shares = plots.zone_fair_share(tok["fkl"], tok["zone"])
    fig = plots.zone_figure(r, shares, plots.fair_share_from_metrics(r))
    body = figs.add(fig, f"zones_{slug}", f"{r.name}: zone fractions and loss concentration (forward KL share "
                    "divided by token share; 1 = fair share)")
    if not shares:
        return body + _missing(f"{r.name} has no samples with zones for the per-zone share table")
    steps = sorted({s.step for s in r.samples})
    rows = [[ZONE_NAMES[z], str(s.tokens), _pct(s.token_share), _pct(s.loss_share),
             f"{s.ratio:.2f}×" if math.isfinite(s.ratio) else "–", f"{PAPER_FAIR_SHARE[z]}×"] for z, s in shares.items()]
    return (body + _table(["zone", "tokens", "token share %", "forward-KL share %", "× fair share", "paper"], rows)
            + f'<p class="note">From {len(r.samples)} logged rollouts (steps {steps[0]}–{steps[-1]}), per-token '
            f"<code>fkl</code> and <code>zone</code> of samples.jsonl. B+C carry "
            f"{_pct(shares[1].loss_share + shares[2].loss_share)}% of the forward KL (paper: about 90%).</p>")


def _entropy_section(runs: list[RunData], figs: _Figures) -> str:
    from sead import plots

    fig = plots.entropy_collapse(runs)
    if fig is None:
        return _missing("no run logged entropy/student_mean")
    rows = []
    for r in runs:
        _, v = r.series("entropy/student_mean")
        if v:
            w = max(1, len(v) // 10)
            a, b = sum(v[:w]) / w, sum(v[-w:]) / w
            rows.append([_e(r.name), _e(r.method), f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"])
    return (figs.add(fig, "entropy_student", "Mean student entropy over training, all runs")
            + _table(["run", "method", "start", "end", "change"], rows)
            + '<p class="note">Start/end: mean over the first/last 10% of logged steps. '
            "Paper: OPD collapses 0.39 → 0.31, SEAD holds.</p>")


def _eval_table(runs: list[RunData]) -> str:
    rows_in = [(r, label, data) for r in runs for label, data in r.evals.items()]
    if not rows_in:
        return _missing("no run has eval/*.json")
    benches = sorted({b for _, _, d in rows_in for b in d["benchmarks"]})
    rows = []
    for r, label, data in rows_in:
        cells = [_e(r.name), _e(label), _e(data.get("model", ""))]
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
            extra = (f"avg@k {_pct(m.get('avg@k'))}" if isinstance(m.get("avg@k"), (int, float)) else "") + (
                f" · pass@{kmax} {_pct(pk[kmax])}" if kmax and isinstance(pk[kmax], (int, float)) else "")
            cells.append(f'{_pct(v) if isinstance(v, (int, float)) else "–"}'
                         f'<br><span class="small">{_e(extra)} (n={_e(m.get("n", "?"))}, k={_e(m.get("k", "?"))})</span>')
        avg = (data.get("average") or {}).get("pass@1")
        avg = avg if isinstance(avg, (int, float)) else (sum(p1) / len(p1) if p1 else None)
        rows.append(cells + [f"<b>{_pct(avg)}</b>"])
    return (_table(["run", "file", "model"] + [_e(b) for b in benches] + ["average"], rows, "eval")
            + '<p class="note">pass@1 in %; small print: avg@k and the largest pass@k logged, with n problems and '
            "k samples. One row per eval/*.json file of each run.</p>")


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (metrics.jsonl, samples.jsonl, eval/)")
    parser.add_argument("--out", default=None, help="output directory or .html file (default: RUN/report/ for one "
                        "run, <parent of the first run>/report/ for several)")
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
