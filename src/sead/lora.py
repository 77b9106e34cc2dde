"""LoRA through PEFT: the ``lora:`` section, wrapping the student, its adapters-off base view, adapter checkpoints.

With ``lora.r > 0`` the student is wrapped by ``peft.get_peft_model`` and only the adapters (plus
``lora.modules_to_save``, e.g. ``[lm_head]``) train; the output head stays frozen otherwise. The
frozen initial model that OPSD (``opsd_teacher=initial``) and GRPO's KL reference need is the
same object with its adapters switched off (:class:`AdaptersOff`), not a second copy in memory.
Checkpoints hold the adapters in PEFT's format (``step-N/adapter/``) instead of the whole model
(:func:`register_adapter_checkpoints`); ``final/`` holds the adapter, and with
``lora.merge_final=true`` the merged full model in ``final/merged/`` (:func:`merge_adapter`).
Under FSDP2 checkpoints hold the adapters too, sharded as accelerate writes them
(:func:`sharded_adapter_state`), and a trained copy of a tied head is refused (:func:`check_shardable`).

``peft`` is imported inside the functions that need it: it loads transformers (seconds) and a
run without LoRA never pays for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from sead.errors import ConfigError
from sead.settings import setting
from sead.sharding import is_sharded, unsharded

__all__ = [
    "LoraConfig",
    "wrap_with_lora",
    "is_lora",
    "AdaptersOff",
    "trainable_line",
    "check_shardable",
    "register_adapter_checkpoints",
    "sharded_adapter_state",
    "merge_adapter",
    "ADAPTER_DIR",
]

ADAPTER_DIR = "adapter"  # inside a checkpoint folder: PEFT's adapter_config.json + adapter_model.safetensors


@dataclass
class LoraConfig:
    """LoRA adapters on the student (PEFT); ``r: 0`` trains the full model."""

    r: int = setting(0, "LoRA rank; 0 = off (full fine-tuning)")
    alpha: float = setting(16.0, "LoRA scaling numerator: the update is alpha / r * B A")
    dropout: float = setting(0.0, "dropout on the adapters' input, in [0, 1)")
    target_modules: list[str] | str = setting("all-linear", "modules that get adapters: a list of names or all-linear")
    modules_to_save: list[str] = setting([], "modules trained in full beside the adapters, e.g. [lm_head]")
    merge_final: bool = setting(False, "also write the merged full model to final/merged/")

    def __post_init__(self):
        if self.r < 0:
            raise ConfigError(f"lora.r must be >= 0 (0 = off), got {self.r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        names = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(
                f"lora.target_modules={self.target_modules!r} names no module; give e.g. [q_proj,v_proj] or all-linear"
            )
        if not all(isinstance(n, str) and n.strip() for n in self.modules_to_save):
            raise ConfigError(f"lora.modules_to_save={self.modules_to_save!r} has an empty name; e.g. [lm_head]")
        if self.merge_final and not self.r:
            raise ConfigError("lora.merge_final=true needs lora.r > 0 (without LoRA final/ is the full model already)")

    @property
    def enabled(self) -> bool:
        return self.r > 0


def is_lora(model) -> bool:
    """Whether ``model`` (unwrapped) is a PEFT model."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def wrap_with_lora(model, cfg: LoraConfig, base_path: str | None = None):
    """``model`` with LoRA adapters (``peft.get_peft_model``); only adapters and ``modules_to_save`` train.

    ``base_path`` (the student's checkpoint) is written into the adapter config, absolute when local,
    so ``final/`` loads from any working directory.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=list(cfg.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, peft_cfg)
    except (ValueError, KeyError, TypeError) as err:
        linear = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})
        raise ConfigError(
            f"lora.target_modules={cfg.target_modules!r} / lora.modules_to_save={cfg.modules_to_save!r} do not fit "
            f"the student ({str(err).splitlines()[0][:160]}); its linear layers are: {', '.join(linear)}"
        ) from None
    if base_path:
        local = Path(base_path).expanduser()
        wrapped.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.is_dir() else base_path
    return wrapped


def check_shardable(model, modules_to_save) -> None:
    """Refuse, before FSDP2 shards the PEFT student, a trained copy of an output head tied to the input embedding.

    ``modules_to_save`` keeps the original head beside the trained copy, and the original's weight
    is the embedding's. FSDP2 needs a shared weight inside one unit, but accelerate groups the head
    with the embedding only when their weights are one tensor (the wrapped head shows its copy's),
    so torch refuses at the first forward, after the models are loaded and sharded.
    """
    head = model.get_output_embeddings()
    original = getattr(head, "original_module", None)  # PEFT's ModulesToSaveWrapper
    embed = model.get_input_embeddings()
    if original is not None and embed is not None and getattr(original, "weight", None) is embed.weight:
        raise ConfigError(
            f"lora.modules_to_save={list(modules_to_save)!r} trains the output head, which the student ties to its "
            "input embedding, and FSDP2 cannot shard that tie; under FSDP leave the head out of "
            "lora.modules_to_save, or use a student with untied embeddings (tie_word_embeddings: false)"
        )


def trainable_line(model) -> str:
    """The start-up line that says what trains: 'student: 2,176 of 14,080 parameters train (15.5%, LoRA r=4)'."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = f", LoRA r={model.peft_config['default'].r}" if is_lora(model) else ""
    return f"student: {trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.1f}%{lora})"


@contextlib.contextmanager
def _base_model_mode(peft_model):
    """Adapters off and eval mode (as the frozen copy it replaces was), restored on exit."""
    was_training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            yield
    finally:
        peft_model.train(was_training)


class AdaptersOff:
    """The base model inside a PEFT student: every call runs with the adapters disabled, on the same weights.

    It stands where a frozen ``copy.deepcopy`` of the initial student stood (OPSD's initial teacher,
    GRPO's KL reference): LoRA never changes the base weights, so the base model *is* the initial
    model, at no extra memory. It offers what the steps and scoring backends read from a model:
    calls, parameters (for the device), config, output head, decoder. ``eval``/``train``/``to`` do
    nothing: the student's mode and device belong to the trainer.
    """

    training = False

    def __init__(self, peft_model, module=None):
        self.peft_model = peft_model
        self.module = peft_model if module is None else module

    def __call__(self, *args, **kwargs):
        # The decoder alone skips the root's forward: sharded, the root unit (the final norm) is gathered here.
        gathered = unsharded(self.peft_model) if self.module is not self.peft_model else contextlib.nullcontext()
        with _base_model_mode(self.peft_model), gathered:
            return self.module(*args, **kwargs)

    @property
    def config(self):
        return self.peft_model.config

    def parameters(self):
        return self.peft_model.parameters()

    def get_output_embeddings(self):
        """The original head: a head in ``modules_to_save`` trains a copy and keeps the original."""
        head = self.peft_model.get_output_embeddings()
        return getattr(head, "original_module", head)

    def get_decoder(self):
        """The decoder stack, also called with adapters off (the fused teacher reads its last hidden state)."""
        decoder = self.peft_model.get_decoder()
        return None if decoder is None else AdaptersOff(self.peft_model, decoder)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self


def register_adapter_checkpoints(accelerator) -> None:
    """Make ``accelerator.save_state``/``load_state`` keep a PEFT model's adapters only, in PEFT's format.

    The frozen base weights come from ``model.student`` again on resume; the adapters, the optimiser
    (adapters only), schedule and RNG states come from the checkpoint, so a resumed run continues
    bit for bit. Under FSDP/DeepSpeed accelerate saves models its own way and these hooks step aside
    (FSDP: :func:`sharded_adapter_state`).
    """

    def peft_positions(models, weights) -> list[int]:
        if weights is not None and len(weights) != len(models):  # sharded saving: accelerate writes the models
            return []
        return [i for i, m in enumerate(models) if is_lora(accelerator.unwrap_model(m))]

    def save_hook(models, weights, output_dir):
        for i in reversed(peft_positions(models, weights)):
            if accelerator.is_main_process:
                accelerator.unwrap_model(models[i]).save_pretrained(Path(output_dir) / ADAPTER_DIR)
            weights.pop(i)  # accelerate's model.safetensors would be the whole model again

    def load_hook(models, input_dir):
        for i in reversed(peft_positions(models, None)):
            _load_adapter_weights(accelerator.unwrap_model(models[i]), Path(input_dir) / ADAPTER_DIR)
            models.pop(i)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


@contextlib.contextmanager
def sharded_adapter_state(accelerator, folder: str | Path, load: bool = False):
    """Around ``accelerator.save_state``/``load_state`` (``folder``): under FSDP a PEFT student's checkpoint
    holds its adapters only, as without FSDP; elsewhere the block runs as is.

    accelerate writes an FSDP model whole (``save_state`` has no adapter-only switch and its save
    hooks run after the models are written), so for the block the student and its optimiser leave
    accelerate's lists (sead prepares one of each) and after it go through accelerate's own FSDP
    functions with ``adapter_only``: the adapters and their optimiser state, sharded or whole as the
    launch's ``fsdp_state_dict_type`` says, under the names accelerate gives them
    (``pytorch_model_fsdp_0/``, ``optimizer_0/``; whole, torch's frozen-parameter filter also keeps
    a head tied to the embedding). The scheduler and RNG states stay accelerate's.
    """
    models, optimizers = accelerator._models, accelerator._optimizers
    one_peft_model = len(models) == len(optimizers) == 1 and is_lora(accelerator.unwrap_model(models[0]))
    if not (is_sharded(accelerator) and one_peft_model):
        yield
        return
    from accelerate.utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer

    accelerator._models, accelerator._optimizers = [], []
    try:
        yield
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers
    plugin, folder = accelerator.state.fsdp_plugin, str(folder)
    if load:
        load_fsdp_model(plugin, accelerator, models[0], folder, adapter_only=True)
        load_fsdp_optimizer(plugin, accelerator, optimizers[0], models[0], folder)
    else:
        save_fsdp_model(plugin, accelerator, models[0], folder, adapter_only=True)
        save_fsdp_optimizer(plugin, accelerator, optimizers[0], models[0], folder)


def _load_adapter_weights(peft_model, folder: Path) -> None:
    """Copy a saved adapter into ``peft_model``'s parameters in place (the optimiser keeps its references)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state)
    trained = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    missing = trained & set(result.missing_keys)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter in {folder} does not match the student (missing {sorted(missing)[:2]}, "
            f"unexpected {sorted(result.unexpected_keys)[:2]})"
        )


def merge_adapter(base_model, adapter_dir: str | Path):
    """``base_model`` with the adapter saved in ``adapter_dir`` merged into its weights (a plain model)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
