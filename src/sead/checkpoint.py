"""Atomic checkpoints: written to a temporary folder, marked complete, then renamed into place.

A checkpoint ``RUN/checkpoints/step-N`` holds accelerate's state (model, optimiser, scheduler,
RNG states of every process) plus ``trainer_state.json`` (step, sampler state, ...). Only a
folder with the ``COMPLETE`` marker is ever picked as the latest, so a crash mid-write never
leaves a half checkpoint in use.

Test hook: with ``SEAD_TEST_PAUSE_IN_CHECKPOINT=N`` in the environment, the write of checkpoint
``step-N`` stops after accelerate's state is in ``.tmp-step-N`` and before it is marked complete,
drops a ``PAUSED`` file there and sleeps (up to 10 minutes), so a test can kill the process in
the middle of a checkpoint write (``tests/kill_resume.py``). Unset, it costs nothing.

``RUN/final`` (:func:`save_final_model`) is written the same way: into a temporary folder, then
renamed; it holds the model's ``save_pretrained`` (the full model, or a PEFT adapter) and the
tokenizer, and on request the merged full model in ``final/merged``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from accelerate.utils import load

from sead.errors import CheckpointError
from sead.jsonio import atomic_write_text
from sead.lora import sharded_adapter_state
from sead.sharding import check_checkpoint_layout, reshard_prepared

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "list_checkpoints", "save_final_model"]

try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors comes with transformers
    _SafetensorError = OSError

_STEP_DIR = re.compile(r"^step-(\d+)$")
MARKER = "COMPLETE"
STATE = "trainer_state.json"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / MARKER).exists() and (child / STATE).exists():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_pause(tmp: Path, step: int) -> None:
    """The ``SEAD_TEST_PAUSE_IN_CHECKPOINT`` hook (module doc): pause a chosen write half-way."""
    if os.environ.get("SEAD_TEST_PAUSE_IN_CHECKPOINT") == str(step):
        atomic_write_text(tmp / "PAUSED", str(os.getpid()))  # whole or absent: a watcher may read it at once
        time.sleep(600)


def save_checkpoint(accelerator, run_dir: str | Path, step: int, trainer_state: dict, keep: int = 2) -> Path:
    """Save on every process (accelerate needs all of them), publish atomically on the main one."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        with sharded_adapter_state(accelerator, tmp):
            accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process's files (RNG states, FSDP shards) are in before the rename
        _test_pause(tmp, step)
        if accelerator.is_main_process:
            (tmp / STATE).write_text(json.dumps(trainer_state), encoding="utf-8")
            (tmp / MARKER).write_text(str(step), encoding="utf-8")
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
    except (OSError, RuntimeError, _SafetensorError) as err:
        # A full disk shows up as OSError, as torch.save's RuntimeError or as a safetensors error.
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or f"{type(err).__name__}: {str(err).strip()[:120]}"
        try:
            free = f"; {shutil.disk_usage(root).free / 2**20:.0f} MiB free there"
        except OSError:
            free = ""
        raise CheckpointError(
            f"could not write checkpoint step-{step} in {root} ({reason}{free}); the previous checkpoints are "
            "untouched: free disk space or fix permissions, then resume with train.resume=true"
        ) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _check_rng_state(path: Path, process_index: int) -> None:
    """accelerate skips an unreadable RNG state file silently; an exact resume needs it, so fail instead."""
    states = load(path / f"random_states_{process_index}.pkl")
    if not isinstance(states, dict) or "torch_manual_seed" not in states or "random_state" not in states:
        raise ValueError(f"random_states_{process_index}.pkl holds no RNG states")


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore accelerate's state from ``path`` and return its trainer state."""
    path = Path(path)
    check_checkpoint_layout(accelerator, path)
    reshard_prepared(accelerator)  # sharded: setup's probe forwards leave the head unit gathered
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        _check_rng_state(path, accelerator.process_index)
        with sharded_adapter_state(accelerator, path, load=True):
            accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001 - torch.load, pickle and safetensors raise many types on bad files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete ({type(err).__name__}: {str(err)[:120]}); "
            "delete it to resume from the previous one"
        ) from None
    return state


def save_final_model(
    accelerator, run_dir: str | Path, model, tokenizer, merge: Callable | None = None, state_dict: dict | None = None
) -> Path:
    """Write ``RUN/final`` atomically from the main process: ``model.save_pretrained`` and the tokenizer.

    ``state_dict`` (FSDP: the full weights gathered to the main process) replaces the model's own.

    ``merge(folder) -> model`` (LoRA's ``merge_final``) builds the merged full model from the adapter
    just written to ``folder``; it goes to ``final/merged`` with the tokenizer.
    """
    final = Path(run_dir) / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = Path(run_dir) / ".final-tmp"
        try:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            if merge is not None:
                merge(tmp).save_pretrained(tmp / "merged", safe_serialization=True)
                tokenizer.save_pretrained(tmp / "merged")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except (OSError, RuntimeError, _SafetensorError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"could not write the final model to {final} ({getattr(err, 'strerror', None) or err}); the "
                f"last checkpoint is saved: free disk space, then rerun with train.resume=true to write it"
            ) from None
    accelerator.wait_for_everyone()
    return final
