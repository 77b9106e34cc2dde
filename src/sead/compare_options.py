"""What ``sead compare`` accepts: its ablations, its per-problem metrics, and `CompareOptions`,
the validated settings of one comparison (everything but the base config and its overrides).

Light on purpose (no torch, no config): ``sead --help`` builds the compare parser from these
names, and a bad option fails here before any model library is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from sead.errors import ConfigError

__all__ = ["ABLATIONS", "METRICS", "CompareOptions", "parse_seeds"]

ABLATIONS = ("tac",)  # tac: the 8 combinations of sead's T (zones), A (anneal), C (curriculum)
METRICS = ("pass@1", "avg@k")  # per-problem scores (`sead.compare_tables.problem_scores`)
_SEED_RANGE = 2**32  # train.seed's range (`sead.config`): checked here so a bad seed fails before torch loads
_SEEDS_EXAMPLE = "e.g. --seeds 0,1,2, or leave --seeds out for one run with the config's train.seed"


def parse_seeds(text: str | None) -> list[int] | None:
    """The ``--seeds`` text as integers (None when the option is absent); `CompareOptions` checks the rest."""
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not a comma-separated list of integers; {_SEEDS_EXAMPLE}") from None


@dataclass(frozen=True)
class CompareOptions:
    """The settings of one comparison; the defaults are the command's defaults.

    ``methods``/``ablation`` choose the variants (`sead.compare_plan`), ``out`` is the output
    directory, ``only``/``tabulate_only`` split the work over several commands, ``seeds`` trains
    each variant once per training seed (None: once, with the config's ``train.seed``), and
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
    seeds: Sequence[int] | None = None  # training seeds; stored as a tuple of ints

    def __post_init__(self) -> None:
        if self.seeds is not None:
            object.__setattr__(self, "seeds", _checked_seeds(self.seeds))
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


def _checked_seeds(seeds) -> tuple[int, ...]:
    """Training seeds as a tuple, or a one-line error: integers in train.seed's range, each once, at least one."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ConfigError(
            f"--seeds must be a list of integers, got {seeds!r}; {_SEEDS_EXAMPLE} (seeds=[0, 1, 2] in Python)"
        )
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, Integral):
            raise ConfigError(f"--seeds: {s!r} is not an integer; {_SEEDS_EXAMPLE}")
        if not 0 <= s < _SEED_RANGE:
            raise ConfigError(
                f"--seeds: {s} is out of range; training seeds are integers in [0, 2**32), {_SEEDS_EXAMPLE}"
            )
    if not seeds:
        raise ConfigError(f"--seeds is empty; name at least one training seed, {_SEEDS_EXAMPLE}")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds names {repeated[0]} twice; list each seed once, e.g. --seeds 0,1,2")
    return tuple(int(s) for s in seeds)
