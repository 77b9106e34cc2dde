"""SEAD inside TRL: ``SEADTrainer`` trains sead's objective on ``trl.DistillationTrainer``'s generations.

TRL keeps everything around the loss: generation (``transformers.generate`` or vLLM, colocated or
a server), PEFT, DeepSpeed / FSDP, chat templates, tools, trackers, checkpoints, ``push_to_hub``.
sead supplies the objective (``sead.methods``: SEAD's zones and annealed Zone C forward KL, EOPD,
reverse / forward KL, JSD, OPD), the scoring backends (``sead.scoring``: fused hidden states or
materialised logits) and the curriculum samplers (``sead.curriculum``).

One optimiser step. TRL buffers one generation batch per step and process (per-device batch x
gradient-accumulation steps rows), then shuffles and splits it into micro-batches:

1. ``_generate_and_score_completions``: after TRL has generated, a no-grad pass over the whole
   generation batch in micro-batches of the per-device size scores the teacher (its view is kept
   with the rows) and the student, giving per-token entropies and KLs; zones are assigned over the
   valid tokens of every process (``sead.integrations.trl_steps.step_zones``) and the step's loss
   normaliser is summed over processes. Zones, stats and the teacher view travel with each row.
2. ``compute_loss`` per micro-batch: the student's forward with grad (through TRL's forward
   redirection, so DDP / FSDP / DeepSpeed see it) and sead's loss with the step's zones and alpha,
   summed and divided by normaliser / processes. DDP averages over processes and TRL sums the
   accumulation steps, so the update is the one-batch update whatever the split.

Alpha anneals with ``state.global_step`` over ``max_steps``. Metrics (zone fractions, per-zone
entropies and losses, alpha, curriculum position) go into TRL's ``log`` under sead's keys.
Positions follow the attention mask (as ``generate`` and sead do), and the losses compare the
distributions at temperature 1 (TRL's ``temperature`` sets sampling only).
"""

from __future__ import annotations

import torch
from datasets import IterableDataset

try:
    from trl import DistillationTrainer
except ImportError as err:  # the extra is optional; say how to get it
    raise ImportError("sead.integrations.trl needs TRL: pip install 'sead[trl]' (trl>=1.16,<2)") from err

from sead.curriculum import sampler_notes
from sead.data import PromptItem
from sead.difficulty_file import load_difficulties
from sead.errors import ConfigError
from sead.integrations.trl_config import CURRICULUM_SAMPLERS, TRL_METHODS, SEADConfig
from sead.integrations.trl_steps import CurriculumBatches, step_zones, trl_micro_batch
from sead.methods import alpha_at, uses_zone_loss
from sead.models import check_shared_vocab, head_rows
from sead.scoring import TokenStats, choose_backend
from sead.zones import Zone

__all__ = ["SEADConfig", "SEADTrainer", "TRL_METHODS", "CURRICULUM_SAMPLERS"]

_STATS = ("teacher_entropy", "student_entropy", "fkl", "rkl")  # TokenStats fields, kept per row as sead_<name>


class _StepState:
    """What the micro-batches of one step share: normaliser, alpha, and the per-zone loss sums so far."""

    def __init__(self, normalizer: float, alpha: float, micro_batches: int, device):
        self.normalizer, self.alpha, self.left = normalizer, alpha, micro_batches
        self.zone_sums = torch.zeros(len(Zone), dtype=torch.float64, device=device)


