"""Run configuration: one dataclass per concern, loaded from YAML with ``key=value`` overrides.

Values are coerced to the declared field types (so ``optim.lr=1e-6`` is a float, not YAML's
string), unknown keys are rejected with a suggestion, and each section validates itself in
``__post_init__``. The resolved config is saved next to every run (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sead.errors import ConfigError
from sead.rollout import RolloutConfig
from sead.trackers import check_trackers

__all__ = [
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "TrainConfig",
    "LoggingConfig",
    "RunConfig",
    "METHODS",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "apply_overrides",
]

METHODS = ("opd", "rkl", "fkl", "jsd", "eopd", "sead", "grpo", "opsd")
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class ModelConfig:
    """Student and teacher checkpoints: hub names or local directories (``gguf_file`` for GGUF)."""

    student: str = ""
    teacher: str = ""
    tokenizer: str | None = None  # default: the student's
    gguf_file: str | None = None
    teacher_gguf_file: str | None = None
    dtype: str = "float32"
    teacher_dtype: str | None = None  # default: same as dtype
    trust_remote_code: bool = False

    def __post_init__(self):
        for key in ("dtype", "teacher_dtype"):
            value = getattr(self, key)
            if value is not None and value not in DTYPES:
                raise ConfigError(f"model.{key}={value!r} is not one of {DTYPES}")


@dataclass
class ObjectiveConfig:
    """Which loss. ``sead`` has independent switches: T = ``zones``, A = ``anneal``, C = ``curriculum``.

    Without T every valid token gets RKL + alpha * lam * FKL; without A alpha stays at alpha_start.
    """

    method: str = "sead"
    zones: bool = True
    anneal: bool = True
    curriculum: bool = False
    fractions: list[float] = field(default_factory=lambda: [0.5, 0.4, 0.1])
    zone_mode: str = "percentile"  # percentile | threshold
    teacher_threshold: float = 1.0
    student_threshold: float | None = None
    alpha_start: float = 0.8
    alpha_end: float = 0.0
    lam: float = 1.0
    zone_c_mix: str = "eq4"  # eq4 | interpolate
    tau: float = 1.0  # EOPD teacher-entropy gate, nats
    beta: float = 0.5  # JSD
    clip_eps: float = 0.2  # OPD / GRPO policy-gradient clip
    top_k: int | None = None  # teacher top-k support (+ tail bucket); None = full vocabulary
    # Chunked loss from hidden states (no full logits; no backward work on Zone A) where the method
    # and the models allow it; otherwise materialised logits, with the reason printed.
    fused: bool = True
    chunk_size: int = 1024
    # GRPO: G rollouts per prompt (overrides train.samples_per_prompt), asymmetric clip, KL to the initial policy.
    group_size: int = 8
    clip_eps_high: float | None = None  # default: clip_eps
    kl_coef: float = 0.0
    # OPSD: the student is its own teacher, with privileged information in the teacher's context.
    opsd_teacher: str = "initial"  # initial (frozen copy) | current (live weights, no grad)
    opsd_divergence: str = "rkl"  # rkl | fkl | jsd | sead (zones)
    opsd_template: str = "{prompt}\n\nReference answer (for you only): {answer}"

    def __post_init__(self):
        if self.method not in METHODS:
            hint = difflib.get_close_matches(self.method, METHODS, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"use one of {', '.join(METHODS)}"
            raise ConfigError(f"objective.method={self.method!r} is unknown; {fix}")
        from sead.zones import check_fractions

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
            raise ConfigError(f"objective.group_size must be >= 2 for group-normalised advantages, got {self.group_size}")
        if self.clip_eps_high is not None and not 0 < self.clip_eps_high < 10:
            raise ConfigError(f"objective.clip_eps_high must be in (0, 10) or null, got {self.clip_eps_high}")
        if self.kl_coef < 0:
            raise ConfigError(f"objective.kl_coef must be >= 0, got {self.kl_coef}")
        if self.opsd_teacher not in ("initial", "current"):
            raise ConfigError(f"objective.opsd_teacher must be initial or current, got {self.opsd_teacher!r}")
        if self.opsd_divergence not in ("rkl", "fkl", "jsd", "sead"):
            raise ConfigError(f"objective.opsd_divergence must be rkl, fkl, jsd or sead, got {self.opsd_divergence!r}")
        if "{prompt}" not in self.opsd_template or "{answer}" not in self.opsd_template:
            raise ConfigError("objective.opsd_template must contain {prompt} and {answer}")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then ``schedule`` decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self):
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"optim.lr must be > 0 and finite, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"optim.eps must be in (0, 1), got {self.eps}; the default is 1e-8")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.max_grad_norm > 0:  # clipping to 0 would zero every gradient
            raise ConfigError(f"optim.max_grad_norm must be > 0 (inf: no clipping), got {self.max_grad_norm}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"optim.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class TrainConfig:
    """Step budget, batch geometry, seeds, checkpoints. ``batch_size`` = prompts per optimiser step."""

    steps: int = 100
    batch_size: int = 8
    samples_per_prompt: int = 1
    micro_batch_size: int = 8  # rollout rows per forward/backward on one process
    seed: int = 0
    output_dir: str = "runs/sead"
    save_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = False
    force_resume: bool = False
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    max_bad_steps: int = 5
    torch_threads: int | None = None

    def __post_init__(self):
        for key in ("steps", "batch_size", "samples_per_prompt", "micro_batch_size", "save_every", "max_bad_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"train.keep_checkpoints must be >= 0 (0 keeps all), got {self.keep_checkpoints}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if not self.output_dir:
            raise ConfigError("train.output_dir is empty; set train.output_dir=runs/NAME")
        if not 0 <= self.seed < 2**32:  # numpy's seed range (accelerate's set_seed seeds numpy too)
            raise ConfigError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"train.torch_threads must be >= 1 or null (torch's default), got {self.torch_threads}")


@dataclass
class LoggingConfig:
    """Console and file logging; trackers go through accelerate (``tensorboard``, ``wandb``)."""

    progress: bool = True
    samples_every: int = 10
    num_samples: int = 2
    trackers: list[str] = field(default_factory=list)
    project: str = "sead"

    def __post_init__(self):
        for key in ("samples_every", "num_samples"):
            if getattr(self, key) < 0:
                raise ConfigError(f"logging.{key} must be >= 0 (0 = none), got {getattr(self, key)}")
        check_trackers(self.trackers)


def _section_types() -> dict[str, type]:
    # Imported here so `import sead.config` stays light and the modules own their configs.
    from sead.curriculum import CurriculumConfig
    from sead.data import DataConfig
    from sead.evaluate import EvalConfig
    from sead.verifier import VerifierConfig

    return {
        "model": ModelConfig,
        "data": DataConfig,
        "rollout": RolloutConfig,
        "objective": ObjectiveConfig,
        "optim": OptimConfig,
        "train": TrainConfig,
        "logging": LoggingConfig,
        "verifier": VerifierConfig,
        "curriculum": CurriculumConfig,
        "eval": EvalConfig,
    }


@dataclass
class RunConfig:
    """Everything one ``sead train`` run needs; each attribute is one concern's dataclass."""

    name: str = "sead"
    model: Any = None
    data: Any = None
    rollout: Any = None
    objective: Any = None
    optim: Any = None
    train: Any = None
    logging: Any = None
    verifier: Any = None
    curriculum: Any = None
    eval: Any = None


