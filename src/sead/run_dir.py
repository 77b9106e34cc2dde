"""The run directory of `sead train` across restarts.

Before training: the folder must be writable, a finished run is never overwritten, and a resume
must use the saved config (``config.yaml``). On resume or a fresh start, ``metrics.jsonl`` and
``samples.jsonl`` lines past the restart step are dropped, since those steps are run again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Set
from pathlib import Path

import yaml

from sead.checkpoint import latest_checkpoint
from sead.config import RunConfig, config_to_dict
from sead.errors import ConfigError
from sead.jsonio import read_jsonl, write_jsonl

__all__ = ["RESUME_FREE", "config_diff", "resume_changes", "prepare_run_dir", "drop_records_after", "append_samples"]

# Settings that may change between a run and its resumption without changing the result: the one
# list, for the trainer's resume check and for `sead compare` (through `resume_changes`).
RESUME_FREE = frozenset(
    {
        ("train", "resume"),
        ("train", "force_resume"),
        ("logging", "progress"),
        ("logging", "log_every"),
        ("train", "torch_threads"),
        ("train", "max_bad_steps"),
        ("train", "output_dir"),
    }
)  # output_dir: a run folder may be moved


def config_diff(saved: dict, new: dict, free: Set[tuple[str, str]]) -> list[str]:
    """Keys whose saved value differs from the new one (keys the saved file lacks count as equal)."""
    return [
        f"{section}.{key}"
        for section, values in new.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if (section, key) not in free and (saved.get(section) or {}).get(key, value) != value
    ]


def resume_changes(saved: dict, cfg: RunConfig, also_free: Iterable[tuple[str, str]] = ()) -> list[str]:
    """What a resume of ``cfg`` over ``saved`` (a run's ``config.yaml``, read back) refuses without
    ``train.force_resume``: the changed keys, bar ``RESUME_FREE`` and the ``(section, key)`` pairs of
    ``also_free``."""
    return config_diff(saved, config_to_dict(cfg), RESUME_FREE | set(also_free))


def prepare_run_dir(accelerator, run_dir: Path, cfg) -> None:
    """Create ``run_dir`` and check it may be (re)used with ``cfg``; main process checks, all wait."""
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ConfigError(
                f"train.output_dir={str(run_dir)!r} is not writable ({err.strerror}); choose another directory"
            ) from None
        saved = run_dir / "config.yaml"
        if saved.exists() and not cfg.train.resume and latest_checkpoint(run_dir) is not None:
            raise ConfigError(
                f"{run_dir} already holds a run with checkpoints; resume it with train.resume=true "
                "or pick a new train.output_dir"
            )
        if cfg.train.resume and saved.exists():
            _check_resume_config(saved, cfg)
    accelerator.wait_for_everyone()


def _check_resume_config(saved: Path, cfg: RunConfig) -> None:
    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    changed = resume_changes(old, cfg)
    if changed and not cfg.train.force_resume:
        raise ConfigError(
            f"resuming with a changed config ({', '.join(changed[:4])}); restore those values "
            "or pass train.force_resume=true to continue anyway"
        )


def drop_records_after(accelerator, metrics, run_dir: Path, step: int) -> None:
    """Remove metrics and sample lines past ``step`` (and torn lines): those steps are run again."""
    if accelerator.is_main_process:
        metrics.truncate_after(step)
        samples = run_dir / "samples.jsonl"
        if samples.exists():
            rows = read_jsonl(samples, on_bad_line=None)  # a torn line (a crash mid-write) is dropped
            write_jsonl(samples, [row for row in rows if _step_of(row) is not None and _step_of(row) <= step])
    accelerator.wait_for_everyone()


def append_samples(run_dir: Path, samples: list[dict]) -> None:
    """Append rollout samples to ``samples.jsonl`` (main process only)."""
    with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(_json_safe(s)) + "\n" for s in samples)


def _json_safe(value):
    """NaN/inf (a skipped non-finite step) become null, as in metrics.jsonl: strict JSON for every reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _step_of(row: dict) -> int | None:
    try:
        return int(row.get("step"))
    except (ValueError, TypeError):
        return None
