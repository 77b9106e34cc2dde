"""The run data model of ``sead report``: one run directory read into a :class:`RunData`.

:func:`load_run` reads the files of docs/FORMATS.md alone (``config.yaml``, ``metrics.jsonl``,
``samples.jsonl``, ``eval/*.json``), so any old run can be re-reported. A missing or unreadable
piece never stops it: it is listed in ``RunData.missing`` or ``RunData.notes``. Also here: the
zone names and colours, and the SEAD paper's reference numbers the report compares against.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sead.errors import DataError
from sead.jsonio import read_jsonl
from sead.zones import MASKED, Zone

__all__ = [
    "Sample",
    "RunData",
    "load_run",
    "ZONE_LETTERS",
    "ZONE_NAMES",
    "ZONE_COLORS",
    "PAPER_FAIR_SHARE",
    "PAPER_JACCARD",
    "PAPER_FRACTIONS",
]

ZONE_LETTERS = {int(z): z.name for z in Zone}  # 0 -> "A", 1 -> "B", 2 -> "C"
ZONE_NAMES = {**ZONE_LETTERS, MASKED: "none"}
# A grey, B blue, C orange, no zone violet
ZONE_COLORS = {int(Zone.A): "#9e9e9e", int(Zone.B): "#3b82f6", int(Zone.C): "#f59e0b", MASKED: "#a78bfa"}
# The SEAD paper (OLMo-3-7B): forward-KL share / token share per zone, measured with percentile
# zones at PAPER_FRACTIONS; and the top-20% teacher/student entropy Jaccard overlap.
PAPER_FAIR_SHARE = {int(Zone.A): 0.19, int(Zone.B): 1.46, int(Zone.C): 3.19}
PAPER_FRACTIONS = (0.5, 0.4, 0.1)
PAPER_JACCARD = 0.637
_EVAL_ORDER = (("before", "base", "init", "pre", "start"), ("after", "final", "end"))  # first, last; others between


def _floats(values) -> list[float]:
    return [float(v) if isinstance(v, (int, float)) else math.nan for v in values]


@dataclass
class Sample:
    """One logged rollout of ``samples.jsonl``; per-token lists are cut to the length of ``tokens``."""

    step: int
    method: str
    prompt: str
    response: str
    tokens: list[str]
    zone: list[int]
    teacher_entropy: list[float]
    student_entropy: list[float]
    loss: list[float]
    fkl: list[float]
    reward: float | None = None

    @classmethod
    def from_json(cls, row: dict) -> Sample:
        tokens = [str(t) for t in row.get("tokens") or []]
        n = len(tokens)

        def cut(key: str, fill) -> list:
            vals = list(row.get(key) or [])[:n]
            return vals + [fill] * (n - len(vals))

        reward = row.get("reward")
        return cls(
            int(row.get("step", 0)),
            str(row.get("method") or ""),
            str(row.get("prompt") or ""),
            str(row.get("response") or ""),
            tokens,
            [int(z) if isinstance(z, (int, float)) else MASKED for z in cut("zone", MASKED)],
            _floats(cut("teacher_entropy", None)),
            _floats(cut("student_entropy", None)),
            _floats(cut("loss", None)),
            _floats(cut("fkl", None)),
            float(reward) if isinstance(reward, (int, float)) else None,
        )


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    name: str
    method: str
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)  # one merged row per step, sorted by step
    samples: list[Sample] = field(default_factory=list)
    evals: dict[str, dict] = field(default_factory=dict)  # eval file stem -> parsed JSON
    missing: list[str] = field(default_factory=list)  # files of the format that are absent
    notes: list[str] = field(default_factory=list)  # problems met while reading

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric over the steps that logged a finite value for it."""
        pts = [
            (r["step"], float(r[key]))
            for r in self.metrics
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        return [s for s, _ in pts], [v for _, v in pts]

    def metric_keys(self) -> set[str]:
        return {k for r in self.metrics for k in r}

    @property
    def has_zones(self) -> bool:
        return bool(self.series("zones/frac_c")[0]) or any(z >= 0 for s in self.samples for z in s.zone)

    @property
    def zones_as_paper(self) -> bool:
        """Whether config.yaml says the logged zones are the paper's: percentile zones at PAPER_FRACTIONS
        (the trainer's defaults when unset). False without a config: the zone rule is then unknown."""
        if not self.config:
            return False
        objective = self.config.get("objective")
        objective = objective if isinstance(objective, dict) else {}
        fractions = objective.get("fractions", PAPER_FRACTIONS)
        try:
            same = len(fractions) == 3 and all(abs(float(a) - b) < 1e-6 for a, b in zip(fractions, PAPER_FRACTIONS))
        except (TypeError, ValueError):
            return False
        return same and objective.get("zone_mode", "percentile") == "percentile"

    def latest_samples(self) -> list[Sample]:
        if not self.samples:
            return []
        last = max(s.step for s in self.samples)
        return [s for s in self.samples if s.step == last]


def _read_rows(path: Path, notes: list[str]) -> list[dict]:
    """The JSON objects of a JSONL log; bad lines (a crash-torn last line) are skipped and counted in ``notes``."""
    bad: list[str] = []
    rows = read_jsonl(path, on_bad_line=lambda where, problem: bad.append(where))
    if bad:
        notes.append(f"{path.name}: skipped {len(bad)} unreadable line(s)")
    return rows


def _eval_order(f: Path) -> tuple:
    """before/base/... first, after/final last, the rest by name, numbers compared as numbers (step-20 < step-100)."""
    stem = f.stem.lower()
    rank = 0 if stem.startswith(_EVAL_ORDER[0]) else 2 if stem.startswith(_EVAL_ORDER[1]) else 1
    return rank, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", stem) if p]


def _config_value(config: dict, *keys: str) -> str | None:
    for key in keys:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (str, int, float)) and str(node):
            return str(node)
    return None