class SEADTrainer(DistillationTrainer):
    """``trl.DistillationTrainer`` whose loss is sead's objective (see the module doc); args: ``SEADConfig``."""

    _tag_names = ["trl", "distillation", "sead"]
    _name = "SEAD"

    def __init__(self, model, teacher_model=None, args: SEADConfig | None = None, train_dataset=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SEADConfig(f"{str(name).rstrip('/').split('/')[-1]}-SEAD")
        if not isinstance(args, SEADConfig):
            raise ConfigError(f"SEADTrainer needs args=SEADConfig(...), got {type(args).__name__}")
        super().__init__(model, teacher_model, args, train_dataset, **kwargs)
        if self._is_vlm:
            raise ConfigError("SEADTrainer scores text-only models; pass a tokenizer, not a multimodal processor")
        if self.teacher_model is None:
            raise ConfigError("SEADTrainer needs teacher_model (a model or a path)")
        self.objective = args.sead_objective()
        student = self.accelerator.unwrap_model(self.model)
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        self.vocab = check_shared_vocab(self._tokenizer, None, head_rows(student), head_rows(teacher))
        self.backend = choose_backend(self.objective, student, teacher, self.vocab, say=self.accelerator.print)
        self.curriculum_batches = self._curriculum_batches() if self.objective.curriculum else None
        self._steps: dict[str, _StepState] = {}

    # ------------------------------------------------------------------------------ prompt order
    def _generation_batch_size(self) -> int:
        a = self.args
        return a.per_device_train_batch_size * self.accelerator.num_processes * a.gradient_accumulation_steps

    def _curriculum_batches(self) -> CurriculumBatches:
        data, key = self.train_dataset, self.args.difficulty_id_field
        if data is None or isinstance(data, IterableDataset):
            raise ConfigError("SEADConfig.curriculum=True needs a map-style train_dataset (not streaming)")
        if key not in data.column_names:
            raise ConfigError(
                f"SEADConfig.difficulty_id_field={key!r} is not a train_dataset column "
                f"({', '.join(data.column_names)}); name the column holding the ids of difficulty_path"
            )
        items = [PromptItem(id=str(i), question="", answer=None, prompt="") for i in data[key]]
        batches = CurriculumBatches(
            self.args.sead_curriculum(),
            load_difficulties(self.args.difficulty_path, items),
            total_steps=self.args.max_steps,
            batch_size=self._generation_batch_size(),
            repeats=self.args.gradient_accumulation_steps,
        )
        for note in sampler_notes(batches.new_sampler(), batches.batch_size, self.args.difficulty_path):
            self.accelerator.print(f"curriculum: {note}")
        return batches

    def _get_train_sampler(self, dataset=None):
        if self.curriculum_batches is None:
            return super()._get_train_sampler(dataset)
        return self.curriculum_batches

    # ------------------------------------------------------------------------------ scoring pass
    def _total_steps(self) -> int:
        return max(self.state.max_steps or self.args.max_steps, 1)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        rows = output["prompt_ids"].shape[0]
        size = self.args.per_device_train_batch_size if mode == "train" else rows
        views, stats = [], []
        for start in range(0, rows, size):
            view, st = self._score(trl_micro_batch(output, slice(start, start + size)))
            views.append(view)
            stats.append(st)
        mask = trl_micro_batch(output).mask
        stats = TokenStats(*(torch.cat([getattr(st, name) for st in stats]) for name in _STATS))
        step = step_zones(self.objective, self.accelerator, stats, mask)
        output["sead_teacher_view"] = torch.cat(views)
        output["sead_zones"] = step.zones
        output.update({f"sead_{name}": getattr(stats, name) for name in _STATS})

        alpha = alpha_at(self.objective, self.state.global_step, self._total_steps())
        micro_batches = self.args.gradient_accumulation_steps if mode == "train" else 1
        self._steps[mode] = _StepState(step.normalizer, alpha, micro_batches, mask.device)
        metrics = {**step.metrics, "sched/alpha": alpha, "entropy": step.metrics["entropy/student_mean"]}
        if mode == "train" and self.curriculum_batches is not None:
            metrics.update(self.curriculum_batches.metrics_at(self.state.global_step))
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(value))
        return output

    @torch.no_grad()
    def _score(self, mb):
        """Teacher view and per-token stats of one micro-batch, both models routed through their wrappers."""
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        student = self.accelerator.unwrap_model(self.model_wrapped)
        self.teacher_model.eval()
        view = self._forward_redirection(
            self.teacher_model, teacher, self.backend.teacher, teacher, mb.input_ids, mb.attention_mask, mb.prompt_len
        )
        student_view = self._forward_redirection(self.model_wrapped, student, self.backend.student, student, mb)
        return view, self.backend.stats(student_view, view, mb.mask)

    # ------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        step = self._steps[mode]
        mb = trl_micro_batch(inputs)
        zones = inputs["sead_zones"]
        stats = TokenStats(*(inputs[f"sead_{name}"] for name in _STATS))
        # DDP averages gradients over processes: dividing by normaliser / processes makes the update
        # (sum over the step's tokens) / normaliser, as sead's own step does.
        denom = max(step.normalizer, 1.0) / self.accelerator.num_processes
        unwrapped = self.accelerator.unwrap_model(model)
        loss, token_losses = self._forward_redirection(
            model, unwrapped, self._sead_loss, unwrapped, mb, inputs["sead_teacher_view"], zones, stats, step, denom
        )
        step.zone_sums += torch.stack([token_losses[zones == z].sum() for z in Zone]).double()
        step.left -= 1
        if step.left == 0:
            self._log_losses(mode, step)
        return (loss, None) if return_outputs else loss

    def _sead_loss(self, unwrapped, mb, teacher_view, zones, stats, step: _StepState, denom: float):
        view = self.backend.student(unwrapped, mb)
        return self.backend.losses(view, teacher_view, mb, zones, step.alpha, denom, stats)

    def _log_losses(self, mode: str, step: _StepState) -> None:
        sums = step.zone_sums
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, "sum")
        sums = (sums / max(step.normalizer, 1.0)).tolist()
        self._metrics[mode]["loss/total"].append(sum(sums))
        if uses_zone_loss(self.objective):
            self._metrics[mode]["loss/zone_b"].append(sums[Zone.B])
            self._metrics[mode]["loss/zone_c"].append(sums[Zone.C])
