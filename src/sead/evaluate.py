"""Evaluation: greedy pass@1, mean accuracy over k samples (avg@k) and unbiased pass@k.

`evaluate_model` scores a model on named prompt sets and returns the eval JSON of docs/FORMATS.md
(``{"model", "benchmarks": {NAME: {"pass@1", "avg@k", "pass@k": {"1": .., "2": ..}, "n", "k"}},
"average": {metric: float}}``, and ``"warnings": [line, ...]`` when the verifier cannot match some
reference answers at all, see `sead.verifier.unmatchable_answers`) plus one record per generated
response. ``pass@1`` is the greedy accuracy when ``greedy`` is on, else the sampled pass@1
(= avg@k). ``pass@k`` is reported for the powers of two up to k, and k itself. With ``k = 0``
only greedy decoding runs and ``avg@k`` / ``pass@k`` are left out. ``average`` is the unweighted
mean over benchmarks of the flat metrics (``pass@1``, ``avg@k``, ``pass@J`` for J >= 2), the same
names as the trainer's ``eval/<bench>/<metric>`` keys (`flat_metrics`).

Trainer hook: ``if should_evaluate(cfg.eval, step): metrics |= evaluate_during_training(...)``
on the main process, with the unwrapped model.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sead.data import PromptItem, PromptRows, check_chat_keys, check_template, load_rows, subsample
from sead.errors import ConfigError
from sead.jsonio import atomic_write_json, write_jsonl
from sead.models import load_model, load_tokenizer
from sead.progress import progress_bar
from sead.rollout import RolloutConfig, check_template_kwargs, generate_rollouts
from sead.settings import setting
from sead.verifier import VerifierConfig, build_verifier, unmatchable_note

__all__ = [
    "EvalConfig",
    "pass_at_k",
    "k_values",
    "load_benchmarks",
    "evaluate_model",
    "flat_metrics",
    "should_evaluate",
    "evaluate_during_training",
    "eval_main",
    "sample_texts",
]


@dataclass
class EvalConfig(PromptRows, RolloutConfig):
    """Held-out evaluation: which sets, how many samples, how often during training. Rows map to
    prompts as in ``data`` (`PromptRows`) and responses decode as in ``rollout`` (`RolloutConfig`)."""

    split: str = setting("test", "split of a hub dataset or dataset folder")
    max_new_tokens: int = setting(512, "longest response, in tokens")
    data: list[str] = setting(
        [], "benchmarks: name=path or path (name = file stem); files, folders or hub names; path[split]: its split"
    )
    k: int = setting(1, "samples per prompt for avg@k and pass@k; 0 = greedy only")
    greedy: bool = setting(True, "also decode greedily and report that as pass@1")
    every: int = setting(0, "during training: evaluate every N optimiser steps; 0 = off")
    seed: int = setting(0, "seed of the max_prompts subsets and of the sampling")

    def __post_init__(self) -> None:
        if not isinstance(self.data, list) or not all(isinstance(d, str) and d for d in self.data):
            raise ConfigError(f"eval.data must be a list of paths or name=path strings, got {self.data!r}")
        if not self.prompt_field or not self.answer_field:
            raise ConfigError(
                "eval.prompt_field and eval.answer_field must be non-empty; e.g. eval.prompt_field=problem"
            )
        check_template(self.template, "eval.template")
        if not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"eval.k must be an integer >= 0, got {self.k!r}; e.g. eval.k=8")
        if self.k == 0 and not self.greedy:
            raise ConfigError("eval.k=0 with eval.greedy=false evaluates nothing; set eval.k >= 1 or eval.greedy=true")
        if self.k > 0 and not self.temperature > 0:
            raise ConfigError(f"eval.temperature must be > 0 for sampling (eval.k={self.k}), got {self.temperature!r}")
        for key in ("max_new_tokens", "batch_size", "max_prompt_tokens"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        if self.chat_template not in ("auto", "on", "off"):
            raise ConfigError(f"eval.chat_template must be auto, on or off, got {self.chat_template!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"eval.top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"eval.max_prompts must be >= 1 or null, got {self.max_prompts!r}")
        if not isinstance(self.every, int) or self.every < 0:
            raise ConfigError(f"eval.every must be an integer >= 0 (0 = off), got {self.every!r}")
        check_template_kwargs(self, "eval")
        check_chat_keys(self, "eval")

    def rollout_config(self) -> RolloutConfig:
        """The decoding settings alone, as the rollout code takes them."""
        return RolloutConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RolloutConfig)})


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def k_values(k: int) -> list[int]:
    """The k's pass@k is reported for: powers of two up to k, and k itself."""
    return sorted({2**e for e in range(int(math.log2(k)) + 1)} | {k}) if k >= 1 else []


_SPLIT_SUFFIX = re.compile(r"(.+)\[([\w.-]+)\]")


