"""The tables of ``sead compare``: per-problem scores of each evaluated variant (the mean over its
seeds with ``--seeds``), bootstrap intervals (`sead.stats`), and ``comparison.json`` +
``comparison.md`` in the output directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sead.compare_options import METRICS
from sead.compare_rows import Row
from sead.errors import ConfigError, DataError
from sead.jsonio import atomic_write_json, atomic_write_text, read_jsonl
from sead.stats import compare_scores, mean_over_seeds

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


_PROGRESS = ("untrained", "missing", "stale", "done")  # how far a run got (`Row.state`), least first
_TO_FINISH = {
    "untrained": "is not trained ({run_dir} has no final/)",
    "missing": "is not evaluated ({eval_json} is missing or incomplete)",
    "stale": "was evaluated with other eval settings ({eval_json})",
}


def _key(r: Row) -> tuple[str, int | None]:
    return r.name, r.seed


def _variant_state(runs: Sequence[Row], states: dict) -> str:
    """``done`` when every seed's run is; a variant no seed has finished shows how far it got (as a
    single run does). Some seeds done and others not is an error: averaging fewer seeds than the
    other variants, or leaving out seeds that exist, would both misstate the comparison."""
    got = [states[_key(r)] for r in runs]
    if "done" in got and set(got) != {"done"}:
        r = next(r for r in runs if states[_key(r)] != "done")
        why = _TO_FINISH[states[_key(r)]].format(run_dir=r.run_dir, eval_json=r.eval_json)
        raise DataError(
            f"{r.label} {why}, while other seeds of {r.name} are done; run this comparison with --only {r.name} "
            "(same --config, --methods, --seeds, --out and overrides), then --tabulate-only again"
        )
    return min(got, key=_PROGRESS.index)


def _seed_means(problems: dict[str, dict[str, float]], ids: dict[str, list[str]]) -> dict[str, float]:
    """One run's score per benchmark (the mean over its problems) and their average, as the tables do."""
    means = {b: float(np.mean([problems[b][i] for i in ids[b]])) for b in ids}
    return {**means, "average": float(np.mean(list(means.values())))}


def tabulate(
    rows: Sequence[Row],
    out_dir: str | Path,
    reference: str,
    metric: str = "pass@1",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Write ``comparison.json`` and ``comparison.md`` for the variants that are done; returns the JSON.

    ``rows`` are runs (`sead.compare_rows.Row`); a variant trained with ``--seeds`` has one per
    seed, and its per-problem score is the mean over them (`sead.stats.mean_over_seeds`) before the
    bootstrap over problems; each seed's own scores come with it (``per_seed``)."""
    out_dir = Path(out_dir)
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.name, []).append(r)
    states = {_key(r): r.state() for r in rows}
    status = {name: _variant_state(runs, states) for name, runs in groups.items()}
    names = [name for name in groups if status[name] == "done"]
    if not names:
        raise DataError(
            f"no variant of {out_dir} is trained and evaluated yet; run sead compare without "
            "--tabulate-only (or with --only VARIANT for each variant)"
        )
    done = [r for name in names for r in groups[name]]
    scores = {_key(r): problem_scores(r.samples, metric) for r in done}
    first = done[0]
    benches = list(scores[_key(first)])
    ids = {b: list(scores[_key(first)][b]) for b in benches}
    for r in done[1:]:
        got = scores[_key(r)]
        for b in benches:
            if b not in got or set(got[b]) != set(ids[b]):
                raise DataError(
                    f"{r.label} and {first.label} were evaluated on different problems of {b!r}; delete "
                    f"{r.eval_json} and run sead compare again to re-evaluate it"
                )
        if set(got) - set(benches):
            extra = sorted(set(got) - set(benches))[0]
            raise DataError(
                f"{r.label} has benchmark {extra!r} that {first.label} lacks; delete {r.eval_json} to re-evaluate it"
            )
    arrays = {
        b: np.array([mean_over_seeds([scores[_key(r)][b] for r in groups[n]], ids[b]) for n in names]) for b in benches
    }
    ref_index = names.index(reference) if reference in names else None
    stats = compare_scores(arrays, ref_index, n_resamples, confidence, seed)
    seeds = next(([r.seed for r in runs] for runs in groups.values() if runs[0].seed is not None), None)

    table_rows = []
    for name, runs in groups.items():
        r = runs[0]
        entry: dict[str, Any] = {
            "variant": name,
            "method": r.method,
            "description": r.description,
            "status": status[name],
            "run_dir": str(r.run_dir) if r.run_dir is not None and r.seed is None else None,
            "eval": str(r.eval_json) if r.seed is None else None,  # with seeds: per seed, under per_seed
            "scores": None,
            "diff": None,
        }
        if name in names:
            i = names.index(name)
            entry["scores"] = {b: stats[b]["score"][i].to_dict() for b in benches + ["average"]}
            if ref_index is not None and i != ref_index:
                entry["diff"] = {b: stats[b]["diff"][i].to_dict() for b in benches + ["average"]}
        if seeds is not None:  # the base row is evaluated once: no seeds
            entry["per_seed"] = None if r.seed is None else [_seed_entry(x, states, scores, ids) for x in runs]
        table_rows.append(entry)
    train = {"steps": first.cfg.train.steps, "seed": first.cfg.train.seed, "batch_size": first.cfg.train.batch_size}
    if seeds is not None:
        train = {"steps": train["steps"], "seeds": seeds, "batch_size": train["batch_size"]}
    result = {
        "metric": metric,
        "confidence": confidence,
        "resamples": n_resamples,
        "seed": seed,
        "reference": reference if ref_index is not None else None,
        "benchmarks": {b: {"n": len(ids[b])} for b in benches},
        "eval": {"k": first.cfg.eval.k, "greedy": first.cfg.eval.greedy},
        "train": train,
        "rows": table_rows,
    }
    atomic_write_json(out_dir / "comparison.json", result)
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(result))
    return result


