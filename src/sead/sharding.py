"""Sharded training: FSDP2 through accelerate for the student, the frozen teacher sharded for inference.

A run is sharded when accelerate's launcher says so (``accelerate launch --use_fsdp --fsdp_version 2``
or ``--config_file`` with ``distributed_type: FSDP``, see ``sead/configs/accelerate/``). Then:

* the student goes through ``accelerator.prepare`` (accelerate's ``fully_shard`` per wrapped layer,
  an embedding + final-norm + head unit, the root);
* the frozen teacher (and GRPO's reference) are sharded here the same way, without an optimiser,
  every unit resharded after its forward, so no device holds a whole frozen model;
* with ``fsdp_cpu_ram_efficient_loading: true`` (:func:`loads_on_process0`) only process 0 reads the
  weights; the others build the models on the meta device (``sead.models.load_model``) and receive
  their shards from process 0 while sharding (accelerate's for the student, :func:`prepare_frozen`'s
  for the frozen models), so host memory holds each model once (process 0's), not once per process;
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
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, Partial

from sead.errors import CheckpointError, ConfigError, SeadError

__all__ = [
    "check_launch",
    "enable_fsdp_on_cpu",
    "is_sharded",
    "loads_on_process0",
    "repoint_optimizer",
    "check_can_estimate",
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


def loads_on_process0(accelerator) -> bool:
    """Whether the launch asks for ``cpu_ram_efficient_loading``: real weights on process 0 only."""
    return is_sharded(accelerator) and bool(accelerator.state.fsdp_plugin.cpu_ram_efficient_loading)


def check_can_estimate(accelerator, path: str) -> None:
    """Refuse the trainer's own difficulty estimate under process-0 loading: it samples with the whole
    student on every process, before sharding, and the other processes hold no weights then."""
    if loads_on_process0(accelerator):
        raise ConfigError(
            f"curriculum.difficulty_path={path!r} does not exist and estimating it needs the student whole on "
            "every process, which fsdp_cpu_ram_efficient_loading skips; run `sead difficulty` first to write it, "
            "or launch with --fsdp_cpu_ram_efficient_loading false"
        )


def repoint_optimizer(optimizer, model) -> None:
    """Point the optimizer at the prepared model's sharded trainable parameters (call after ``prepare``).

    accelerate maps each old parameter to its shard by ``data_ptr``, which is 0 for every tensor on
    the meta device: on a process that loaded no weights every optimizer entry ends up on one shard.
    sead's optimizer has one group over the trainable parameters in ``model.parameters()`` order.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = optimizer.param_groups
    if len(groups) != 1 or len(groups[0]["params"]) != len(params):
        raise SeadError(f"the optimizer has {len(groups)} groups, sead builds one over the {len(params)} trainable")
    groups[0]["params"] = params


def _non_persistent_buffers(model) -> dict[tuple[torch.nn.Module, str], torch.Tensor]:
    return {
        (module, name): module._buffers[name]
        for module in model.modules()
        for name in module._non_persistent_buffers_set
        if module._buffers.get(name) is not None
    }


def _tie(model) -> None:
    if hasattr(model, "tie_weights"):
        model.tie_weights()


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
    from_process0 = loads_on_process0(accelerator)
    if from_process0:
        # Process 0's weights stay in `full`; the model goes to meta so that fully_shard builds empty
        # shards (on a GPU it would otherwise move the whole model there first). Buffers outside the
        # state dict (rotary frequencies) are computed on every process and put back after.
        full = model.state_dict() if accelerator.is_main_process else {}
        buffers = _non_persistent_buffers(model)
        model.to(torch.device("meta"))
        _tie(model)  # `to` gave the tied embedding and head two meta tensors
    layers = _layer_classes(model)
    for module in list(model.modules())[1:]:
        if layers and isinstance(module, layers):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    if from_process0:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full, options=options)  # process 0 sends, every process keeps its shard
        for (module, name), buffer in buffers.items():
            module._buffers[name] = buffer.to(accelerator.device)
        _tie(model)  # loading assigned the two names two tensors
        del full
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
