"""The ``sead`` command line: one subcommand per job, each a thin layer over the library.

Each job's module is imported only when that job runs (or its ``--help`` is asked for), so
``sead --help`` and a mistyped command answer at once instead of loading torch first.
"""

from __future__ import annotations

import argparse
import sys

from sead.errors import SeadError
from sead.progress import quiet_libraries

SUBCOMMANDS = {
    "demo": "run a real distillation on the embedded default (CPU, minutes) and write a report",
    "train": "on-policy distillation with a YAML config and key=value overrides",
    "difficulty": "estimate per-prompt difficulty from K student rollouts",
    "eval": "evaluate a model: greedy pass@1, avg@k, pass@k",
    "report": "build an HTML report from one or more run directories",
    "compare": "train and evaluate several methods on the same budget and tabulate them",
    "configs": "list the shipped recipes (--config NAME): name, method, what it trains",
    "config": "config tools: `sead config show --config X [key=value ...]` prints the resolved config with help",
}


def _train(args: argparse.Namespace) -> int:
    from sead.trainer import train_main

    quiet_libraries()
    train_main(args.config, args.overrides)
    return 0


def _difficulty(args: argparse.Namespace) -> int:
    from sead.config import load_config
    from sead.difficulty import difficulty_from_config

    quiet_libraries()
    cfg = load_config(args.config, args.overrides)
    difficulty_from_config(cfg, k=args.k, out_path=args.out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sead.config import load_config
    from sead.evaluate import eval_main

    quiet_libraries()
    cfg = load_config(args.config, args.overrides)
    eval_main(
        args.model,
        data=args.data or None,
        out_dir=args.out,
        cfg=cfg.eval,
        verifier_cfg=cfg.verifier,
        tag=args.tag,
        dtype=cfg.model.dtype,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sead.demo import demo_main

    quiet_libraries()
    return demo_main(args)


def _configs(args: argparse.Namespace) -> int:
    from sead.config import load_config
    from sead.config_files import real_recipe_names, recipe_description, recipe_dir, recipe_names, recipe_path

    names, real = recipe_names(), real_recipe_names()
    width = max(len(name) for name in ("recipe", *names, *real))

    def rows(group: list[str]) -> None:
        for name in group:
            method = load_config(name).objective.method
            print(f"{name.ljust(width)}  {method.ljust(6)}  {recipe_description(recipe_path(name))}")

    print(f"{'recipe'.ljust(width)}  method  description")
    rows(names)
    print("\nreal model pairs (hub models and data, GPUs; README 'Real models'):")
    rows(real)
    print(
        f"\nrun one: sead train --config NAME [key=value ...]; every key: sead config show --config NAME\n"
        f"files: {recipe_dir()} (each recipe is base.yaml plus its overlay; real/ has its own base.yaml)"
    )
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from sead.config import load_config
    from sead.config_files import commented_yaml, find_config

    cfg = load_config(args.config, args.overrides)
    where = str(find_config(args.config)) if args.config else "defaults"
    if args.overrides:
        where += f" with {' '.join(args.overrides)}"
    print(commented_yaml(cfg, f"resolved config: {where}\nkey: value  # help; loads back as a --config file"), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sead.report import report_main

    return report_main(args)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="a shipped recipe's name (sead configs lists them) or a YAML file; omitted: defaults + overrides",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. objective.method=eopd optim.lr=1e-6")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command`` gets its arguments (importing its module), the rest their help line."""
    parser = argparse.ArgumentParser(
        prog="sead",
        description="On-policy distillation of language models with SEAD and its baselines.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        if name == "train":
            _add_config_args(p)
            p.set_defaults(func=_train)
        elif name == "difficulty":
            _add_config_args(p)
            p.add_argument(
                "--k", type=int, default=None, help="student rollouts per prompt (default: curriculum.estimate_k)"
            )
            p.add_argument("--out", help="output JSONL (default: curriculum.difficulty_path)")
            p.set_defaults(func=_difficulty)
        elif name == "eval":
            p.add_argument("--model", required=True, help="model directory (e.g. RUN/final) or hub name")
            p.add_argument(
                "--data",
                action="append",
                default=[],
                metavar="[NAME=]PATH",
                help="benchmark file or dataset; repeat for several",
            )
            p.add_argument("--out", default=".", help="directory that receives eval/<tag>.json")
            p.add_argument("--tag", help="result name (default: the model folder's name)")
            _add_config_args(p)
            p.set_defaults(func=_eval)
        elif name == "demo":
            from sead.demo import add_demo_arguments

            add_demo_arguments(p)
            p.set_defaults(func=_demo)
        elif name == "compare":
            from sead.compare import add_compare_arguments, compare_main

            add_compare_arguments(p)
            p.set_defaults(func=compare_main)
        elif name == "configs":
            p.set_defaults(func=_configs)
        elif name == "config":
            tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
            show = tools.add_parser(
                "show",
                help="print the resolved config: every key, its value and its help",
                description="print the resolved config: every key, its value and its help",
            )
            _add_config_args(show)
            show.set_defaults(func=_config_show)
        elif name == "report":
            from sead.report import add_report_arguments

            add_report_arguments(p)
            p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.version:
        from sead import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SeadError as err:
        print(f"sead {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        detail = f": {err}" if str(err) else ""  # e.g. which checkpoint was saved and how to resume
        print(f"sead {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
