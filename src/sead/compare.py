"""``sead compare``: train several methods on one budget, evaluate them, tabulate with intervals.

Every variant starts from the same base config (seed, data, curriculum inputs, step budget,
evaluation sets); a variant only changes ``objective.*``::

    sead compare --config base.yaml --methods opd,eopd,sead --ablation tac --out runs/cmp

``--seeds 0,1,2`` trains every variant once per training seed (``train.seed`` and
``curriculum.seed`` set to it, nothing else changed) and scores a variant per problem by the mean
over its seeds, the way ``sead demo`` does; without it each variant is trained once, with the
config's ``train.seed``.

Layout of ``OUT`` (default ``runs/compare``):

- ``runs/<variant>/`` (``runs/<variant>-s<seed>/`` with ``--seeds``): a normal trainer run
  directory (``sead report OUT/runs/*`` draws them), with ``eval/final.json`` and
  ``eval/final.samples.jsonl`` for its final model;
- ``base/eval/base.json`` (+ ``.samples.jsonl``): the initial student, evaluated once;
- ``comparison.md`` and ``comparison.json``: per benchmark and average, the score of every
  variant with a 95% percentile-bootstrap interval over problems, and the paired difference to
  the reference (``opd`` when compared, else the first method) with its interval (`sead.stats`);
  with ``--seeds``, also each seed's score.

Variants: a method name gives ``objective.method=<name>``; baselines (every method but ``sead``)
run with ``objective.curriculum=false``, ``sead`` takes the base config's T/A/C switches
(``objective.zones``, ``objective.anneal``, ``objective.curriculum``). ``--ablation tac``
replaces ``sead`` by the 8 combinations ``sead-none``, ``sead-T``, ..., ``sead-T-A-C``.

Resumable: a variant with ``final/`` and an eval JSON made with the current eval settings is
neither retrained nor re-evaluated; an unfinished one resumes from its latest checkpoint with
the same resolved config (``train.resume=true``). A variant whose saved config differs from the
one resolved now (in anything that changes training) is an error, never silently mixed.

Several machines: ``--only VARIANT`` runs one variant (or ``base``; every seed of it with
``--seeds``), and ``--tabulate-only`` gathers the tables once all are done (docs/compare.md).

This module is the command's face: `run_compare` (Python) and `compare_main` (CLI). The
options are `sead.compare_options`, the variants `sead.compare_plan`, the rows and their state
on disk `sead.compare_rows`, training and evaluation `sead.compare_run`, the tables
`sead.compare_tables`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sead.compare_options import ABLATIONS, METRICS, CompareOptions, parse_seeds

__all__ = ["run_compare", "add_compare_arguments", "compare_main"]

_DEFAULTS = CompareOptions()


def run_compare(config: str | None, overrides: Sequence[str] = (), **options) -> dict | None:
    """Train, evaluate and tabulate (see the module doc); ``options`` are `CompareOptions` fields
    (``methods``, ``ablation``, ``out``, ``only``, ``tabulate_only``, ``seeds``, ``reference``,
    ``metric``, ``n_resamples``, ``confidence``, ``seed``; ``seeds=[0, 1, 2]`` trains each variant
    once per training seed, ``seed`` is the bootstrap's). Returns the comparison JSON, or None when
    ``only`` restricted the run to some variants (tables come with ``tabulate_only``)."""
    checked = CompareOptions(**options)  # a bad option fails before torch is loaded
    # Imported on use: cli.py builds this command's parser on every `sead` call, and the runner
    # loads torch and the trainer (seconds), which only a comparison needs.
    from sead.compare_run import run_comparison

    return run_comparison(config, overrides, checked)


def _split(values: Sequence[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = _DEFAULTS
    parser.add_argument("--config", help="base YAML config: seed, data, budget, eval.data shared by every variant")
    parser.add_argument(
        "--methods",
        default=",".join(d.methods),
        help=f"comma-separated methods, e.g. opd,eopd,sead,grpo,opsd (default {','.join(d.methods)})",
    )
    parser.add_argument(
        "--ablation",
        choices=ABLATIONS,
        default=d.ablation,
        help="tac: the 8 combinations of sead's T (zones), A (anneal), C (curriculum)",
    )
    parser.add_argument("--out", default=str(d.out), help=f"output directory (default {d.out})")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="VARIANT",
        help="run only these variants (comma-separated or repeated; 'base' = the initial student; "
        "with --seeds, every seed of each)",
    )
    parser.add_argument(
        "--tabulate-only", action="store_true", help="train and evaluate nothing; write the tables from what OUT holds"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds, e.g. 0,1,2: every variant trained once per seed (train.seed, "
        "curriculum.seed) into OUT/runs/VARIANT-sSEED, scored by the mean over seeds (default: one run "
        "per variant with the config's train.seed)",
    )
    parser.add_argument(
        "--reference",
        default=d.reference,
        help="variant the paired differences are taken to (default opd, else the first method)",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default=d.metric,
        help="per-problem score: pass@1 (greedy when eval.greedy, else mean of k samples) or avg@k",
    )
    parser.add_argument(
        "--resamples", type=int, default=d.n_resamples, help=f"bootstrap resamples (default {d.n_resamples})"
    )
    parser.add_argument(
        "--confidence", type=float, default=d.confidence, help=f"interval level (default {d.confidence})"
    )
    parser.add_argument("--stats-seed", type=int, default=d.seed, help=f"bootstrap seed (default {d.seed})")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="applied to the base config, e.g. train.steps=200 eval.data=[math=math.jsonl]",
    )
    return parser


def compare_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """CLI entry: ``args`` is a Namespace from :func:`add_compare_arguments` or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = add_compare_arguments(argparse.ArgumentParser(prog="sead compare"))
        args = parser.parse_args(list(args) if args is not None else None)
    run_compare(
        args.config,
        args.overrides,
        methods=_split([args.methods]),
        ablation=args.ablation,
        out=args.out,
        only=_split(args.only),
        tabulate_only=args.tabulate_only,
        seeds=parse_seeds(args.seeds),
        reference=args.reference,
        metric=args.metric,
        n_resamples=args.resamples,
        confidence=args.confidence,
        seed=args.stats_seed,
    )
    return 0