def load_run(path: str | Path) -> RunData:
    """Read a run directory (docs/FORMATS.md). Raises DataError only when ``path`` is not a directory."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"run directory {str(root)!r} does not exist; pass the folder holding metrics.jsonl")
    notes: list[str] = []
    missing = [f for f in ("config.yaml", "metrics.jsonl", "samples.jsonl") if not (root / f).is_file()]
    config: dict = {}
    if (root / "config.yaml").is_file():
        try:
            loaded = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except Exception as err:  # a broken config must not hide the metrics
            notes.append(f"config.yaml: unreadable ({type(err).__name__})")
    merged: dict[int, dict] = {}
    if (root / "metrics.jsonl").is_file():
        for row in _read_rows(root / "metrics.jsonl", notes):
            if isinstance(row.get("step"), (int, float)):
                merged.setdefault(int(row["step"]), {}).update(row, step=int(row["step"]))
    samples: list[Sample] = []
    if (root / "samples.jsonl").is_file():
        for row in _read_rows(root / "samples.jsonl", notes):
            try:
                samples.append(Sample.from_json(row))
            except (TypeError, ValueError):
                notes.append("samples.jsonl: skipped a malformed record")
    evals: dict[str, dict] = {}
    eval_files = sorted((root / "eval").glob("*.json")) if (root / "eval").is_dir() else []
    for f in sorted(eval_files, key=_eval_order):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), dict):
                raise ValueError("no 'benchmarks' object")
            evals[f.stem] = data
        except (ValueError, OSError) as err:
            notes.append(f"eval/{f.name}: unreadable ({err})")
    if not evals:
        missing.append("eval/*.json")
    name = _config_value(config, "name", "run_name", "run.name") or root.resolve().name
    method = _config_value(config, "method", "objective.method", "loss.method", "train.method", "algorithm.name")
    method = method or (samples[0].method if samples and samples[0].method else "unknown")
    return RunData(root, name, method, config, [merged[s] for s in sorted(merged)], samples, evals, missing, notes)
