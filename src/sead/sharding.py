"""Sharded training: FSDP2 through accelerate for the student, the frozen teacher sharded for inference.

A run is sharded when accelerate's launcher says so (``accelerate launch --use_fsdp --fsdp_version 2``
or ``--config_file`` with ``distributed_type: FSDP``, see ``sead/configs/accelerate/``). Then:

* the student goes through ``accelerator.prepare`` (accelerate's ``fully_shard`` per wrapped layer,
  an embedding + final-norm + head unit, the root);
* the frozen teacher (and GRPO's reference) are sharded here the same way, without an optimiser,
  every unit resharded after its forward, so no device holds a whole frozen model (each process
  still reads it whole into CPU memory before sharding it);
* what reads whole weights outside a forward goes through :func:`full_weight` (the fused loss's
  heads) or :func:`unsharded` (the teacher's decoder run without its root);
* generation runs in lock-step on every process, since each forward all-gathers parameters:
  ``fully_shard`` marks the modules it manages (``_is_fsdp_managed_module``) and transformers'
  ``generate`` then turns ``synced_gpus`` on, so a process whose rows have all ended keeps
  joining the others' forwards instead of leaving them waiting;
* the final model is gathered to process 0 (:func:`full_state_dict`); checkpoints are accelerate's
  (a sharded ``pytorch_model_fsdp_0/`` by default);
* a LoRA student (``sead.lora``) is sharded whole, PEFT wrapper included: its ``generate``
  (:func:`hook_generate`) and its adapters-off decoder (``AdaptersOff``) gather the root unit,
  which they would skip; checkpoints and ``final/`` hold the adapters alone.

accelerate 1.15 ignores the FSDP plugin on CPU processes (it only turns FSDP on for GPU-like
devices) and silently runs DDP; :func:`enable_fsdp_on_cpu` turns it back on, so the same launch
command shards on CPU with gloo. DeepSpeed is refused in one line when it is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, Partial

from sead.errors import CheckpointError, ConfigError

__all__ = [
    "check_launch",
    "enable_fsdp_on_cpu",
    "is_sharded",
    "prepare_frozen",
    "hook_generate",
    "full_weight",
    "unsharded",
    "reshard_prepared",
    "check_checkpoint_layout",
    "full_state_dict",
]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_launch() -> list[str]:
    """Refuse, before accelerate starts, a launch sead cannot run; return start-up notes (``sead.run_notes``)."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        if not _installed("deepspeed"):
            raise ConfigError(
                "the launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true) but deepspeed is not installed; "
                "pip install deepspeed, or launch with sead's FSDP2 config (sead/configs/accelerate/fsdp2.yaml)"
            )
        return [
            "DeepSpeed has never been run with sead (the teacher is not partitioned, the fused loss reads "
            "whole heads); sead/configs/accelerate/fsdp2.yaml is the tested way to shard"
        ]
    if _env_flag("ACCELERATE_USE_FSDP") and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError(
            f"sead shards with FSDP2 only, but the launch asks for FSDP version {os.environ.get('FSDP_VERSION', '1')}; "
            "pass --fsdp_version 2 (or fsdp_version: 2 in the accelerate config file)"
        )
    return []


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Turn FSDP2 on for CPU processes launched with it (accelerate drops it there); True when it did."""
    state = accelerator.state
    if not _env_flag("ACCELERATE_USE_FSDP") or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables the launcher set
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # As accelerate does on GPUs: every later AcceleratorState() copies PartialState's type back over its own.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def is_sharded(accelerator) -> bool:
    return accelerator is not None and bool(getattr(accelerator, "is_fsdp2", False))


def _layer_classes(model) -> tuple[type, ...]:
    names = set(getattr(model, "_no_split_modules", None) or ())
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def prepare_frozen(accelerator, model):
    """A frozen model on the accelerator's device, or sharded (one unit per decoder layer, then the root)."""
    if model is None or isinstance(model, FSDPModule) or not isinstance(model, torch.nn.Module):
        # Nothing to place; the live student (OPSD), already sharded; or a view of it (`sead.lora.AdaptersOff`).
        return model
    if not is_sharded(accelerator):
        return model.to(accelerator.device)
    plugin = accelerator.state.fsdp_plugin
    mesh = getattr(accelerator, "torch_device_mesh", None)  # set with a parallelism config: the student's FSDP mesh
    kwargs = dict(
        reshard_after_forward=True,  # inference only: a unit's full weights live just for its forward
        offload_policy=plugin.cpu_offload,
        mp_policy=MixedPrecisionPolicy(),  # the teacher computes in its own dtype
        mesh=mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
    )
    layers = _layer_classes(model)
    for module in list(model.modules())[1:]:
        if layers and isinstance(module, layers):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model.eval().requires_grad_(False)


