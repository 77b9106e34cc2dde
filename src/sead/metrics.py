"""Per-step metrics: token statistics by zone, and the append-only ``metrics.jsonl`` writer."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from sead.errors import SeadError
from sead.jsonio import read_jsonl, write_jsonl
from sead.zones import Zone

__all__ = ["MetricsWriter", "zone_statistics", "read_metrics"]


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")


def zone_statistics(
    zones_N: torch.Tensor,
    teacher_entropy_N: torch.Tensor,
    student_entropy_N: torch.Tensor,
    fkl_N: torch.Tensor | None = None,
    rkl_N: torch.Tensor | None = None,
) -> dict[str, float]:
    """Zone fractions, entropies overall and per zone, and each zone's share of the forward KL.

    All inputs are flat over the valid tokens of a step (N,); zones in {A, B, C}.
    """
    n = zones_N.numel()
    out: dict[str, float] = {"zones/tokens": float(n)}
    out["entropy/teacher_mean"] = _mean(teacher_entropy_N)
    out["entropy/student_mean"] = _mean(student_entropy_N)
    fkl_total = float(fkl_N.sum()) if fkl_N is not None and n else 0.0
    for zone in Zone:
        sel = zones_N == zone
        tag = zone.name.lower()
        out[f"zones/frac_{tag}"] = float(sel.sum()) / n if n else float("nan")
        out[f"entropy/teacher_zone_{tag}"] = _mean(teacher_entropy_N[sel])
        out[f"entropy/student_zone_{tag}"] = _mean(student_entropy_N[sel])
        if fkl_N is not None:
            out[f"kl/fkl_share_{tag}"] = float(fkl_N[sel].sum()) / fkl_total if fkl_total > 0 else float("nan")
    if fkl_N is not None:
        out["loss/fkl"] = _mean(fkl_N)
    if rkl_N is not None:
        out["loss/rkl"] = _mean(rkl_N)
    return out


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads back as "not available"
    return value


class MetricsWriter:
    """Appends one JSON object per step and makes it durable before the step is reported done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step`` (a resumed run rewrites them), keeping a torn last line out."""
        if not self.path.exists():
            return
        write_jsonl(self.path, [rec for rec in read_metrics(self.path) if rec.get("step", 0) <= step])

    def write(self, record: dict) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:  # a torn line is skipped by read_metrics and dropped on resume
            raise SeadError(
                f"could not append step {record.get('step')} to {self.path} ({err.strerror or err}); "
                "free disk space or fix permissions, then resume with train.resume=true"
            ) from None


def read_metrics(path: str | Path) -> list[dict]:
    """All complete JSON lines of a metrics file (a torn final line from a crash is skipped)."""
    return read_jsonl(path, on_bad_line=None)
