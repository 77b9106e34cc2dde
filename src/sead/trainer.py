"""`sead train`: set up models, data and optimiser through accelerate, run steps, log, checkpoint.

The loop itself is ``Trainer.train``; one optimiser step is ``sead.step.distill_step``. Every step
appends a line to ``metrics.jsonl`` (durably, after the update), every ``logging.samples_every``
steps a few rollouts go to ``samples.jsonl``, and every ``train.save_every`` steps an atomic
checkpoint is written. ``train.resume=true`` restores the latest complete checkpoint (weights,
optimiser, scheduler, RNG states, sampler) and continues as if the run had never stopped.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from sead import grpo
from sead import step as distillation
from sead.chat import with_text
from sead.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_final_model
from sead.config import RunConfig, config_to_dict, load_config
from sead.config_history import save_run_config
from sead.curriculum import build_sampler, sampler_notes
from sead.data import load_prompts
from sead.difficulty import estimate_before_training
from sead.difficulty_file import difficulty_file, load_difficulties
from sead.errors import ConfigError, SeadError
from sead.evaluate import evaluate_during_training, load_benchmarks, should_evaluate
from sead.lora import check_shardable, merge_adapter, register_adapter_checkpoints, trainable_line
from sead.methods import get_method
from sead.metrics import MetricsWriter
from sead.models import context_length, load_model, load_run_models
from sead.optim import build_optimizer, lr_lambda
from sead.progress import StepProgress
from sead.prompt_length import fit_prompts
from sead.run_dir import append_samples, drop_records_after, prepare_run_dir
from sead.run_lock import claim_run_dir, is_main_launch
from sead.run_notes import publish_notes
from sead.scoring import choose_backend
from sead.sharding import (
    check_launch,
    enable_fsdp_on_cpu,
    full_state_dict,
    hook_generate,
    is_sharded,
    loads_on_process0,
    prepare_frozen,
    repoint_optimizer,
)
from sead.trackers import start_trackers
from sead.verifier import build_verifier, unmatchable_note

__all__ = ["Trainer", "lr_lambda", "train_main"]  # lr_lambda lives in sead.optim; kept importable from here


class Trainer:
    """Owns the models, optimiser, sampler and run directory of one training run."""

    def __init__(self, cfg: RunConfig, accelerator=None):
        self.cfg = cfg
        self.method = get_method(cfg.objective.method)
        self.run_dir = Path(cfg.train.output_dir)
        self.accelerator = accelerator
        self.step = 0  # completed optimiser steps
        self.bad_streak = 0  # consecutive skipped (non-finite) steps
        self.notes: list[str] = []  # start-up warnings (sead.run_notes), printed once setup succeeded

    # ----------------------------------------------------------------- setup
    def setup(self) -> Trainer:
        cfg = self.cfg
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        self.notes += check_launch()
        if self.accelerator is None:
            self.accelerator = Accelerator(
                mixed_precision=cfg.train.mixed_precision,
                log_with=cfg.logging.trackers or None,
                project_dir=str(self.run_dir),
                # train.batch_size is the global batch: one LR step per optimiser step, not one per process
                # (accelerate's default steps the scheduler num_processes times, so N processes ran N x fast).
                step_scheduler_with_optimizer=False,
            )
        acc = self.accelerator
        enable_fsdp_on_cpu(acc)
        if cfg.train.batch_size % acc.num_processes:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} does not split over {acc.num_processes} processes; "
                "make it a multiple of the process count"
            )
        prepare_run_dir(acc, self.run_dir, cfg)
        set_seed(cfg.train.seed)
        self._load_models()
        if cfg.lora.enabled and is_sharded(acc):
            check_shardable(self.student, cfg.lora.modules_to_save)
        self._load_data()
        set_seed(cfg.train.seed)  # the same stream whether or not difficulty estimation just ran
        self.optimizer, self.scheduler = build_optimizer(self.student, cfg.optim, cfg.train.steps)
        self.student, self.optimizer, self.scheduler = acc.prepare(self.student, self.optimizer, self.scheduler)
        if loads_on_process0(acc):
            repoint_optimizer(self.optimizer, self.student)
        if cfg.lora.enabled:  # checkpoints hold the adapters; the base weights come from model.student
            register_adapter_checkpoints(acc)
            hook_generate(self.student)  # sharded: PEFT's generate bypasses the root unit's forward
            acc.print(trainable_line(acc.unwrap_model(self.student)))
        if self.method.teacher == "self" and self.teacher is None:
            self.teacher = acc.unwrap_model(self.student)  # OPSD with the live weights as its teacher
        self.teacher, self.reference = prepare_frozen(acc, self.teacher), prepare_frozen(acc, self.reference)
        if is_sharded(acc):
            loaded = ", weights read by process 0 only" if loads_on_process0(acc) else ""
            acc.print(f"FSDP2: student and teacher sharded over {acc.num_processes} processes{loaded}")
        self.backend = None  # a step without a teacher (GRPO) scores nothing
        if self.method.step == "distill":
            student = acc.unwrap_model(self.student)
            self.backend = choose_backend(cfg.objective, student, self.teacher, self.vocab, say=acc.print)
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
        if cfg.logging.trackers:
            start_trackers(acc, cfg.logging, config_to_dict(cfg), cfg.name, self.run_dir)
        if cfg.train.resume:
            self._resume()
        else:  # a fresh run rewrites any step lines left in the folder
            drop_records_after(acc, self.metrics, self.run_dir, 0)
        if acc.is_main_process:  # written once setup succeeded: a failed start or resume changes nothing
            save_run_config(self.run_dir, cfg, self.step)
            publish_notes(self.run_dir, self.step, self.notes)
        return self

    def _load_models(self) -> None:
        frozen = self.method.initial_copy(self.cfg.objective)
        acc = self.accelerator
        weights = acc.is_main_process or not loads_on_process0(acc)  # the others receive shards from process 0
        run = load_run_models(self.cfg.model, self.cfg.lora, self.method.teacher, frozen, weights)
        self.tokenizer, self.student, self.vocab = run.tokenizer, run.student, run.vocab
        self.teacher, self.reference = run.teacher, run.reference  # teacher None + "self": the live student

    def _load_data(self) -> None:
        cfg = self.cfg
        if not cfg.data.path:
            raise ConfigError(
                "data.path is empty; set data.path to a JSONL/JSON/parquet/CSV file, a dataset folder or a hub name"
            )
        self.items = load_prompts(cfg.data)
        if not self.items:
            raise ConfigError(f"data.path={cfg.data.path!r} holds no prompts; check the file and data.split")
        self._check_prompt_lengths()
        use_curriculum = cfg.objective.curriculum and cfg.curriculum.sampler != "uniform"
        if cfg.objective.curriculum and cfg.curriculum.sampler == "uniform":
            raise ConfigError("objective.curriculum=true needs curriculum.sampler=competence|sorted|refreshing")
        difficulties = None
        difficulty_path = difficulty_file(cfg.curriculum.difficulty_path, cfg.train.output_dir)
        if use_curriculum:
            if not difficulty_path:
                raise ConfigError(
                    "objective.curriculum=true needs curriculum.difficulty_path (run `sead difficulty` first, or "
                    "set curriculum.difficulty_path={output_dir}/difficulty.jsonl to estimate it in the run folder)"
                )
            if not Path(difficulty_path).exists() and cfg.curriculum.auto_estimate:
                estimate_before_training(
                    self.accelerator, cfg, self.student, self.tokenizer, self.items, difficulty_path
                )
            difficulties = load_difficulties(difficulty_path, self.items)
        sampler_cfg = cfg.curriculum if use_curriculum else type(cfg.curriculum)(seed=cfg.curriculum.seed)
        self.sampler = build_sampler(sampler_cfg, len(self.items), cfg.train.steps, difficulties)
        self.notes += sampler_notes(self.sampler, cfg.train.batch_size, difficulty_path)
        has_answers = any(item.answer is not None for item in self.items)
        if self.method.needs_answers and not all(item.answer is not None for item in self.items):
            raise ConfigError(
                f"objective.method={cfg.objective.method} needs a reference answer for every prompt; "
                "set data.answer_field to the answer column"
            )
        self.verifier = build_verifier(cfg.verifier) if has_answers or cfg.eval.every else None
        if has_answers:  # rows_to_items gives every item an answer or none
            self.notes += filter(
                None,
                [
                    unmatchable_note(
                        self.verifier,
                        self.items,
                        f"in data.path={cfg.data.path!r}",
                        "data",
                        "their verifier reward is always 0",
                    )
                ],
            )
        self.eval_benchmarks = None
        if cfg.eval.every and cfg.eval.data:
            self.eval_benchmarks = load_benchmarks(cfg.eval)

    def _check_prompt_lengths(self) -> None:
        """Prompts that do not fit the models' context or rollout.max_prompt_tokens: refused, cut or dropped."""
        cfg = self.cfg
        template = cfg.objective.opsd_template if self.method.teacher == "self" else None
        contexts = {"student": context_length(self.student), "teacher": context_length(self.teacher)}
        self.items, notes = fit_prompts(
            self.items,
            self.tokenizer,
            cfg.rollout,
            cfg.data.long_prompts,
            f"data.path={cfg.data.path!r}",
            contexts,
            template,
        )
        self.notes += notes

    def _resume(self) -> None:
        acc = self.accelerator
        path = latest_checkpoint(self.run_dir)
        if path is None:
            acc.print(f"no complete checkpoint in {self.run_dir}; starting from step 0")
            # lines of a run killed before its first checkpoint are redone
            drop_records_after(acc, self.metrics, self.run_dir, 0)
            return
        state = load_checkpoint(acc, path)
        self.step = int(state["step"])
        self.bad_streak = int(state.get("bad_streak", 0))
        self.sampler.load_state_dict(state["sampler"])
        drop_records_after(acc, self.metrics, self.run_dir, self.step)
        acc.print(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ loop
    def _rewards(self, indices):
        if self.verifier is None or all(self.items[i].answer is None for i in indices):
            return None
        answers = [self.items[i].answer for i in indices for _ in range(self.cfg.train.samples_per_prompt)]

        def score(rollout):
            return [float(self.verifier(text, ans)) for text, ans in zip(rollout.response_texts, answers)]

        return score

    def train(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        shown = cfg.logging.progress and acc.is_main_process
        progress = StepProgress(cfg.train.steps, start=self.step, enabled=shown, log_every=cfg.logging.log_every)
        stop = {"signal": None}

        def on_signal(signum, frame):
            if stop["signal"] is not None:  # a second signal: give up at once
                raise KeyboardInterrupt(f"signal {signum} again; exiting without a checkpoint")
            stop["signal"] = signum  # finish the step in flight, then checkpoint and exit

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with progress:
                while self.step < cfg.train.steps:
                    self._one_step(progress)
                    if self.bad_streak >= cfg.train.max_bad_steps:
                        self.save()
                        raise SeadError(
                            f"{self.bad_streak} consecutive steps had non-finite loss or gradients (last at step "
                            f"{self.step}); lower optim.lr, check the models' dtype, or raise train.max_bad_steps"
                        )
                    if stop["signal"] is not None:
                        path = self.save()
                        raise KeyboardInterrupt(
                            f"stopped by signal {stop['signal']} after step {self.step}; "
                            f"checkpoint {path} saved, resume with train.resume=true"
                        )
                    if self.step % cfg.train.save_every == 0 and self.step < cfg.train.steps:
                        self.save()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.save()
        final = self.save_final()
        if cfg.logging.trackers:
            acc.end_training()
        return final

    def _one_step(self, progress) -> None:
        cfg, acc = self.cfg, self.accelerator
        t_step = time.perf_counter()
        indices = self.sampler.next_batch(self.step, cfg.train.batch_size)
        share = len(indices) // acc.num_processes
        mine = indices[acc.process_index * share : (acc.process_index + 1) * share]
        want_samples = cfg.logging.samples_every > 0 and (self.step + 1) % cfg.logging.samples_every == 0
        result = self._run_step(mine, want_samples)
        if result.prompt_rewards is not None:
            self._update_sampler(indices, result.prompt_rewards)
        self.bad_streak = 0 if result.finite else self.bad_streak + 1
        self.step += 1
        record = self._record(result, t_step, self.bad_streak)
        # Sharded, every process takes part in the evaluation's forwards; the main one records it.
        if self.eval_benchmarks is not None and (acc.is_main_process or is_sharded(acc)):
            if should_evaluate(cfg.eval, self.step):
                progress.note(f"step {self.step}: evaluating on {', '.join(self.eval_benchmarks)}")
                t0 = time.perf_counter()
                record.update(
                    evaluate_during_training(
                        acc.unwrap_model(self.student),
                        self.tokenizer,
                        cfg.eval,
                        self.verifier,
                        self.step,
                        benchmarks=self.eval_benchmarks,
                    )
                )
                record["time/eval_s"] = time.perf_counter() - t0
        if acc.is_main_process:
            self.metrics.write(record)
            if result.samples:
                append_samples(self.run_dir, result.samples)
        if cfg.logging.trackers:
            acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=self.step)
        progress.update(self.step, record)

    def _run_step(self, mine: list[int], want_samples: bool):
        """The method's step algorithm on this process's prompts ``mine``."""
        cfg = self.cfg
        common = dict(
            cfg=cfg,
            accelerator=self.accelerator,
            student=self.student,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            prompts=[self.items[i].prompt for i in mine],
            step=self.step,
            vocab=self.vocab,
            want_samples=want_samples,
        )
        # Looked up on the module at call time, so a test or benchmark can wrap the step function.
        if self.method.step == "grpo":
            return grpo.grpo_step(
                **common, reference=self.reference, answers=[self.items[i].answer for i in mine], verifier=self.verifier
            )
        teacher_prompts = None
        if self.method.teacher == "self":  # OPSD: the teacher reads the reference answer too
            teacher_prompts = [
                with_text(it.prompt, cfg.objective.opsd_template.format(prompt=it.prompt, answer=it.answer))
                for it in (self.items[i] for i in mine)
            ]
        return distillation.distill_step(
            **common,
            teacher=self.teacher,
            rewards_fn=self._rewards(mine),
            teacher_prompts=teacher_prompts,
            backend=self.backend,
        )

    def _update_sampler(self, indices, prompt_rewards_local: list[float]) -> None:
        per_prompt = prompt_rewards_local
        if self.accelerator.num_processes > 1:
            per_prompt = gather_object(per_prompt)
        self.sampler.update(list(indices), list(per_prompt))

    def _record(self, result, t_step: float, bad_streak: int) -> dict:
        record = {"step": self.step}
        record.update(result.metrics)
        record.update(self.sampler.metrics())
        elapsed = time.perf_counter() - t_step
        record["time/step_s"] = elapsed
        tokens = record.get("zones/tokens", 0.0)
        record["perf/tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        record["health/skipped_step"] = 0.0 if result.finite else 1.0
        record["health/bad_streak"] = float(bad_streak)
        return record

    # ----------------------------------------------------------- checkpoints
    def save(self) -> Path:
        state = {"step": self.step, "bad_streak": self.bad_streak, "sampler": self.sampler.state_dict()}
        return save_checkpoint(self.accelerator, self.run_dir, self.step, state, self.cfg.train.keep_checkpoints)

    def save_final(self) -> Path:
        """``final/``: the model (under LoRA its adapter) and tokenizer; ``lora.merge_final`` adds ``final/merged``."""
        m = self.cfg.model
        # The merged model: the base loaded again from model.student, plus the adapter just written.
        base = lambda: load_model(m.student, m.dtype, m.gguf_file, "model.student", m.trust_remote_code)
        merge = (lambda adapter_dir: merge_adapter(base(), adapter_dir)) if self.cfg.lora.merge_final else None
        student = self.accelerator.unwrap_model(self.student)
        # Sharded: gathered to process 0 (every process calls); under LoRA the adapters alone.
        state_dict = full_state_dict(self.accelerator, self.student, trainable_only=self.cfg.lora.enabled)
        return save_final_model(self.accelerator, self.run_dir, student, self.tokenizer, merge, state_dict)


def train_main(config_path: str | None, overrides: list[str]) -> Path:
    """Entry point of ``sead train``: returns the final model directory."""
    cfg = load_config(config_path, overrides)
    with claim_run_dir(cfg.train.output_dir, enabled=is_main_launch()) as claim:  # one run per folder
        trainer = Trainer(cfg).setup()
        claim.started()
        final = trainer.train()
    trainer.accelerator.print(
        f"done: {trainer.step} steps; metrics in {trainer.run_dir / 'metrics.jsonl'}; model in {final}"
    )
    return final