def _path_and_split(path: str, default: str) -> tuple[str, str]:
    """``path[split]`` -> (path, split) unless a file of that exact name exists; else (path, default)."""
    match = _SPLIT_SUFFIX.fullmatch(path)
    if match is None or Path(path).exists():
        return path, default
    return match.group(1), match.group(2)


def load_benchmarks(cfg: EvalConfig) -> dict[str, list[PromptItem]]:
    """Load every ``eval.data`` entry (``name=path`` or ``path``, each maybe ``path[split]``, e.g. a hub
    set with only a train split beside test-split ones) with the eval field mapping."""
    if not cfg.data:
        raise ConfigError("no evaluation data; pass --data FILE (or set eval.data=[name=path])")
    benchmarks: dict[str, list[PromptItem]] = {}
    for entry in cfg.data:
        name, sep, path = entry.partition("=")
        if not sep:
            path = entry
            bare, _ = _path_and_split(entry, cfg.split)
            name = Path(bare).name.split(".")[0] if Path(bare).exists() else bare.replace("/", "_")
        if name in benchmarks or not name or "/" in name:
            raise ConfigError(
                f"eval.data entry {entry!r} gives a repeated or unusable name {name!r}; write it as name=path"
            )
        rows = load_rows(*_path_and_split(path, cfg.split))
        benchmarks[name] = subsample(cfg.to_items(rows, "eval"), cfg.max_prompts, cfg.seed)
    return benchmarks


def _generate(model, tokenizer, prompts: list[str], rollout_cfg, num_samples: int, greedy: bool) -> list[str]:
    return generate_rollouts(
        model, tokenizer, prompts, rollout_cfg, num_samples=num_samples, greedy=greedy
    ).response_texts


def sample_texts(model, tokenizer, items, rollout_cfg, num_samples, greedy, advance) -> list[list[str]]:
    """``num_samples`` responses per item, in chunks of about one generation batch; ``advance(n)`` per chunk."""
    per_call = max(1, rollout_cfg.batch_size // num_samples)
    out: list[list[str]] = []
    for start in range(0, len(items), per_call):
        chunk = items[start : start + per_call]
        texts = _generate(model, tokenizer, [it.prompt for it in chunk], rollout_cfg, num_samples, greedy)
        if len(texts) != len(chunk) * num_samples:
            raise RuntimeError(f"generation returned {len(texts)} responses for {len(chunk)} x {num_samples}")
        out += [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(chunk))]
        advance(len(chunk))
    return out


def evaluate_model(
    model,
    tokenizer,
    benchmarks: dict[str, list[PromptItem]],
    verifier,
    rollout_cfg,
    k: int = 1,
    greedy: bool = True,
    model_name: str = "",
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict, list[dict]]:
    """Score ``model`` on each benchmark; returns (eval JSON dict, per-response records).

    Sampling uses ``rollout_cfg`` (temperature, top_p, length) under a forked torch RNG seeded
    with ``seed``, so evaluation neither depends on nor disturbs the training RNG.
    """
    if k == 0 and not greedy:
        raise ConfigError("evaluation with k=0 and greedy=false does nothing; set k >= 1 or greedy=true")
    result = {"model": model_name, "benchmarks": {}, "average": {}}
    records: list[dict] = []
    total = sum(len(v) for v in benchmarks.values()) * (int(greedy) + int(k > 0))
    with progress_bar(total, f"eval {model_name}".strip(), progress) as advance, torch.random.fork_rng():
        torch.manual_seed(seed)
        for name, items in benchmarks.items():
            if not items:
                raise ConfigError(f"benchmark {name!r} has no prompts; check its data file")
            scores: dict = {"n": len(items), "k": k}
            modes = ([("greedy", 1, True)] if greedy else []) + ([("sample", k, False)] if k > 0 else [])
            for mode, num, is_greedy in modes:
                texts = sample_texts(model, tokenizer, items, rollout_cfg, num, is_greedy, advance)
                correct = [[bool(verifier(t, it.answer)) for t in row] for it, row in zip(items, texts)]
                for it, row, oks in zip(items, texts, correct):
                    records += [
                        {
                            "benchmark": name,
                            "id": it.id,
                            "mode": mode,
                            "sample": j,
                            "prompt": it.prompt,
                            "answer": it.answer,
                            "response": t,
                            "correct": ok,
                        }
                        for j, (t, ok) in enumerate(zip(row, oks))
                    ]
                if is_greedy:
                    scores["pass@1"] = sum(oks[0] for oks in correct) / len(items)
                else:
                    counts = [sum(oks) for oks in correct]
                    scores["avg@k"] = sum(counts) / (k * len(items))
                    scores["pass@k"] = {
                        str(j): sum(pass_at_k(k, c, j) for c in counts) / len(items) for j in k_values(k)
                    }
                    scores.setdefault("pass@1", scores["avg@k"])
            result["benchmarks"][name] = {
                key: scores[key] for key in ("pass@1", "avg@k", "pass@k", "n", "k") if key in scores
            }
            warning = unmatchable_note(
                verifier, items, f"of benchmark {name!r}", "eval", "they score 0 whatever the model answers"
            )
            if warning:
                result.setdefault("warnings", []).append(warning)
    per_bench = [_flat(b) for b in result["benchmarks"].values()]
    result["average"] = {m: sum(f[m] for f in per_bench) / len(per_bench) for m in per_bench[0]} if per_bench else {}
    return result, records


