"""The run of a comparison: plan the rows, then train, evaluate and tabulate what is not done yet.

`run_comparison` is the body of `sead.compare.run_compare`. Each row (the initial student, or
one run of a variant: one per training seed with ``--seeds``) moves along its states
(`sead.compare_rows`): `train_variant` trains or resumes a variant's run with its resolved config,
`evaluate_row` writes the eval JSON + samples of the initial student or of a ``final/`` model,
and `sead.compare_tables.tabulate` writes the tables. Under ``accelerate launch`` every process
trains; evaluation and tables run on the main process.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import PartialState

from sead.checkpoint import latest_checkpoint
from sead.compare_options import CompareOptions
from sead.compare_plan import plan_variants, resolve_variants
from sead.compare_rows import BASE, Row, base_row, variant_row
from sead.compare_tables import tabulate
from sead.config import RunConfig, load_config
from sead.errors import ConfigError
from sead.evaluate import evaluate_model, load_benchmarks, write_samples
from sead.jsonio import atomic_write_json
from sead.models import load_model, load_tokenizer
from sead.progress import quiet_libraries
from sead.run_dir import resume_changes
from sead.run_lock import claim_run_dir, is_main_launch
from sead.trainer import Trainer
from sead.verifier import build_verifier

__all__ = ["run_comparison", "train_variant", "evaluate_row"]


def run_comparison(config: str | None, overrides: Sequence[str], options: CompareOptions) -> dict | None:
    """Train, evaluate and tabulate (see `sead.compare`); returns the comparison JSON, or None when
    ``options.only`` restricted the run to some variants (tables come with ``tabulate_only``)."""
    base_cfg = load_config(config, list(overrides))
    variants = plan_variants(list(options.methods), options.ablation)
    out = Path(options.out)
    seeds = list(options.seeds) if options.seeds is not None else [None]  # None: the config's train.seed
    cfgs = {seed: resolve_variants(base_cfg, variants, out, seed) for seed in seeds}
    names = [BASE] + [v.name for v in variants]
    reference = options.reference
    if reference is None:
        reference = "opd" if "opd" in names else variants[0].name
    elif reference not in names:
        raise ConfigError(f"--reference {reference!r} is not a compared variant; use one of {', '.join(names)}")
    for name in options.only:
        if name not in names:
            raise ConfigError(f"--only {name!r} is not a variant of this comparison; use one of {', '.join(names)}")

    rows = [base_row(base_cfg, out)] + [variant_row(v, cfgs[seed][v.name], seed) for v in variants for seed in seeds]
    selected = [r for r in rows if not options.only or r.name in options.only]
    for r in selected:  # a changed config fails here, before any hour of training is spent or tabulated
        if r.run_dir is not None:
            r.saved_config()

    if not options.tabulate_only:
        quiet_libraries()
        _train_and_evaluate(selected, base_cfg)
        if options.only:
            of_seeds = f" (seeds {', '.join(map(str, options.seeds))})" if options.seeds is not None else ""
            _say(
                f"finished {', '.join(dict.fromkeys(r.name for r in selected))}{of_seeds}; when every variant is "
                "done, gather the tables with the same command and --tabulate-only (without --only)"
            )
            return None
    result = None
    if _is_main():
        result = tabulate(
            rows,
            out,
            reference,
            metric=options.metric,
            n_resamples=options.n_resamples,
            confidence=options.confidence,
            seed=options.seed,
        )
        print((out / "comparison.md").read_text(encoding="utf-8"))
        print(f"compare: tables in {out / 'comparison.md'} and {out / 'comparison.json'}; runs in {out / 'runs'}")
    _state().wait_for_everyone()
    return result


def _train_and_evaluate(selected: Sequence[Row], base_cfg: RunConfig) -> None:
    benchmarks = None  # loaded once, on the first row that needs an evaluation
    for i, r in enumerate(selected, 1):
        state = r.state()
        tag = f"[{i}/{len(selected)}] {r.label}"
        if state == "done":
            _say(f"{tag}: trained and evaluated already, skipped")
            continue
        if not r.trained():
            _say(f"{tag}: {r.description}")
            train_variant(r)
        if _is_main():
            benchmarks = benchmarks if benchmarks is not None else load_benchmarks(base_cfg.eval)
            if state == "stale":
                _say(f"{tag}: eval settings changed since its evaluation; evaluating again")
            evaluate_row(r, benchmarks, progress=base_cfg.logging.progress)
        _state().wait_for_everyone()


# ------------------------------------------------------------------ processes (accelerate launch)
def _state() -> PartialState:
    return PartialState()


def _is_main() -> bool:
    return _state().is_main_process


def _say(text: str) -> None:
    if _is_main():
        print(f"compare: {text}", flush=True)


def _release_memory() -> None:
    """Hand a finished variant's GPU memory back before the next one loads (CPU memory frees itself)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ train and evaluate one row
