"""The ``sead`` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import sys

from sead.errors import SeadError

SUBCOMMANDS = {
    "demo": "run a real distillation on the embedded default (CPU, minutes) and write a report",
    "train": "on-policy distillation with a YAML config and key=value overrides",
    "difficulty": "estimate per-prompt difficulty from K student rollouts",
    "eval": "evaluate a model: greedy pass@1, avg@k, pass@k",
    "report": "build an HTML report from one or more run directories",
    "compare": "train and evaluate several methods on the same budget and tabulate them",
}


def _not_yet(name: str):
    def run(args: argparse.Namespace) -> int:
        raise SeadError(f"`sead {name}` is not available in this version yet; see README.md for what is")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sead",
        description="On-policy distillation of language models with SEAD and its baselines.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=_not_yet(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
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
    except KeyboardInterrupt:
        print(f"sead {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
