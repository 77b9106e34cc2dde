"""The method registry: one ``Method`` record per training method, and the ``objective`` section that picks one.

Config validation reads the names, the trainer reads the teacher kind, the step algorithm and
whether every prompt needs a reference answer, ``sead.scoring`` reads the per-token loss on
materialised logits and the per-token ``(w_rkl, w_fkl)`` weights of the fused kernel. Adding a
distillation method is one record here plus its tests and docs (docs/DESIGN.md has a worked
example); nothing else branches on the method's name.

Shapes: B rollout rows, R response positions, V vocabulary.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sead.errors import ConfigError
from sead.fused import sead_weights
from sead.objectives import (
    divergence_token_losses,
    eopd_token_losses,
    opd_token_losses,
    sead_token_losses,
)
from sead.schedule import cosine_alpha
from sead.settings import setting
from sead.zones import Zone, check_fractions

__all__ = [
    "ObjectiveConfig",
    "Method",
    "METHODS",
    "METHOD_NAMES",
    "get_method",
    "loss_method",
    "alpha_at",
    "uses_zone_loss",
    "normalizer_mask",
    "reads_alpha",
    "sampled_logprobs",
    "token_losses",
    "fused_weights",
    "fused_reason",
]

# (cfg, student_logits_BRV, teacher_logits_BRV, targets_BR, mask_BR, zones_BR, alpha) -> token losses (B, R)
TokenLosses = Callable[..., torch.Tensor]
# (cfg, mask_BR, zones_BR, alpha, teacher_entropy_BR) -> (w_rkl, w_fkl), each (B, R)
FusedWeights = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _never(cfg: ObjectiveConfig) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    """What one method is made of. ``knobs`` are the ``objective.*`` keys it reads.

    ``teacher``: ``model`` (a separate teacher checkpoint), ``self`` (the student scores with
    privileged context, ``objective.opsd_*``) or ``none`` (reward-only). ``step``: the step
    algorithm, ``distill`` (``sead.step``) or ``grpo`` (``sead.grpo``). ``loss_from``: the config
    key naming another method whose per-token loss this one uses (OPSD's divergence).
    """

    name: str
    summary: str
    teacher: str = "model"
    step: str = "distill"
    token_losses: TokenLosses | None = None
    fused_weights: FusedWeights | None = None
    fused_off_reason: str = ""
    zoned: Callable[[ObjectiveConfig], bool] = _never  # the loss itself depends on zones
    uses_alpha: bool = False  # the loss reads the annealed forward-KL weight
    needs_answers: bool = False  # every prompt needs a reference answer
    initial_copy: Callable[[ObjectiveConfig], bool] = _never  # keep a frozen copy of the initial student
    loss_from: str | None = None
    knobs: tuple[str, ...] = ()


def sampled_logprobs(logits_BRV: torch.Tensor, targets_BR: torch.Tensor) -> torch.Tensor:
    """Float32 log-probability of each sampled token: (B, R, V), (B, R) -> (B, R)."""
    logp = torch.log_softmax(logits_BRV.float(), dim=-1)
    return logp.gather(-1, targets_BR.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------ per-method token losses
def _opd_losses(cfg, student_BRV, teacher_BRV, targets_BR, mask_BR, zones_BR, alpha):
    logprobs = sampled_logprobs(student_BRV, targets_BR)
    teacher_lp = sampled_logprobs(teacher_BRV, targets_BR)
    return opd_token_losses(logprobs, logprobs.detach(), teacher_lp, mask_BR, cfg.clip_eps)


def _divergence_losses(kind: str) -> TokenLosses:
    def losses(cfg, student_BRV, teacher_BRV, targets_BR, mask_BR, zones_BR, alpha):
        return divergence_token_losses(student_BRV, teacher_BRV, mask_BR, kind, cfg.beta, cfg.top_k)

    return losses


def _eopd_losses(cfg, student_BRV, teacher_BRV, targets_BR, mask_BR, zones_BR, alpha):
    return eopd_token_losses(student_BRV, teacher_BRV, mask_BR, cfg.tau, cfg.top_k)


def _sead_losses(cfg, student_BRV, teacher_BRV, targets_BR, mask_BR, zones_BR, alpha):
    if cfg.zones:
        return sead_token_losses(student_BRV, teacher_BRV, zones_BR, alpha, cfg.lam, cfg.zone_c_mix, cfg.top_k)
    rkl = divergence_token_losses(student_BRV, teacher_BRV, mask_BR, "rkl", top_k=cfg.top_k)
    fkl = divergence_token_losses(student_BRV, teacher_BRV, mask_BR, "fkl", top_k=cfg.top_k)
    return rkl + alpha * cfg.lam * fkl


# ------------------------------------------------------------------ per-method fused weights
def _rkl_weights(cfg, mask_BR, zones_BR, alpha, teacher_entropy_BR):
    valid = mask_BR.float()
    return valid, 0 * valid


def _fkl_weights(cfg, mask_BR, zones_BR, alpha, teacher_entropy_BR):
    valid = mask_BR.float()
    return 0 * valid, valid


def _eopd_weights(cfg, mask_BR, zones_BR, alpha, teacher_entropy_BR):
    valid = mask_BR.float()  # forward KL only where the teacher is unsure (the pass-1 entropy)
    return valid, valid * (teacher_entropy_BR > cfg.tau).float()


def _sead_weights(cfg, mask_BR, zones_BR, alpha, teacher_entropy_BR):
    if not cfg.zones:
        valid = mask_BR.float()
        return valid, alpha * cfg.lam * valid
    return sead_weights(zones_BR, alpha, cfg.lam, cfg.zone_c_mix)


_ZONE_KNOBS = (
    "zones",
    "anneal",
    "curriculum",
    "fractions",
    "zone_mode",
    "teacher_threshold",
    "student_threshold",
    "alpha_start",
    "alpha_end",
    "lam",
    "zone_c_mix",
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "opd",
            "sampled-token reverse KL as a clipped policy gradient (plain on-policy distillation)",
            token_losses=_opd_losses,
            fused_off_reason="needs sampled-token terms the fused kernel does not compute",
            knobs=("clip_eps",),
        ),
        Method(
            "rkl",
            "full-vocabulary reverse KL(student || teacher) on every token",
            token_losses=_divergence_losses("rkl"),
            fused_weights=_rkl_weights,
            knobs=("top_k",),
        ),
        Method(
            "fkl",
            "full-vocabulary forward KL(teacher || student) on every token",
            token_losses=_divergence_losses("fkl"),
            fused_weights=_fkl_weights,
            knobs=("top_k",),
        ),
        Method(
            "jsd",
            "generalised Jensen-Shannon divergence with weight beta",
            token_losses=_divergence_losses("jsd"),
            fused_off_reason="needs JSD terms the fused kernel does not compute",
            knobs=("beta", "top_k"),
        ),
        Method(
            "eopd",
            "reverse KL everywhere plus forward KL where the teacher's entropy exceeds tau (EOPD)",
            token_losses=_eopd_losses,
            fused_weights=_eopd_weights,
            knobs=("tau", "top_k"),
        ),
        Method(
            "sead",
            "entropy zones: skip A, reverse KL on B, annealed forward KL on C; optional curriculum",
            token_losses=_sead_losses,
            fused_weights=_sead_weights,
            zoned=lambda cfg: cfg.zones,
            uses_alpha=True,
            knobs=(*_ZONE_KNOBS, "top_k"),
        ),
        Method(
            "grpo",
            "verifier rewards, group-normalised advantages, clipped surrogate; no teacher",
            teacher="none",
            step="grpo",
            needs_answers=True,
            initial_copy=lambda cfg: cfg.kl_coef > 0,
            knobs=("group_size", "clip_eps", "clip_eps_high", "kl_coef"),
        ),
        Method(
            "opsd",
            "the student is its own teacher, with the reference answer in the teacher's context",
            teacher="self",
            needs_answers=True,
            initial_copy=lambda cfg: cfg.opsd_teacher == "initial",
            loss_from="opsd_divergence",
            knobs=("opsd_teacher", "opsd_divergence", "opsd_template"),
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# OPSD trains with another method's per-token loss on its self-teacher's logits.
OPSD_DIVERGENCES = tuple(name for name in ("rkl", "fkl", "jsd", "sead") if METHODS[name].token_losses is not None)


@dataclass
class ObjectiveConfig:
    """Which loss. ``sead`` has independent switches: T = ``zones``, A = ``anneal``, C = ``curriculum``.

    Without T every valid token gets RKL + alpha * lam * FKL; without A alpha stays at alpha_start.
    """

    method: str = setting("sead", "the loss: " + " | ".join(METHOD_NAMES))
    zones: bool = setting(True, "sead T: token zones by entropy (A skipped, B reverse KL, C forward KL)")
    anneal: bool = setting(True, "sead A: anneal the Zone C weight alpha from alpha_start to alpha_end (cosine)")
    curriculum: bool = setting(False, "sead C: draw prompts by the curriculum section's sampler")
    fractions: list[float] = setting([0.5, 0.4, 0.1], "percentile zones: shares [A, B, C] of the valid tokens")
    zone_mode: str = setting("percentile", "percentile (fractions) | threshold (teacher/student_threshold)")
    teacher_threshold: float = setting(1.0, "threshold zones: teacher entropy (nats) above which a token is C")
    student_threshold: float | None = setting(
        None, "threshold zones: B above this student entropy; null: every non-C token"
    )
    alpha_start: float = setting(0.8, "Zone C forward-KL weight alpha at the first step")
    alpha_end: float = setting(0.0, "alpha at the last step (with anneal)")
    lam: float = setting(1.0, "Zone C loss scale lambda")
    zone_c_mix: str = setting("eq4", "Zone C: eq4 (alpha lam FKL) | interpolate (lam (alpha FKL + (1 - alpha) RKL))")
    tau: float = setting(1.0, "eopd: teacher-entropy gate, nats")
    beta: float = setting(0.5, "jsd: mixture weight in [0, 1]")
    clip_eps: float = setting(0.2, "opd and grpo: policy-gradient ratio clip")
    top_k: int | None = setting(None, "teacher top-k support plus one tail bucket; null: the full vocabulary")
    # Where the method and the models allow it; otherwise materialised logits, with the reason printed.
    fused: bool = setting(True, "chunked loss from hidden states: no full logits, no backward work on Zone A")
    chunk_size: int = setting(1024, "fused loss: rows per chunk")
    group_size: int = setting(8, "grpo: rollouts per prompt (replaces train.samples_per_prompt)")
    clip_eps_high: float | None = setting(None, "grpo: upper ratio clip; null: clip_eps")
    kl_coef: float = setting(0.0, "grpo: weight of the KL to the initial policy")
    opsd_teacher: str = setting(
        "initial", "opsd: the teacher is the initial (frozen copy) | current (live, no grad) student"
    )
    opsd_divergence: str = setting("rkl", "opsd: rkl | fkl | jsd | sead (zones)")
    opsd_template: str = setting(
        "{prompt}\n\nReference answer (for you only): {answer}",
        "opsd: the teacher's context, with the privileged {answer}",
    )

    def __post_init__(self):
        if self.method not in METHODS:
            hint = difflib.get_close_matches(self.method, METHOD_NAMES, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"use one of {', '.join(METHOD_NAMES)}"
            raise ConfigError(f"objective.method={self.method!r} is unknown; {fix}")
        try:
            check_fractions(self.fractions)
        except ValueError as err:
            raise ConfigError(f"objective.fractions: {err}; e.g. objective.fractions=[0.5,0.4,0.1]") from None
        if self.zone_mode not in ("percentile", "threshold"):
            raise ConfigError(f"objective.zone_mode must be percentile or threshold, got {self.zone_mode!r}")
        if self.zone_c_mix not in ("eq4", "interpolate"):
            raise ConfigError(f"objective.zone_c_mix must be eq4 or interpolate, got {self.zone_c_mix!r}")
        for key in ("alpha_start", "alpha_end", "beta"):  # weights of a convex mix: outside [0, 1] a term flips sign
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"objective.{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("teacher_threshold", "tau"):  # entropies in nats are >= 0
            if getattr(self, key) < 0:
                raise ConfigError(f"objective.{key} must be >= 0 (an entropy in nats), got {getattr(self, key)}")
        if self.student_threshold is not None and self.student_threshold < 0:
            raise ConfigError(f"objective.student_threshold must be >= 0 (nats) or null, got {self.student_threshold}")
        if not 0 < self.clip_eps < 1:
            raise ConfigError(f"objective.clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"objective.top_k must be >= 1 or null, got {self.top_k}")
        if self.lam < 0:
            raise ConfigError(f"objective.lam must be >= 0, got {self.lam}")
        if self.chunk_size < 1:
            raise ConfigError(f"objective.chunk_size must be >= 1, got {self.chunk_size}")
        if self.group_size < 2:
            raise ConfigError(
                f"objective.group_size must be >= 2 for group-normalised advantages, got {self.group_size}"
            )
        if self.clip_eps_high is not None and not 0 < self.clip_eps_high < 10:
            raise ConfigError(f"objective.clip_eps_high must be in (0, 10) or null, got {self.clip_eps_high}")
        if self.kl_coef < 0:
            raise ConfigError(f"objective.kl_coef must be >= 0, got {self.kl_coef}")
        if self.opsd_teacher not in ("initial", "current"):
            raise ConfigError(f"objective.opsd_teacher must be initial or current, got {self.opsd_teacher!r}")
        if self.opsd_divergence not in OPSD_DIVERGENCES:
            raise ConfigError(
                f"objective.opsd_divergence must be one of {', '.join(OPSD_DIVERGENCES)}, got {self.opsd_divergence!r}"
            )
        if "{prompt}" not in self.opsd_template or "{answer}" not in self.opsd_template:
            raise ConfigError("objective.opsd_template must contain {prompt} and {answer}")


def get_method(name: str) -> Method:
    """The record of ``name`` (names are validated at config load; this is for callers past it)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method {name!r} is not registered; registered: {', '.join(METHOD_NAMES)}") from None


def loss_method(cfg: ObjectiveConfig) -> Method:
    """The record whose per-token loss ``cfg.method`` trains with (OPSD's is its ``opsd_divergence``)."""
    method = get_method(cfg.method)
    return get_method(getattr(cfg, method.loss_from)) if method.loss_from else method


def reads_alpha(name: str, objective: dict) -> bool:
    """Whether a run of method ``name`` with the saved ``objective`` section (a plain dict, e.g. from
    a run's config.yaml; missing keys take their defaults) trains with the annealed weight alpha."""
    method = METHODS.get(name)
    if method is not None and method.loss_from:
        default = ObjectiveConfig.__dataclass_fields__[method.loss_from].default
        method = METHODS.get(objective.get(method.loss_from, default))
    return bool(method and method.uses_alpha)


def alpha_at(cfg: ObjectiveConfig, step: int, total_steps: int) -> float:
    """Zone C forward-KL weight at ``step``: cosine-annealed with A on, held at alpha_start with A off."""
    if cfg.anneal:
        return cosine_alpha(step, total_steps, cfg.alpha_start, cfg.alpha_end)
    return cfg.alpha_start


def uses_zone_loss(cfg: ObjectiveConfig) -> bool:
    """True when the loss itself depends on zones (SEAD, or OPSD with SEAD zones, with T on)."""
    return loss_method(cfg).zoned(cfg)


def normalizer_mask(cfg: ObjectiveConfig, mask: torch.Tensor, zones: torch.Tensor) -> torch.Tensor:
    """Which tokens count in the loss normaliser: B u C for zoned SEAD, every valid token otherwise."""
    if uses_zone_loss(cfg):
        return (zones == Zone.B) | (zones == Zone.C)
    return mask.bool()


def token_losses(
    cfg: ObjectiveConfig,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    zones: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Per-token loss (B, R) for ``cfg.method``; zero on masked (and, for zoned SEAD, Zone A) tokens."""
    method = loss_method(cfg)
    if method.token_losses is None:
        raise ValueError(f"method {method.name!r} has no per-token distillation loss (its step computes its own)")
    return method.token_losses(cfg, student_logits, teacher_logits, targets, mask, zones, alpha)


def fused_reason(cfg: ObjectiveConfig) -> str:
    """Why ``cfg`` cannot use the fused hidden-state loss; empty when it can."""
    method = loss_method(cfg)
    if method.fused_weights is None:
        return f"{cfg.method} {method.fused_off_reason or 'has no fused weights'}"
    if cfg.top_k is not None:
        return "objective.top_k is set (the fused kernel is full-vocabulary)"
    return ""


def fused_weights(
    cfg: ObjectiveConfig, mask: torch.Tensor, zones: torch.Tensor, alpha: float, teacher_entropy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (w_rkl, w_fkl) of ``cfg.method`` for the fused kernel; a token with both 0 costs nothing."""
    return loss_method(cfg).fused_weights(cfg, mask, zones, alpha, teacher_entropy)
