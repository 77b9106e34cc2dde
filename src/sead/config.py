"""Run configuration: one dataclass per concern, loaded from YAML with ``key=value`` overrides.

`RunConfig` holds one typed section per concern; each key is declared with its help text
(`sead.settings.setting`). Values are coerced to the declared field types (so ``optim.lr=1e-6`` is
a float, not YAML's string), unknown keys are rejected with a suggestion, and each section
validates itself in ``__post_init__``. Files (shipped recipes by name, ``base:`` chains, paths
relative to the file) are read by `sead.config_files`. The resolved config is saved next to every
run (``config.yaml``).
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

from sead.config_files import find_config, read_config_file
from sead.curriculum import CurriculumConfig
from sead.data import DataConfig
from sead.errors import ConfigError
from sead.evaluate import EvalConfig
from sead.lora import LoraConfig
from sead.methods import METHOD_NAMES, ObjectiveConfig
from sead.rollout import RolloutConfig
from sead.settings import setting
from sead.trackers import check_trackers
from sead.verifier import VerifierConfig

__all__ = [
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "TrainConfig",
    "LoggingConfig",
    "LoraConfig",
    "RunConfig",
    "METHODS",
    "section_types",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "apply_overrides",
]

METHODS = METHOD_NAMES  # the method registry owns the names (and the objective section)
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class ModelConfig:
    """Student and teacher checkpoints: hub names or local directories (``gguf_file`` for GGUF)."""

    student: str = setting("", "student checkpoint: hub name or local folder (the model trained)")
    teacher: str = setting("", "teacher checkpoint: hub name or local folder")
    tokenizer: str | None = setting(None, "tokenizer: hub name or local folder; null: the student's")
    gguf_file: str | None = setting(None, "GGUF file name inside the student checkpoint, if it is one")
    teacher_gguf_file: str | None = setting(None, "GGUF file name inside the teacher checkpoint, if it is one")
    dtype: str = setting("float32", "weights dtype: float32 | bfloat16 | float16 | auto")
    teacher_dtype: str | None = setting(None, "teacher weights dtype; null: the same as dtype")
    trust_remote_code: bool = setting(False, "let transformers run model code that ships with a checkpoint")
    attn_implementation: str | None = setting(
        None, "attention kernel of both models: null (transformers' default) | sdpa | eager | flash_attention_2"
    )
    gradient_checkpointing: bool = setting(False, "recompute the student's layer activations in backward")

    def __post_init__(self):
        for key in ("dtype", "teacher_dtype"):
            value = getattr(self, key)
            if value is not None and value not in DTYPES:
                raise ConfigError(f"model.{key}={value!r} is not one of {DTYPES}")
        if self.attn_implementation is not None and not self.attn_implementation.strip():
            raise ConfigError("model.attn_implementation is empty; set sdpa, eager, flash_attention_2 or null")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then ``schedule`` decay to ``min_lr_ratio * lr``."""

    lr: float = setting(1e-5, "peak learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    betas: list[float] = setting([0.9, 0.999], "AdamW betas [beta1, beta2]")
    eps: float = setting(1e-8, "AdamW epsilon")
    warmup_steps: int = setting(0, "linear warmup steps from 0 to lr")
    schedule: str = setting("cosine", "decay after warmup: cosine | linear | constant")
    min_lr_ratio: float = setting(0.0, "learning rate at the last step, as a fraction of lr")
    max_grad_norm: float = setting(1.0, "gradient norm clip")

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

    steps: int = setting(100, "optimiser steps")
    batch_size: int = setting(8, "prompts per optimiser step, over all processes")
    samples_per_prompt: int = setting(1, "rollouts per prompt")
    micro_batch_size: int = setting(8, "rollout rows per forward/backward on one process")
    seed: int = setting(0, "seed of torch, numpy and random for the run (rollout sampling)")
    output_dir: str = setting("runs/sead", "run folder; a relative path is relative to the current directory")
    save_every: int = setting(50, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = setting(2, "newest checkpoints kept; 0 keeps all")
    resume: bool = setting(False, "continue from the latest complete checkpoint in output_dir")
    force_resume: bool = setting(False, "resume even though the training config changed")
    mixed_precision: str = setting(
        "no", "accelerate mixed precision (autocast of the student; weights keep model.dtype): no | bf16 | fp16"
    )
    max_bad_steps: int = setting(5, "stop after this many non-finite steps in a row")
    torch_threads: int | None = setting(None, "CPU threads for torch; null: torch's default")

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

    progress: bool = setting(True, "show a progress bar")
    samples_every: int = setting(10, "write rollouts to samples.jsonl every N steps; 0 = never")
    num_samples: int = setting(2, "rollouts written each time")
    log_every: int = setting(10, "stdout not a terminal: one line every N steps (first, last, eval always); 0: none")
    trackers: list[str] = setting([], "accelerate trackers, e.g. [tensorboard, wandb, trackio]")
    project: str = setting("sead", "tracker project name")
    run_name: str | None = setting(None, "run name shown by the trackers; null: the config's name")

    def __post_init__(self):
        if self.run_name is not None and not str(self.run_name).strip():
            raise ConfigError("logging.run_name must be a non-empty name or null (the config's name)")
        for key in ("samples_every", "num_samples", "log_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"logging.{key} must be >= 0 (0 = none), got {getattr(self, key)}")
        check_trackers(self.trackers)


@dataclass
class RunConfig:
    """Everything one ``sead train`` run needs; each attribute is one concern's dataclass."""

    name: str = setting("sead", "run name, shown in reports")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def section_types() -> dict[str, type]:
    """``{section name: its dataclass}`` in `RunConfig` order."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}


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
    if origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}; e.g. {key}={{enable_thinking: false}}")
        return dict(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:  # e.g. an unquoted item with brackets: [name=path[split]]
                raise ConfigError(
                    f"{key}={value} is not a YAML list; quote items that hold brackets or commas, e.g. {key}=['a[b]']"
                ) from None
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
    sections = section_types()
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
    """Read a config file (or start from defaults when ``path`` is None) and apply overrides.

    ``path`` is a YAML file or a shipped recipe's name (``sead``); see `sead.config_files` for
    ``base:`` chains and how paths inside a file resolve."""
    data = read_config_file(find_config(path)) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