def _seed_entry(r: Row, states: dict, scores: dict, ids: dict[str, list[str]]) -> dict:
    """One seed of a variant in ``comparison.json``: where its run is, how far it got, its scores."""
    done = _key(r) in scores
    return {
        "seed": r.seed,
        "status": states[_key(r)],
        "run_dir": str(r.run_dir),
        "eval": str(r.eval_json),
        "scores": _seed_means(scores[_key(r)], ids) if done else None,
    }


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
    seeds = tr.get("seeds")  # None: one run per variant, with the config's train.seed
    n_seeds = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}" if seeds is not None else ""
    per_seed = [f"average, seed {' / '.join(map(str, seeds))}"] if seeds is not None else []
    trained = (
        f"train.seed={tr['seed']}."
        if seeds is None
        else f"trained once per seed, {n_seeds} ({', '.join(map(str, seeds))}: train.seed and curriculum.seed); "
        "a variant's per-problem score is the mean over its seeds, and the last column gives each seed's "
        "average score (the initial student is evaluated once)."
    )
    lines = [
        "# Comparison",
        "",
        f"{what}, in %. Brackets: {level} percentile-bootstrap interval over problems ({result['resamples']} "
        f"resamples, seed {result['seed']}); average = mean of the benchmark scores, benchmarks resampled "
        f"independently. Every variant: {tr['steps']} steps of {tr['batch_size']} prompts, {trained}",
        "",
        "## Scores" + (f" (mean of {n_seeds})" if seeds is not None else ""),
        "",
        "| variant | what | " + " | ".join(cols + per_seed) + " |",
        "|---|---|" + "---:|" * len(cols + per_seed),
    ]
    for row in result["rows"]:
        what_row = row["description"]
        if row["scores"] is None:
            lines.append(
                f"| {row['variant']} | {what_row} | " + " | ".join([row["status"]] * len(cols + per_seed)) + " |"
            )
        else:
            lines.append(
                f"| {row['variant']} | {what_row} | "
                + " | ".join([_cell(row["scores"][b]) for b in benches + ["average"]] + _per_seed_cell(row, seeds))
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
    if seeds is None:
        lines.append(
            "The intervals cover only the sampling of evaluation problems: each variant was trained once, so "
            "run-to-run training variance is not included. With few problems, read overlapping intervals as "
            "no measured difference."
        )
    else:
        lines.append(
            f"The intervals cover the sampling of evaluation problems: training noise is averaged over {n_seeds} "
            "per variant but not resampled (the per-seed column shows its size). With few problems or seeds, "
            "read overlapping intervals, or a difference within the seed-to-seed spread, as no measured difference."
        )
    return "\n".join(lines + [""])


def _per_seed_cell(row: dict, seeds: list | None) -> list[str]:
    """The per-seed column (empty without ``--seeds``): each seed's average score, ``81.0 / 81.5 / 83.0``."""
    if seeds is None:
        return []
    if row.get("per_seed") is None:
        return ["–"]  # the initial student, evaluated once
    return [" / ".join(_fmt(x["scores"]["average"]) for x in row["per_seed"])]