def _flat(scores: dict) -> dict[str, float]:
    flat = {"pass@1": scores["pass@1"]}
    if "avg@k" in scores:
        flat["avg@k"] = scores["avg@k"]
        flat.update({f"pass@{j}": v for j, v in scores["pass@k"].items() if j != "1"})
    return flat


def flat_metrics(result: dict) -> dict[str, float]:
    """``eval/<bench>/<metric>`` and ``eval/average/<metric>`` floats for metrics.jsonl."""
    out = {f"eval/{name}/{m}": v for name, scores in result["benchmarks"].items() for m, v in _flat(scores).items()}
    if len(result["benchmarks"]) > 1:
        out.update({f"eval/average/{m}": v for m, v in result["average"].items()})
    return out


def should_evaluate(cfg: EvalConfig, step: int) -> bool:
    """Whether the trainer evaluates after 1-based optimiser step ``step`` (every ``eval.every``)."""
    return cfg.every > 0 and bool(cfg.data) and step % cfg.every == 0


def write_samples(records: list[dict], path: str | Path) -> None:
    write_jsonl(path, records, ensure_ascii=False)


def evaluate_during_training(
    model,
    tokenizer,
    cfg: EvalConfig,
    verifier,
    step: int,
    benchmarks: dict[str, list[PromptItem]] | None = None,
    samples_path: str | None = None,
) -> dict[str, float]:
    """Trainer hook: evaluate the (unwrapped) model, return flat ``eval/...`` metrics.

    Pass ``benchmarks=load_benchmarks(cfg)`` once to avoid re-reading files at every call;
    ``samples_path`` writes the per-response records there. The model's train/eval mode is kept.
    """
    benchmarks = benchmarks if benchmarks is not None else load_benchmarks(cfg)
    result, records = evaluate_model(
        model, tokenizer, benchmarks, verifier, cfg.rollout_config(), cfg.k, cfg.greedy, f"step-{step}", cfg.seed
    )
    if samples_path:
        write_samples(records, samples_path)
    return flat_metrics(result)


def print_table(result: dict, console=None) -> None:
    rows = {**{n: _flat(s) for n, s in result["benchmarks"].items()}, "average": result["average"]}
    metrics = list(result["average"])
    table = Table(title=f"eval: {result['model']}")
    table.add_column("benchmark")
    table.add_column("n", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, flat in rows.items():
        n = str(result["benchmarks"][name]["n"]) if name in result["benchmarks"] else ""
        table.add_row(name, n, *(f"{100 * flat[m]:.2f}" for m in metrics))
    (console or Console()).print(table)


def eval_main(
    model_path: str,
    data: list[str] | None = None,
    out_dir: str = ".",
    cfg: EvalConfig | None = None,
    verifier_cfg=None,
    tag: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    show_table: bool = True,
) -> dict:
    """``sead eval``: load a checkpoint, evaluate on ``data`` (overrides ``cfg.data``), write
    ``OUT/eval/<tag>.json`` and ``OUT/eval/<tag>.samples.jsonl``, print a table; returns the JSON.
    ``tag`` defaults to the model folder's name (``final``, ``step-100``)."""

    cfg = cfg or EvalConfig()
    if data:
        cfg = dataclasses.replace(cfg, data=list(data))
    benchmarks = load_benchmarks(cfg)
    verifier = build_verifier(verifier_cfg or VerifierConfig())
    tokenizer = load_tokenizer(model_path, key="--model")
    model = load_model(model_path, dtype=dtype, key="--model")
    if torch.cuda.is_available():
        model = model.to("cuda")
    tag = tag or Path(model_path.rstrip("/")).name or "model"
    result, records = evaluate_model(
        model, tokenizer, benchmarks, verifier, cfg.rollout_config(), cfg.k, cfg.greedy, model_path, cfg.seed, progress
    )
    for warning in result.get("warnings", []):
        print(f"sead eval: warning: {warning}", file=sys.stderr)
    out = Path(out_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{tag}.json", result)
    write_samples(records, out / f"{tag}.samples.jsonl")
    if show_table:
        print_table(result)
    return result
