"""The tables of ``sead compare``: per-problem scores of each evaluated row, bootstrap intervals
(`sead.stats`), and ``comparison.json`` + ``comparison.md`` in the output directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sead.compare_options import METRICS
from sead.compare_rows import Row
from sead.errors import ConfigError, DataError
from sead.jsonio import atomic_write_json, atomic_write_text, read_jsonl
from sead.stats import compare_scores

__all__ = ["problem_scores", "tabulate", "comparison_markdown"]

_SAMPLE_FIELDS = "benchmark, id, mode, correct"


def _not_a_record(where: str, problem: str) -> None:
    raise DataError(
        f"{where} {problem}, not an eval sample record ({_SAMPLE_FIELDS}); re-evaluate by deleting its eval JSON"
    )


def problem_scores(samples_path: str | Path, metric: str = "pass@1") -> dict[str, dict[str, float]]:
    """Per-problem scores from an eval samples file: ``{benchmark: {problem id: score}}``.

    ``pass@1``: greedy correctness when the file has greedy records, else the mean over the k
    samples (the eval JSON's pass@1); ``avg@k``: the mean over the k samples.
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r} is unknown; use {' or '.join(METRICS)}")
    path = Path(samples_path)
    try:
        records = read_jsonl(path, on_bad_line=_not_a_record)
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}); re-evaluate by deleting its eval JSON") from None
    by_mode: dict[str, dict[str, dict[str, list[float]]]] = {}
    for number, rec in enumerate(records, 1):
        try:
            bench, pid, mode, ok = rec["benchmark"], str(rec["id"]), rec["mode"], rec["correct"]
        except KeyError:
            raise DataError(
                f"{path} record {number} is not an eval sample record ({_SAMPLE_FIELDS}); "
                "re-evaluate by deleting its eval JSON"
            ) from None
        by_mode.setdefault(bench, {}).setdefault(mode, {}).setdefault(pid, []).append(float(bool(ok)))
    out: dict[str, dict[str, float]] = {}
    for bench, modes in by_mode.items():
        mode = "greedy" if metric == "pass@1" and "greedy" in modes else "sample"
        if mode not in modes:
            raise DataError(
                f"{path}: benchmark {bench!r} has no sampled responses for avg@k; set eval.k >= 1 "
                "or use --metric pass@1"
            )
        out[bench] = {pid: sum(v) / len(v) for pid, v in modes[mode].items()}
    if not out:
        raise DataError(f"{path} holds no eval records; re-evaluate by deleting its eval JSON")
    return out


