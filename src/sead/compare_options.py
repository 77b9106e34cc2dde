"""What ``sead compare`` accepts: its ablations, its per-problem metrics, and `CompareOptions`,
the validated settings of one comparison (everything but the base config and its overrides).

Light on purpose (no torch, no config): ``sead --help`` builds the compare parser from these
names, and a bad option fails here before any model library is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sead.errors import ConfigError

__all__ = ["ABLATIONS", "METRICS", "CompareOptions"]

ABLATIONS = ("tac",)  # tac: the 8 combinations of sead's T (zones), A (anneal), C (curriculum)
METRICS = ("pass@1", "avg@k")  # per-problem scores (`sead.compare_tables.problem_scores`)


@dataclass(frozen=True)
class CompareOptions:
    """The settings of one comparison; the defaults are the command's defaults.

    ``methods``/``ablation`` choose the variants (`sead.compare_plan`), ``out`` is the output
    directory, ``only``/``tabulate_only`` split the work over several commands, and
    ``reference``, ``metric``, ``n_resamples``, ``confidence``, ``seed`` shape the tables.
    """

    methods: Sequence[str] = ("opd", "sead")
    ablation: str | None = None
    out: str | Path = "runs/compare"
    only: Sequence[str] = ()
    tabulate_only: bool = False
    reference: str | None = None  # None: opd when compared, else the first method
    metric: str = "pass@1"
    n_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap

    def __post_init__(self) -> None:
        if self.only and self.tabulate_only:
            raise ConfigError(
                "--only and --tabulate-only exclude each other; run --only per variant, then --tabulate-only"
            )
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r} is unknown; use {' or '.join(METRICS)}")
        if not isinstance(self.n_resamples, int) or self.n_resamples < 100:
            raise ConfigError(f"--resamples must be an integer >= 100, got {self.n_resamples!r}; the default is 2000")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"--confidence must be in (0, 1), got {self.confidence!r}; e.g. 0.95")
