"""Percentile-bootstrap intervals over evaluation problems, and paired differences between models.

The unit of resampling is the problem: a benchmark of n problems is resampled n times with
replacement (multinomial counts), and a model's score on a resample is the weighted mean of its
per-problem scores (0/1 greedy correctness, or the mean over k samples). Several models scored on
the same problems share the same resamples, so a difference of two models is a *paired*
bootstrap (problem difficulty cancels out). Several benchmarks are resampled independently
(stratified) and their average is the unweighted mean of the benchmark means, like the eval JSON's
``average``.

Intervals describe only the sampling of evaluation problems. A model trained with several seeds
is scored per problem by the mean over its seeds (`mean_over_seeds`), which shrinks the training
noise in the point estimate but does not resample it; with one run per model it is not in the
intervals at all. All functions are pure and seeded: same inputs, same numbers.
Shapes: M models, N problems, K bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "bootstrap_weights",
    "percentile_interval",
    "resampled_means",
    "bootstrap_mean",
    "paired_difference",
    "compare_scores",
    "mean_over_seeds",
]

_CHUNK = 256  # resamples drawn per block, so memory stays at CHUNK x n whatever n_resamples is


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        return not self.low <= value <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.estimate, "low": self.low, "high": self.high}


def _check(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def bootstrap_weights(n: int, n_resamples: int, rng: np.random.Generator):
    """Yield blocks of resampling counts, shape (r, n), r <= 256, rows summing to n; ``n_resamples`` rows in all."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty set of problems")
    pvals = np.full(n, 1.0 / n)
    done = 0
    while done < n_resamples:
        r = min(_CHUNK, n_resamples - done)
        yield rng.multinomial(n, pvals, size=r).astype(np.float64)
        done += r


def percentile_interval(values_K: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap replicates."""
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(np.asarray(values_K, dtype=np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def resampled_means(scores_M_N: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of each row of ``scores_M_N`` on ``n_resamples`` joint resamples of its columns: (M, K)."""
    scores_M_N = np.atleast_2d(np.asarray(scores_M_N, dtype=np.float64))
    n = scores_M_N.shape[1]
    blocks = [scores_M_N @ w_R_N.T / n for w_R_N in bootstrap_weights(n, n_resamples, rng)]
    return np.concatenate(blocks, axis=1)


def bootstrap_mean(scores, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean of per-problem ``scores`` with its percentile-bootstrap interval."""
    _check(n_resamples, confidence)
    x_N = np.asarray(scores, dtype=np.float64).reshape(-1)
    reps_K = resampled_means(x_N[None], n_resamples, np.random.default_rng(seed))[0]
    return Interval(float(x_N.mean()), *percentile_interval(reps_K, confidence))


def paired_difference(a, b, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """mean(a) - mean(b) for two models scored on the same problems (resampled jointly)."""
    _check(n_resamples, confidence)
    a_N, b_N = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a_N.shape != b_N.shape:
        raise ValueError(f"paired scores need the same problems, got {a_N.size} and {b_N.size}")
    reps_K = resampled_means((a_N - b_N)[None], n_resamples, np.random.default_rng(seed))[0]
    return Interval(float(a_N.mean() - b_N.mean()), *percentile_interval(reps_K, confidence))


def compare_scores(
    scores: Mapping[str, np.ndarray],
    reference: int | None = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, list[Interval | None]]]:
    """Scores of M models on several benchmarks, with intervals and paired differences.

    ``scores`` maps a benchmark name to an (M, n_benchmark) array: row m holds model m's
    per-problem scores, columns are the same problems for every model. Benchmarks are resampled
    independently (in the mapping's order, from one generator seeded with ``seed``); ``average``
    is the mean of the benchmark means on each resample. Returns, for each benchmark and for
    ``"average"``: ``{"score": [Interval] * M, "diff": [Interval | None] * M}`` where ``diff[m]``
    is model m minus model ``reference`` (None for the reference itself, or everywhere when
    ``reference`` is None).
    """
    _check(n_resamples, confidence)
    if not scores:
        raise ValueError("no benchmarks to compare")
    arrays = {name: np.atleast_2d(np.asarray(s, dtype=np.float64)) for name, s in scores.items()}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"every benchmark needs the same models (rows), got row counts {sorted(sizes)}")
    m = sizes.pop()
    if reference is not None and not 0 <= reference < m:
        raise ValueError(f"reference index {reference} is out of range for {m} models")
    rng = np.random.default_rng(seed)
    points: dict[str, np.ndarray] = {}
    reps: dict[str, np.ndarray] = {}
    for name, s_M_N in arrays.items():
        if s_M_N.shape[1] < 1:
            raise ValueError(f"benchmark {name!r} has no problems")
        points[name] = s_M_N.mean(axis=1)
        reps[name] = resampled_means(s_M_N, n_resamples, rng)
    points["average"] = np.mean([points[n] for n in arrays], axis=0)
    reps["average"] = np.mean([reps[n] for n in arrays], axis=0)

    out: dict[str, dict[str, list[Interval | None]]] = {}
    for name in list(arrays) + ["average"]:
        p_M, r_M_K = points[name], reps[name]
        score = [Interval(float(p_M[i]), *percentile_interval(r_M_K[i], confidence)) for i in range(m)]
        diff: list[Interval | None] = [None] * m
        if reference is not None:
            for i in range(m):
                if i != reference:
                    d_K = r_M_K[i] - r_M_K[reference]
                    diff[i] = Interval(float(p_M[i] - p_M[reference]), *percentile_interval(d_K, confidence))
        out[name] = {"score": score, "diff": diff}
    return out


def mean_over_seeds(per_seed: Sequence[Mapping[str, float]], ids: Sequence[str]) -> np.ndarray:
    """Per-problem scores of one model trained once per seed: each problem's mean over the seeds, (N,).

    ``per_seed`` holds one ``{problem id: score}`` per seed; ``ids`` gives the problems and their
    order (every seed must score them all). Averaging within a problem keeps the problem the unit
    of the bootstrap (`compare_scores`), as ``sead demo`` and ``sead compare --seeds`` report it.
    """
    if not per_seed:
        raise ValueError("no seeds to average")
    return np.array([[run[i] for i in ids] for run in per_seed], dtype=np.float64).mean(axis=0)
