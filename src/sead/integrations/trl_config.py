"""``SEADConfig``: TRL's ``DistillationConfig`` plus the knobs of sead's objective and curriculum.

Each knob takes its default and help text from the sead section it feeds (``ObjectiveConfig`` in
``sead.methods``, ``CurriculumConfig`` in ``sead.curriculum``), so the two never drift apart; the
config builds those sections with :meth:`SEADConfig.sead_objective` and
:meth:`SEADConfig.sead_curriculum`, which validate them. Imported through ``sead.integrations.trl``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trl import DistillationConfig

from sead.curriculum import CurriculumConfig
from sead.errors import ConfigError
from sead.methods import METHODS, ObjectiveConfig

__all__ = ["SEADConfig", "TRL_METHODS", "CURRICULUM_SAMPLERS"]

# The registry's methods that train on a separate teacher model's scores in a distillation step.
TRL_METHODS: tuple[str, ...] = tuple(
    name for name, m in METHODS.items() if m.teacher == "model" and m.step == "distill" and m.token_losses is not None
)
# Samplers that need only a difficulty file; ``refreshing`` also learns from verifier pass rates,
# which TRL's trainer does not compute, and ``uniform`` is TRL's own shuffled order.
CURRICULUM_SAMPLERS = ("competence", "sorted")

# SEADConfig field -> the ObjectiveConfig / CurriculumConfig field it sets (renamed where TRL has
# a field of that name or the bare name would be unclear among TRL's arguments).
OBJECTIVE_KNOBS = {
    "method": "method",
    "zones": "zones",
    "anneal": "anneal",
    "curriculum": "curriculum",
    "zone_fractions": "fractions",
    "zone_mode": "zone_mode",
    "teacher_threshold": "teacher_threshold",
    "student_threshold": "student_threshold",
    "alpha_start": "alpha_start",
    "alpha_end": "alpha_end",
    "lam": "lam",
    "zone_c_mix": "zone_c_mix",
    "tau": "tau",
    "clip_eps": "clip_eps",
    "teacher_top_k": "top_k",
    "fused": "fused",
    "chunk_size": "chunk_size",
}
CURRICULUM_KNOBS = {
    "curriculum_sampler": "sampler",
    "difficulty_path": "difficulty_path",
    "curriculum_c0": "c0",
    "curriculum_p": "p",
    "curriculum_noise_sigma": "noise_sigma",
}


def _knob(section: type, key: str, default=dataclasses.MISSING, note: str = ""):
    """A field with ``section.key``'s default (or ``default``) and help text, ``note`` appended."""
    source = {f.name: f for f in dataclasses.fields(section)}[key]
    meta = {"help": source.metadata.get("help", "") + note}
    if default is not dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=meta)
    return dataclasses.field(default=source.default, metadata=meta)


