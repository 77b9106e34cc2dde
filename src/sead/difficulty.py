"""Per-prompt difficulty: d_i = 1 - pass rate of K student rollouts, judged by a verifier.

Output: a JSONL file, one line per prompt, ``{"id", "pass_rate", "difficulty", "k", "correct"}``,
appended and flushed as prompts finish, so an interrupted run resumes: ids already in the file are
skipped (a half-written last line is dropped). Each fixed chunk of prompts samples from its own
seeded stream, so a resumed run draws what an uninterrupted one would for every chunk it redoes
whole. `sead.curriculum.load_difficulties` reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sead.data import PromptItem, load_prompts
from sead.errors import ConfigError, DataError
from sead.evaluate import sample_texts
from sead.models import load_model, load_tokenizer
from sead.progress import progress_bar
from sead.verifier import build_verifier

__all__ = ["estimate_difficulty", "read_done", "difficulty_main", "difficulty_from_config"]


def read_done(path: str | Path) -> dict[str, dict]:
    """Finished prompts of an earlier (maybe interrupted) run, by id; repairs a torn last line."""
    path = Path(path)
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    done: dict[str, dict] = {}
    keep = 0  # bytes of complete, valid lines
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            try:
                row = json.loads(line.decode("utf-8"))
                float(row["pass_rate"])
                done[str(row["id"])] = row
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                if lineno == len(lines):
                    break  # torn last line of an interrupted run: drop it
                raise DataError(
                    f"{path} line {lineno} is not a difficulty record; delete that line and re-run"
                ) from None
        keep += len(line)
    if keep < len(raw):
        with path.open("r+b") as f:
            f.truncate(keep)
    if keep and not raw[:keep].endswith(b"\n"):
        with path.open("ab") as f:
            f.write(b"\n")
    return done


def estimate_difficulty(
    model,
    tokenizer,
    items: list[PromptItem],
    verifier,
    rollout_cfg,
    k: int = 8,
    out_path: str | None = None,
    progress: bool = True,
    seed: int = 0,
) -> list[float]:
    """K sampled rollouts per prompt; returns difficulties aligned with ``items`` (see module doc)."""
    if k < 1:
        raise DataError(f"difficulty needs k >= 1 rollouts per prompt, got k={k}")
    missing = [it.id for it in items if it.answer is None]
    if missing:
        raise DataError(
            f"{len(missing)} prompts have no reference answer (first id {missing[0]!r}); difficulty needs answers: "
            "set data.answer_field"
        )
    done = read_done(out_path) if out_path else {}
    todo = [it for it in items if it.id not in done]
    out = None
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "a", encoding="utf-8")
    try:
        with progress_bar(len(items), f"difficulty (k={k})", progress) as advance, torch.random.fork_rng():
            advance(len(items) - len(todo))
            per_call = max(1, rollout_cfg.batch_size // k)
            for start in range(0, len(items), per_call):  # fixed chunks of the whole list, done ones skipped
                chunk = [it for it in items[start : start + per_call] if it.id not in done]
                if not chunk:
                    continue
                # Each chunk its own seeded stream: a resumed run samples exactly what an uninterrupted one would.
                torch.manual_seed((seed << 32) + start)
                texts = sample_texts(model, tokenizer, chunk, rollout_cfg, k, False, lambda n=1: None)
                for it, responses in zip(chunk, texts):
                    correct = sum(bool(verifier(r, it.answer)) for r in responses)
                    row = {
                        "id": it.id,
                        "pass_rate": correct / k,
                        "difficulty": 1.0 - correct / k,
                        "k": k,
                        "correct": correct,
                    }
                    done[it.id] = row
                    if out is not None:
                        out.write(json.dumps(row) + "\n")
                if out is not None:
                    out.flush()
                    os.fsync(out.fileno())
                advance(len(chunk))
    finally:
        if out is not None:
            out.close()
    return [1.0 - float(done[it.id]["pass_rate"]) for it in items]


def _load(model_path: str, tokenizer_path: str | None, dtype: str, gguf_file: str | None):
    tokenizer = load_tokenizer(tokenizer_path or model_path, gguf_file=gguf_file)
    model = load_model(model_path, dtype=dtype, gguf_file=gguf_file)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


def difficulty_main(
    model_path: str,
    data_cfg,
    verifier_cfg,
    rollout_cfg,
    k: int = 8,
    out_path: str = "difficulty.jsonl",
    dtype: str = "float32",
    progress: bool = True,
    seed: int = 0,
    tokenizer_path: str | None = None,
    gguf_file: str | None = None,
) -> list[float]:
    """``sead difficulty``: load the student and the prompts, estimate, write ``out_path``, summarise."""
    items = load_prompts(data_cfg)
    verifier = build_verifier(verifier_cfg)
    model, tokenizer = _load(model_path, tokenizer_path, dtype, gguf_file)
    diffs = estimate_difficulty(model, tokenizer, items, verifier, rollout_cfg, k, out_path, progress, seed)
    solved = sum(d < 1.0 for d in diffs)
    print(
        f"difficulty: {len(diffs)} prompts, mean pass rate {1 - sum(diffs) / len(diffs):.3f}, "
        f"{solved} solved at least once, {len(diffs) - solved} never; wrote {out_path}"
    )
    return diffs


def difficulty_from_config(cfg, k: int = 8, out_path: str | None = None, progress: bool = True) -> list[float]:
    """``difficulty_main`` on a `sead.config.RunConfig`: the student, data, verifier and rollout
    sections; the output goes to ``out_path`` or ``curriculum.difficulty_path``."""
    out_path = out_path or cfg.curriculum.difficulty_path
    if not out_path:
        raise ConfigError("no output file for difficulties; set curriculum.difficulty_path=PATH.jsonl")
    return difficulty_main(
        cfg.model.student,
        cfg.data,
        cfg.verifier,
        cfg.rollout,
        k,
        out_path,
        cfg.model.dtype,
        progress,
        cfg.train.seed,
        cfg.model.tokenizer,
        cfg.model.gguf_file,
    )