def hook_generate(model) -> None:
    """Make a sharded root unit gather its own parameters for ``model.generate`` too, as for ``forward``.

    Needed for a PEFT student: its ``generate`` calls the wrapped transformers model's, which
    never enters the root's ``forward``, and accelerate, finding no final norm directly inside a
    PEFT model, leaves the norm in the root unit, still sharded (a DTensor) during generation.
    A no-op for a model that is not sharded.
    """
    register_fsdp_forward_method(model, "generate")


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` whole: a sharded (DTensor) parameter is all-gathered; a plain tensor is returned as is.

    A student head with grad keeps its gradient sharded: the gather's backward reduce-scatters it,
    averaged over processes as FSDP averages every other gradient.
    """
    if not isinstance(weight, DTensor):
        return weight
    if not weight.requires_grad or not torch.is_grad_enabled():
        with torch.no_grad():
            return weight.full_tensor()
    return weight.full_tensor(grad_placements=[Partial("avg")] * len(weight.placements))


@contextlib.contextmanager
def unsharded(model):
    """The root unit of a sharded model gathered for the block (e.g. to run its decoder without the root)."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def reshard_prepared(accelerator) -> None:
    """Every FSDP unit of the prepared models back to its shard.

    The unit holding accelerate's embedding, final norm and head stays gathered after a forward
    (``reshard_after_forward=False``) until a backward; loading a full state dict into it then fails.
    """
    for model in getattr(accelerator, "_models", ()):
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def check_checkpoint_layout(accelerator, path: Path) -> None:
    """A checkpoint written with FSDP resumes only under FSDP, and one written without it only without."""
    fsdp_files = any((path / name).exists() for name in ("pytorch_model_fsdp_0", "pytorch_model_fsdp.bin"))
    if is_sharded(accelerator) and not fsdp_files and (path / "model.safetensors").exists():
        raise CheckpointError(
            f"checkpoint {path} was written without FSDP; resume it with the launch that wrote it (no --use_fsdp)"
        )
    if not is_sharded(accelerator) and fsdp_files:
        raise CheckpointError(
            f"checkpoint {path} was written by an FSDP run; resume it with the same launch "
            "(accelerate launch --config_file sead/configs/accelerate/fsdp2.yaml ... or --use_fsdp --fsdp_version 2)"
        )


def full_state_dict(accelerator, model, trainable_only: bool = False) -> dict | None:
    """The whole state dict on process 0 of a sharded model (call on every process); None when not sharded.

    ``trainable_only``: the parameters that train, on every process, and nothing else (LoRA's
    adapters: a PEFT model saves only those, so gathering its frozen base would be for nothing).
    """
    if not is_sharded(accelerator):
        return None
    if trainable_only:  # (get_model_state_dict's ignore_frozen_params keeps a head tied to a frozen embedding)
        with torch.no_grad():
            return {name: full_weight(p).cpu() for name, p in model.named_parameters() if p.requires_grad}
    state_dict = accelerator.get_state_dict(model)
    # Gathered copies no longer share storage, so save_pretrained would write tied weights twice: keep one name.
    unwrapped = accelerator.unwrap_model(model)
    kept = {name for name, _ in unwrapped.named_parameters()}
    for name, _ in unwrapped.named_parameters(remove_duplicate=False):
        if name not in kept:
            state_dict.pop(name, None)
    return state_dict
