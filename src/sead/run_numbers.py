"""The numbers ``sead report`` shows for a run: each zone's share of the forward KL against its share
of tokens (loss concentration), the top-20% entropy overlap of teacher and student, pooled tokens.

Pure functions of :mod:`sead.run_data` records, tested on known cases; no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sead.run_data import ZONE_LETTERS, RunData, Sample

__all__ = ["ZoneShare", "zone_fair_share", "fair_share_from_metrics", "top_fraction_jaccard", "pooled_tokens"]


@dataclass
class ZoneShare:
    tokens: int
    token_share: float
    loss_share: float

    @property
    def ratio(self) -> float:
        """Loss share as a multiple of the fair (token) share; 1.0 means proportional."""
        return self.loss_share / self.token_share if self.token_share > 0 else math.nan


def zone_fair_share(fkl: Sequence[float], zone: Sequence[int]) -> dict[int, ZoneShare]:
    """Per zone (0, 1, 2 = A, B, C): its share of tokens and of the forward-KL sum. Zoneless (-1) tokens
    and non-finite values are left out; empty dict when no zoned token remains."""
    pairs = [(float(f), int(z)) for f, z in zip(fkl, zone) if z in ZONE_LETTERS and math.isfinite(f)]
    if not pairs:
        return {}
    total = sum(f for f, _ in pairs)
    out = {}
    for z in ZONE_LETTERS:
        vals = [f for f, zz in pairs if zz == z]
        out[z] = ZoneShare(len(vals), len(vals) / len(pairs), sum(vals) / total if total > 0 else math.nan)
    return out


def fair_share_from_metrics(run: RunData) -> dict[int, tuple[list[int], list[float]]]:
    """Per zone, the per-step ratio kl/fkl_share_z / zones/frac_z over the steps that logged both."""
    out = {}
    for z, name in ZONE_LETTERS.items():
        letter = name.lower()
        pts = [
            (r["step"], r[f"kl/fkl_share_{letter}"] / r[f"zones/frac_{letter}"])
            for r in run.metrics
            if isinstance(r.get(f"kl/fkl_share_{letter}"), (int, float))
            and isinstance(r.get(f"zones/frac_{letter}"), (int, float))
            and r[f"zones/frac_{letter}"] > 0
        ]
        if pts:
            out[z] = ([s for s, _ in pts], [v for _, v in pts])
    return out


def top_fraction_jaccard(teacher: Sequence[float], student: Sequence[float], frac: float = 0.2) -> float:
    """Jaccard overlap |T & S| / |T | S| of the round(frac * N) highest-teacher-entropy tokens (T) and
    the round(frac * N) highest-student-entropy tokens (S); ties go to the earlier token. NaN if N = 0."""
    idx = [i for i, (t, s) in enumerate(zip(teacher, student)) if math.isfinite(t) and math.isfinite(s)]
    if not idx:
        return math.nan
    k = min(len(idx), max(1, math.floor(frac * len(idx) + 0.5)))  # round half up, at least one token
    top_t = set(sorted(idx, key=lambda i: -teacher[i])[:k])
    top_s = set(sorted(idx, key=lambda i: -student[i])[:k])
    return len(top_t & top_s) / len(top_t | top_s)


def pooled_tokens(samples: Sequence[Sample]) -> dict[str, list]:
    """Per-token lists concatenated over ``samples`` (keys zone, fkl, loss, teacher_entropy, student_entropy)."""
    keys = ("zone", "fkl", "loss", "teacher_entropy", "student_entropy")
    return {k: [v for s in samples for v in getattr(s, k)] for k in keys}