def train_variant(row: Row) -> Path:
    """Train (or resume) one variant's run with its resolved config; returns ``final/``.

    Holds the run folder's lock (`sead.run_lock`) throughout, as `sead train` does: two commands
    given the same ``--only`` would otherwise clear and write one folder at once.
    """
    with claim_run_dir(row.run_dir, enabled=is_main_launch(), key="--out") as claim:
        return _train_claimed(row, claim)


def _train_claimed(row: Row, claim) -> Path:
    saved = row.saved_config()
    cfg = row.cfg
    if saved:
        # Same training config: resume. What the trainer would still refuse is an edited eval
        # section, which changes nothing trained, so it is forced through.
        force = bool(resume_changes(saved, cfg))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True, force_resume=force))
        if latest_checkpoint(row.run_dir) is None and _is_main():
            for stale in ("metrics.jsonl", "samples.jsonl"):  # an attempt that never checkpointed restarts at 0
                (row.run_dir / stale).unlink(missing_ok=True)
    _state().wait_for_everyone()
    trainer = Trainer(cfg).setup()
    claim.started()
    start = trainer.step
    _say(
        f"{row.label}: training steps {start + 1}..{cfg.train.steps} in {row.run_dir}"
        if start < cfg.train.steps
        else f"{row.label}: all {cfg.train.steps} steps done, writing final/"
    )
    final = trainer.train()
    trainer.accelerator.free_memory()
    del trainer
    _release_memory()
    return final


def evaluate_row(row: Row, benchmarks: dict, progress: bool = True) -> dict:
    """Evaluate a row's model (the initial student, or ``final/``) and write its eval JSON + samples.

    The samples file is written first and the JSON last (atomically), so a present JSON means a
    complete evaluation. Runs on the main process only.
    """
    cfg, m = row.cfg, row.cfg.model
    if row.run_dir is None:
        model_path, tok_path, gguf = m.student, m.tokenizer or m.student, m.gguf_file
        key = "model.student"
    else:
        model_path = tok_path = str(row.run_dir / "final")
        gguf, key = None, f"{row.run_dir.name}/final"
    tokenizer = load_tokenizer(
        tok_path, gguf_file=gguf if tok_path == model_path else None, key=key, trust_remote_code=m.trust_remote_code
    )
    model = (
        load_model(model_path, dtype=m.dtype, gguf_file=gguf, key=key, trust_remote_code=m.trust_remote_code)
        .to(_state().device)
        .eval()
    )
    result, records = evaluate_model(
        model,
        tokenizer,
        benchmarks,
        build_verifier(cfg.verifier),
        cfg.eval.rollout_config(),
        k=cfg.eval.k,
        greedy=cfg.eval.greedy,
        model_name=model_path,
        seed=cfg.eval.seed,
        progress=progress,
    )
    result["compare"] = row.fingerprint
    row.eval_json.parent.mkdir(parents=True, exist_ok=True)
    write_samples(records, row.samples)
    atomic_write_json(row.eval_json, result)
    del model
    _release_memory()
    avg = result["average"].get("pass@1")
    _say(f"{row.label}: evaluated, average pass@1 {100 * avg:.2f}%" if avg is not None else f"{row.label}: evaluated")
    return result