@dataclass
class SEADConfig(DistillationConfig):
    """``DistillationConfig`` with sead's objective (SEAD zones, annealing, curriculum, EOPD, KLs, OPD).

    ``method`` is one of ``TRL_METHODS`` (opd, rkl, fkl, jsd, eopd, sead); ``jsd`` reads TRL's own
    ``beta`` (same convention: 0 forward KL, 1 reverse KL). TRL's ``temperature`` sets sampling
    only: sead's losses compare the models' distributions at temperature 1. ``curriculum`` (SEAD's
    C switch) draws each step's prompts with sead's ``curriculum_sampler`` over the per-prompt
    difficulties in ``difficulty_path`` (written by ``sead difficulty``), matched to the train
    set's ``difficulty_id_field`` column; it needs ``max_steps`` (the schedule spans the run).
    """

    method: str = _knob(ObjectiveConfig, "method", note=f" (here: {' | '.join(TRL_METHODS)})")
    zones: bool = _knob(ObjectiveConfig, "zones")
    anneal: bool = _knob(ObjectiveConfig, "anneal")
    curriculum: bool = _knob(ObjectiveConfig, "curriculum")
    zone_fractions: list[float] = _knob(ObjectiveConfig, "fractions")
    zone_mode: str = _knob(ObjectiveConfig, "zone_mode")
    teacher_threshold: float = _knob(ObjectiveConfig, "teacher_threshold")
    student_threshold: float | None = _knob(ObjectiveConfig, "student_threshold")
    alpha_start: float = _knob(ObjectiveConfig, "alpha_start")
    alpha_end: float = _knob(ObjectiveConfig, "alpha_end")
    lam: float = _knob(ObjectiveConfig, "lam")
    zone_c_mix: str = _knob(ObjectiveConfig, "zone_c_mix")
    tau: float = _knob(ObjectiveConfig, "tau")
    clip_eps: float = _knob(ObjectiveConfig, "clip_eps")
    teacher_top_k: int | None = _knob(ObjectiveConfig, "top_k", note=" (TRL's top_k is the sampling top-k)")
    fused: bool = _knob(ObjectiveConfig, "fused")
    chunk_size: int = _knob(ObjectiveConfig, "chunk_size")
    curriculum_sampler: str = _knob(
        CurriculumConfig, "sampler", default="competence", note=f" (here: {' | '.join(CURRICULUM_SAMPLERS)})"
    )
    difficulty_path: str | None = _knob(CurriculumConfig, "difficulty_path")
    difficulty_id_field: str = dataclasses.field(
        default="id", metadata={"help": "train-set column whose values are the ids in difficulty_path"}
    )
    curriculum_c0: float = _knob(CurriculumConfig, "c0")
    curriculum_p: float = _knob(CurriculumConfig, "p")
    curriculum_noise_sigma: float = _knob(CurriculumConfig, "noise_sigma")

    def __post_init__(self):
        super().__post_init__()
        objective = self.sead_objective()
        if objective.method not in TRL_METHODS:
            raise ConfigError(
                f"SEADConfig.method={objective.method!r} does not train on a teacher model's scores; "
                f"use one of {', '.join(TRL_METHODS)}"
            )
        if not objective.curriculum:
            return
        self.sead_curriculum()
        if self.curriculum_sampler not in CURRICULUM_SAMPLERS:
            raise ConfigError(
                f"SEADConfig.curriculum_sampler={self.curriculum_sampler!r} is not available in TRL; "
                f"use one of {', '.join(CURRICULUM_SAMPLERS)} (refreshing needs verifier pass rates)"
            )
        if not self.difficulty_path:
            raise ConfigError(
                "SEADConfig.curriculum=True needs difficulty_path: run `sead difficulty` on the train set first"
            )
        if self.max_steps is None or self.max_steps <= 0:
            raise ConfigError("SEADConfig.curriculum=True needs max_steps > 0: the curriculum spans the run's steps")

    def sead_objective(self) -> ObjectiveConfig:
        """The ``objective`` section these knobs describe (``beta`` from TRL's own field); validated."""
        values = {key: getattr(self, name) for name, key in OBJECTIVE_KNOBS.items()}
        return _section(ObjectiveConfig, OBJECTIVE_KNOBS, "objective", beta=self.beta, **values)

    def sead_curriculum(self) -> CurriculumConfig:
        """The ``curriculum`` section these knobs describe, seeded with TRL's ``seed``; validated."""
        values = {key: getattr(self, name) for name, key in CURRICULUM_KNOBS.items()}
        return _section(CurriculumConfig, CURRICULUM_KNOBS, "curriculum", seed=self.seed, **values)


def _section(cls: type, knobs: dict[str, str], prefix: str, **values):
    """``cls(**values)``, its ConfigError naming the SEADConfig field rather than the sead config key."""
    try:
        return cls(**values)
    except ConfigError as err:
        message = str(err)
        for name, key in sorted(knobs.items(), key=lambda kv: -len(kv[1])):  # longest key first
            message = message.replace(f"{prefix}.{key}", f"SEADConfig.{name}")
        raise ConfigError(message) from None