def _fmt(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _cell(iv: dict | None, signed: bool = False) -> str:
    if iv is None:
        return "–"
    star = " *" if signed and not iv["low"] <= 0 <= iv["high"] else ""
    return f"{_fmt(iv['mean'], signed)} [{_fmt(iv['low'], signed)}, {_fmt(iv['high'], signed)}]{star}"


def tabulate(
    rows: Sequence[Row],
    out_dir: str | Path,
    reference: str,
    metric: str = "pass@1",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Write ``comparison.json`` and ``comparison.md`` for the rows that are done; returns the JSON."""
    out_dir = Path(out_dir)
    states = {r.name: r.state() for r in rows}
    done = [r for r in rows if states[r.name] == "done"]
    if not done:
        raise DataError(
            f"no variant of {out_dir} is trained and evaluated yet; run sead compare without "
            "--tabulate-only (or with --only VARIANT for each variant)"
        )
    scores = {r.name: problem_scores(r.samples, metric) for r in done}
    first = done[0]
    benches = list(scores[first.name])
    ids = {b: list(scores[first.name][b]) for b in benches}
    for r in done[1:]:
        for b in benches:
            if b not in scores[r.name] or set(scores[r.name][b]) != set(ids[b]):
                raise DataError(
                    f"{r.name} and {first.name} were evaluated on different problems of {b!r}; delete "
                    f"{r.eval_json} and run sead compare again to re-evaluate it"
                )
        if set(scores[r.name]) - set(benches):
            extra = sorted(set(scores[r.name]) - set(benches))[0]
            raise DataError(
                f"{r.name} has benchmark {extra!r} that {first.name} lacks; delete {r.eval_json} to re-evaluate it"
            )
    arrays = {b: np.array([[scores[r.name][b][i] for i in ids[b]] for r in done]) for b in benches}
    names = [r.name for r in done]
    ref_index = names.index(reference) if reference in names else None
    stats = compare_scores(arrays, ref_index, n_resamples, confidence, seed)

    table_rows = []
    for r in rows:
        entry: dict[str, Any] = {
            "variant": r.name,
            "method": r.method,
            "description": r.description,
            "status": states[r.name],
            "run_dir": str(r.run_dir) if r.run_dir is not None else None,
            "eval": str(r.eval_json),
            "scores": None,
            "diff": None,
        }
        if r.name in names:
            i = names.index(r.name)
            entry["scores"] = {b: stats[b]["score"][i].to_dict() for b in benches + ["average"]}
            if ref_index is not None and i != ref_index:
                entry["diff"] = {b: stats[b]["diff"][i].to_dict() for b in benches + ["average"]}
        table_rows.append(entry)
    result = {
        "metric": metric,
        "confidence": confidence,
        "resamples": n_resamples,
        "seed": seed,
        "reference": reference if ref_index is not None else None,
        "benchmarks": {b: {"n": len(ids[b])} for b in benches},
        "eval": {"k": first.cfg.eval.k, "greedy": first.cfg.eval.greedy},
        "train": {
            "steps": first.cfg.train.steps,
            "seed": first.cfg.train.seed,
            "batch_size": first.cfg.train.batch_size,
        },
        "rows": table_rows,
    }
    atomic_write_json(out_dir / "comparison.json", result)
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(result))
    return result


def comparison_markdown(result: dict) -> str:
    """``comparison.md`` from the ``comparison.json`` dict."""
    benches = list(result["benchmarks"])
    cols = [f"{b} (n={result['benchmarks'][b]['n']})" for b in benches] + ["average"]
    level = f"{100 * result['confidence']:g}%"
    what = (
        ("greedy pass@1" if result["eval"]["greedy"] else f"mean over k={result['eval']['k']} samples")
        if result["metric"] == "pass@1"
        else f"avg@k (mean over k={result['eval']['k']} samples)"
    )
    tr = result["train"]
    lines = [
        "# Comparison",
        "",
        f"{what}, in %. Brackets: {level} percentile-bootstrap interval over problems ({result['resamples']} "
        f"resamples, seed {result['seed']}); average = mean of the benchmark scores, benchmarks resampled "
        f"independently. Every variant: {tr['steps']} steps of {tr['batch_size']} prompts, train.seed={tr['seed']}.",
        "",
        "## Scores",
        "",
        "| variant | what | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for row in result["rows"]:
        what_row = row["description"]
        if row["scores"] is None:
            lines.append(f"| {row['variant']} | {what_row} | " + " | ".join([row["status"]] * len(cols)) + " |")
        else:
            lines.append(
                f"| {row['variant']} | {what_row} | "
                + " | ".join(_cell(row["scores"][b]) for b in benches + ["average"])
                + " |"
            )
    ref = result["reference"]
    lines += [""]
    if ref is None:
        lines += ["No paired differences: the reference variant is not trained and evaluated yet.", ""]
    else:
        lines += [
            f"## Paired difference to {ref} (percentage points)",
            "",
            f"Each variant minus {ref} on the same resampled problems. `*`: the interval excludes 0.",
            "",
            "| variant | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for row in result["rows"]:
            if row["diff"] is not None:
                lines.append(
                    f"| {row['variant']} | "
                    + " | ".join(_cell(row["diff"][b], True) for b in benches + ["average"])
                    + " |"
                )
        lines.append("")
    missing = [r["variant"] for r in result["rows"] if r["scores"] is None]
    if missing:
        lines += [f"Not in the tables yet ({', '.join(missing)}): run `sead compare` again to finish them.", ""]
    lines += [
        "The intervals cover only the sampling of evaluation problems: each variant was trained once, so "
        "run-to-run training variance is not included. With few problems, read overlapping intervals as "
        "no measured difference.",
        "",
    ]
    return "\n".join(lines)
