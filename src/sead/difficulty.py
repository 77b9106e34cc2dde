"""Per-prompt difficulty: d_i = 1 - pass rate of K student rollouts, judged by a verifier.

Output: a JSONL file, one line per prompt, ``{"id", "pass_rate", "difficulty", "k", "correct"}``,
appended and flushed as prompts finish, so an interrupted run resumes: ids already in the file are
skipped (a half-written last line is dropped). Each fixed chunk of prompts samples from its own
seeded stream, so a resumed run draws what an uninterrupted one would for every chunk it redoes
whole. `sead.difficulty_file.load_difficulties` reads it.

At scale this is K x N long rollouts before the first training step, so ``announce`` (the trainer
passes its console) is told the count before it starts, an estimate of the whole time after the
first chunk, and the progress every tenth of the prompts. `estimate_to_file` (the trainer's
``curriculum.auto_estimate``) shares the chunks among all processes, each writing
``PATH.partial<rank>``, and writes ``PATH`` only when every prompt is done, so a run stopped midway
resumes the estimate on restart (with any process count), and a complete file is never mistaken for
a partial one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch

from sead.data import PromptItem, load_prompts
from sead.difficulty_file import difficulty_file
from sead.errors import ConfigError, DataError
from sead.evaluate import sample_texts
from sead.models import load_model, load_tokenizer
from sead.progress import progress_bar
from sead.sharding import check_can_estimate
from sead.verifier import build_verifier

__all__ = ["estimate_difficulty", "estimate_to_file", "read_done", "difficulty_main", "difficulty_from_config"]


def read_done(path: str | Path, repair: bool = True) -> dict[str, dict]:
    """Finished prompts of an earlier (maybe interrupted) run, by id; repairs a torn last line (unless not
    ``repair``: another process's file is only read)."""
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
    if not repair:
        return done
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
    announce: Callable[[str], None] | None = None,
) -> list[float]:
    """K sampled rollouts per prompt; returns difficulties aligned with ``items`` (see module doc)."""
    done = _estimate(model, tokenizer, items, verifier, rollout_cfg, k, out_path, progress, seed, announce)
    return [1.0 - float(done[it.id]["pass_rate"]) for it in items]


