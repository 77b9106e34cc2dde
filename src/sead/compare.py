"""``sead compare``: train several methods on one budget, evaluate them, tabulate with intervals.

Every variant starts from the same base config (seed, data, curriculum inputs, step budget,
evaluation sets); a variant only changes ``objective.*``::

    sead compare --config base.yaml --methods opd,eopd,sead --ablation tac --out runs/cmp

Layout of ``OUT`` (default ``runs/compare``):

- ``runs/<variant>/``: a normal trainer run directory (``sead report OUT/runs/*`` draws them),
  with ``eval/final.json`` and ``eval/final.samples.jsonl`` for its final model;
- ``base/eval/base.json`` (+ ``.samples.jsonl``): the initial student, evaluated once;
- ``comparison.md`` and ``comparison.json``: per benchmark and average, the score of every
  variant with a 95% percentile-bootstrap interval over problems, and the paired difference to
  the reference (``opd`` when compared, else the first method) with its interval (`sead.stats`).

Variants: a method name gives ``objective.method=<name>``; baselines (every method but ``sead``)
run with ``objective.curriculum=false``, ``sead`` takes the base config's T/A/C switches
(``objective.zones``, ``objective.anneal``, ``objective.curriculum``). ``--ablation tac``
replaces ``sead`` by the 8 combinations ``sead-none``, ``sead-T``, ..., ``sead-T-A-C``.

Resumable: a variant with ``final/`` and an eval JSON made with the current eval settings is
neither retrained nor re-evaluated; an unfinished one resumes from its latest checkpoint with
the same resolved config (``train.resume=true``). A variant whose saved config differs from the
one resolved now (in anything that changes training) is an error, never silently mixed.

Several machines: ``--only VARIANT`` runs one variant (or ``base``), and ``--tabulate-only``
gathers the tables once all are done (docs/compare.md).

This module is the command; variants are planned, trained and evaluated in `sead.compare_variants`
and tabulated in `sead.compare_tables`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sead.compare_tables import problem_scores, tabulate
# run_compare calls train_variant / evaluate_row through these names: patch them on sead.compare.
from sead.compare_variants import (
    ABLATIONS,
    Variant,
    _check_saved_config,
    _describe,
    _eval_fingerprint,
    _is_main,
    _Row,
    _say,
    _state,
    evaluate_row,
    plan_variants,
    resolve_variants,
    train_variant,
)
from sead.errors import ConfigError

__all__ = [
    "Variant",
    "plan_variants",
    "resolve_variants",
    "problem_scores",
    "tabulate",
    "run_compare",
    "add_compare_arguments",
    "compare_main",
]

BASE = "base"


def _split(values: Sequence[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def run_compare(
    config: str | None,
    overrides: Sequence[str] = (),
    methods: Sequence[str] = ("opd", "sead"),
    ablation: str | None = None,
    out: str | Path = "runs/compare",
    only: Sequence[str] = (),
    tabulate_only: bool = False,
    reference: str | None = None,
    metric: str = "pass@1",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict | None:
    """Train, evaluate and tabulate (see the module doc); returns the comparison JSON, or None
    when ``only`` restricted the run to some variants (tables come with ``tabulate_only``)."""
    from sead.config import load_config
    from sead.evaluate import load_benchmarks

    if only and tabulate_only:
        raise ConfigError("--only and --tabulate-only exclude each other; run --only per variant, then --tabulate-only")
    if metric not in ("pass@1", "avg@k"):
        raise ConfigError(f"--metric {metric!r} is unknown; use pass@1 or avg@k")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise ConfigError(f"--resamples must be an integer >= 100, got {n_resamples!r}; the default is 2000")
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {confidence!r}; e.g. 0.95")
    base_cfg = load_config(config, list(overrides))
    variants = plan_variants(list(methods), ablation)
    out = Path(out)
    cfgs = resolve_variants(base_cfg, variants, out)
    names = [BASE] + [v.name for v in variants]
    if reference is None:
        reference = "opd" if "opd" in names else variants[0].name
    elif reference not in names:
        raise ConfigError(f"--reference {reference!r} is not a compared variant; use one of {', '.join(names)}")
    for name in only:
        if name not in names:
            raise ConfigError(f"--only {name!r} is not a variant of this comparison; use one of {', '.join(names)}")

    student = {"student": base_cfg.model.student, "tokenizer": base_cfg.model.tokenizer,
               "gguf_file": base_cfg.model.gguf_file, "dtype": base_cfg.model.dtype}
    rows = [_Row(BASE, None, "initial student", base_cfg, None, out / BASE / "eval" / f"{BASE}.json",
                 _eval_fingerprint(base_cfg, student))]
    for v in variants:
        cfg = cfgs[v.name]
        run_dir = Path(cfg.train.output_dir)
        rows.append(_Row(v.name, v.method, _describe(cfg), cfg, run_dir, run_dir / "eval" / "final.json",
                         _eval_fingerprint(cfg)))
    selected = [r for r in rows if not only or r.name in only]
    for r in selected:  # a changed config fails here, before any hour of training is spent or tabulated
        if r.run_dir is not None:
            _check_saved_config(r)

    if not tabulate_only:
        from sead.progress import quiet_libraries

        quiet_libraries()
        benchmarks = None
        for i, r in enumerate(selected, 1):
            state = r.state()
            tag = f"[{i}/{len(selected)}] {r.name}"
            if state == "done":
                _say(f"{tag}: trained and evaluated already, skipped")
                continue
            if not r.trained():
                _say(f"{tag}: {r.description}")
                train_variant(r)
            if _is_main():
                benchmarks = benchmarks if benchmarks is not None else load_benchmarks(base_cfg.eval)
                if state == "stale":
                    _say(f"{tag}: eval settings changed since its evaluation; evaluating again")
                evaluate_row(r, benchmarks, progress=base_cfg.logging.progress)
            _state().wait_for_everyone()
        if only:
            _say(f"finished {', '.join(r.name for r in selected)}; when every variant is done, gather the tables "
                 "with the same command and --tabulate-only (without --only)")
            return None
    result = None
    if _is_main():
        result = tabulate(rows, out, reference, metric, n_resamples, confidence, seed)
        print((out / "comparison.md").read_text(encoding="utf-8"))
        print(f"compare: tables in {out / 'comparison.md'} and {out / 'comparison.json'}; runs in {out / 'runs'}")
    _state().wait_for_everyone()
    return result


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="base YAML config: seed, data, budget, eval.data shared by every variant")
    parser.add_argument("--methods", default="opd,sead",
                        help="comma-separated methods, e.g. opd,eopd,sead,grpo,opsd (default opd,sead)")
    parser.add_argument("--ablation", choices=ABLATIONS, default=None,
                        help="tac: the 8 combinations of sead's T (zones), A (anneal), C (curriculum)")
    parser.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only these variants (comma-separated or repeated; 'base' = the initial student)")
    parser.add_argument("--tabulate-only", action="store_true",
                        help="train and evaluate nothing; write the tables from what OUT holds")
    parser.add_argument("--reference", default=None,
                        help="variant the paired differences are taken to (default opd, else the first method)")
    parser.add_argument("--metric", choices=("pass@1", "avg@k"), default="pass@1",
                        help="per-problem score: pass@1 (greedy when eval.greedy, else mean of k samples) or avg@k")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--stats-seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="applied to the base config, e.g. train.steps=200 eval.data=[math=math.jsonl]")
    return parser


def compare_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """CLI entry: ``args`` is a Namespace from :func:`add_compare_arguments` or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = add_compare_arguments(argparse.ArgumentParser(prog="sead compare"))
        args = parser.parse_args(list(args) if args is not None else None)
    run_compare(
        args.config, args.overrides, _split([args.methods]), args.ablation, args.out, _split(args.only),
        args.tabulate_only, args.reference, args.metric, args.resamples, args.confidence, args.stats_seed,
    )
    return 0