class _Override(str):
    """A command-line value: its raw text, and its YAML reading for non-string fields."""

    parsed: Any = None


def _accepts_str(hint: Any) -> bool:
    return hint is str or str in typing.get_args(hint)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(value, _Override):
        # `data.template={problem}` must stay text, `optim.betas=[0.9,0.95]` must become a list.
        value = str(value) if _accepts_str(hint) else value.parsed
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        return _build(hint, value, key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}; e.g. {key}=[a,b]")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value) if hint is float else int(str(value), 0) if isinstance(value, str) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {'a number' if hint is float else 'an integer'}, got {value!r}") from None
        if hint is int and (not isinstance(number, int) or isinstance(number, bool)):
            if isinstance(number, float) and number.is_integer():
                return int(number)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if hint is float and math.isnan(float(number)):  # NaN passes every `<` range check below
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(number) if hint is float else number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        bad = unknown[0]
        hint = difflib.get_close_matches(bad, names, n=1)
        where = f"{prefix}.{bad}" if prefix else bad
        fix = f"did you mean {prefix + '.' if prefix else ''}{hint[0]}?" if hint else f"known keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key {where!r}; {fix}")
    kwargs = {}
    for name in names:
        if name in values:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(values[name], hints[name], key)
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a RunConfig from a nested dict (missing sections take their defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(data).__name__}")
    sections = _section_types()
    unknown = [k for k in data if k not in sections and k != "name"]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(sections), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"sections are: {', '.join(sections)}"
        raise ConfigError(f"unknown config section {unknown[0]!r}; {fix}")
    built = {}
    for name, cls in sections.items():
        raw = data.get(name) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {raw!r}")
        built[name] = _build(cls, raw, name)
    return RunConfig(name=str(data.get("name", "sead")), **built)


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (str subclasses from overrides turned into plain str, for YAML)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, str) else value

    return plain(dataclasses.asdict(cfg))


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"cannot apply override {dotted!r}: {part!r} is {nxt!r}, not a section of settings; "
                f"make {part!r} a mapping in the config file or fix the override"
            )
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML, then coerced to the field type)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value; e.g. optim.lr=1e-6")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key; write section.key=value, e.g. optim.lr=1e-6")
        value = _Override(raw)
        try:
            value.parsed = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value.parsed = raw
        _set_path(data, key.strip(), value)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass --config with a YAML file (see configs/)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}{where}: {problem}; fix the YAML syntax") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text; save the config as UTF-8") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path} must be a mapping of sections (train:, optim:, ...), got a YAML {type(data).__name__}; "
                "see configs/ for examples"
            )
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