def _estimate(
    model,
    tokenizer,
    items: list[PromptItem],
    verifier,
    rollout_cfg,
    k: int,
    out_path: str | None,
    progress: bool,
    seed: int,
    announce,
    elsewhere: dict[str, dict] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, dict]:
    """The records of the prompts done: ``out_path``'s, ``elsewhere``'s (finished in other files) and
    the chunks this call runs, every ``shard[1]``-th chunk from the ``shard[0]``-th (fixed chunks, own seeds)."""
    if k < 1:
        raise DataError(f"difficulty needs k >= 1 rollouts per prompt, got k={k}")
    missing = [it.id for it in items if it.answer is None]
    if missing:
        raise DataError(
            f"{len(missing)} prompts have no reference answer (first id {missing[0]!r}); difficulty needs answers: "
            "set data.answer_field"
        )
    done = {**(elsewhere or {}), **(read_done(out_path) if out_path else {})}
    per_call = max(1, rollout_cfg.batch_size // k)
    rank, world = shard
    starts = list(range(0, len(items), per_call))[rank::world]  # fixed chunks of the whole list
    mine = [it for start in starts for it in items[start : start + per_call]]
    todo = [it for it in mine if it.id not in done]
    every = sum(it.id not in done for it in items)
    clock = _Announcer(announce, len(todo), every, len(items) - every, k, rollout_cfg.max_new_tokens, world)
    out = None
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "a", encoding="utf-8")
    try:
        with progress_bar(len(mine), f"difficulty (k={k})", progress) as advance, torch.random.fork_rng():
            advance(len(mine) - len(todo))
            for start in starts:
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
                clock.finished(len(chunk))
    finally:
        if out is not None:
            out.close()
    return done


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class _Announcer:
    """The lines `_estimate` tells ``announce``: the count, then time estimates (module doc)."""

    def __init__(self, announce, todo: int, every: int, done: int, k: int, max_new_tokens: int, world: int):
        self.announce, self.todo, self.finished_prompts = announce, todo, 0
        self.step = max(1, todo // 10)
        self.next_report = self.step
        self.t0 = time.monotonic()
        if announce is not None and every:
            resumed = f", resuming after {done} done" if done else ""
            split = f", split over {world} processes" if world > 1 else ""
            announce(
                f"curriculum: estimating prompt difficulty before training: {every} prompts x {k} rollouts = "
                f"{every * k} rollouts of up to {max_new_tokens} tokens{split}{resumed}"
            )

    def finished(self, prompts: int) -> None:
        first = self.finished_prompts == 0
        self.finished_prompts += prompts
        if self.announce is None or (not first and self.finished_prompts < self.next_report):
            return
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.finished_prompts * (self.todo - self.finished_prompts)
        if first:
            self.announce(
                f"curriculum: the first {self.finished_prompts} prompts took {_clock(elapsed)}; "
                f"the estimate needs about {_clock(elapsed + left)} in all ({_clock(left)} to go)"
            )
        else:
            self.announce(
                f"curriculum: {self.finished_prompts}/{self.todo} prompts estimated, elapsed {_clock(elapsed)}, "
                f"eta {_clock(left)}"
            )
        while self.next_report <= self.finished_prompts:
            self.next_report += self.step


def _partials(path: str | Path) -> list[Path]:
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.partial"))


def estimate_to_file(
    model,
    tokenizer,
    items: list[PromptItem],
    verifier,
    rollout_cfg,
    k: int,
    path: str | Path,
    progress: bool = True,
    seed: int = 0,
    announce: Callable[[str], None] | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> None:
    """The trainer's estimate, on every process at once (``rank`` of ``world``, ``barrier`` = wait for
    all): each writes its chunks to ``PATH.partial<rank>``; rank 0 then writes ``path`` (all records,
    in ``items`` order) and removes the partial files. Any process count resumes any partial files."""
    own = Path(f"{path}.partial{rank}")
    elsewhere: dict[str, dict] = {}
    for other in _partials(path):
        if other != own:
            elsewhere.update(read_done(other, repair=False))
    barrier()  # every process has read the others' files before any of them appends
    _estimate(
        model, tokenizer, items, verifier, rollout_cfg, k, str(own), progress, seed, announce, elsewhere, (rank, world)
    )
    barrier()
    if rank == 0:
        records: dict[str, dict] = {}
        for partial in _partials(path):
            records.update(read_done(partial, repair=False))
        lost = [it.id for it in items if it.id not in records]
        if lost:  # a partial file removed by hand while the estimate ran
            raise DataError(f"{len(lost)} prompts have no difficulty after the estimate (first id {lost[0]!r}); re-run")
        tmp = Path(f"{path}.tmp")
        tmp.write_text("".join(json.dumps(records[it.id]) + "\n" for it in items), encoding="utf-8")
        os.replace(tmp, path)
        for partial in _partials(path):
            partial.unlink()
    barrier()


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


def difficulty_from_config(
    cfg, k: int | None = None, out_path: str | None = None, progress: bool = True
) -> list[float]:
    """``difficulty_main`` on a `sead.config.RunConfig`: the student, data, verifier and rollout
    sections; ``k`` rollouts per prompt (default ``curriculum.estimate_k``, so the file is the one
    the trainer would estimate itself); the output goes to ``out_path`` or ``curriculum.difficulty_path``."""
    out_path = out_path or difficulty_file(cfg.curriculum.difficulty_path, cfg.train.output_dir)
    if not out_path:
        raise ConfigError("no output file for difficulties; set curriculum.difficulty_path=PATH.jsonl")
    return difficulty_main(
        cfg.model.student,
        cfg.data,
        cfg.verifier,
        cfg.rollout,
        cfg.curriculum.estimate_k if k is None else k,
        out_path,
        cfg.model.dtype,
        progress,
        cfg.train.seed,
        cfg.model.tokenizer,
        cfg.model.gguf_file,
    )


def estimate_before_training(accelerator, cfg, student, tokenizer, items: list[PromptItem], path: str) -> None:
    """The trainer's own estimate of a missing curriculum file: every process samples its share with
    a whole copy of the student (before `accelerate.prepare`), and the file appears once all are done.
    Refused when the launch gave only process 0 the weights (`sead.sharding.check_can_estimate`)."""
    check_can_estimate(accelerator, path)
    student.to(accelerator.device)
    estimate_to_file(
        student,
        tokenizer,
        items,
        build_verifier(cfg.verifier),
        cfg.rollout,
        cfg.curriculum.estimate_k,
        path,
        progress=cfg.logging.progress and accelerator.is_main_process,
        seed=cfg.train.seed,
        announce=accelerator.print,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone,
    )
