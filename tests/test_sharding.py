"""FSDP2 on CPU (``sead.sharding``): 2 gloo processes started as a user would, against one process.

``accelerate launch --config_file sead/configs/accelerate/fsdp2.yaml`` with ``ACCELERATE_USE_CPU=1``
trains the tiny pair with the student and the teacher sharded, checkpoints (sharded), evaluates,
resumes, and writes a whole ``final/``. Greedy rollouts make the two processes' rollouts the
single process's, so the weights can be compared; one micro-batch per row puts FSDP's no-sync
accumulation in the step. The shipped config reads the weights on process 0 only
(``fsdp_cpu_ram_efficient_loading``); a launch that turns it off gives the same run, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_resume import make_assets, metrics_lines, train_overrides
from safetensors.torch import load_file
from tiny import tiny_llama
from torch.distributed.checkpoint import FileSystemReader

import sead
from sead import sharding
from sead.cli import main
from sead.config import load_config
from sead.lora import LoraConfig, check_shardable, wrap_with_lora
from sead.trainer import Trainer

HERE = Path(__file__).resolve().parent
FSDP2_CONFIG = Path(sead.__file__).parent / "configs" / "accelerate" / "fsdp2.yaml"
VOLATILE = ("time/", "perf/")  # wall-clock metrics: the only keys allowed to differ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return env


def _launch_fsdp(args: list[str], cwd: Path, *flags: str) -> str:
    """``accelerate launch`` with the shipped FSDP2 config (and ``flags``) on 2 CPU processes; returns stdout."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP2_CONFIG),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(_free_port()),
        *flags,
        "-m",
        "sead.cli",
        "train",
        *args,
    ]
    done = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 4-step FSDP run, the same run resumed from its step-2 checkpoint, and one process (no FSDP)."""
    root = tmp_path_factory.mktemp("sharding")
    assets = make_assets(root / "assets")
    evalset = root / "eval.jsonl"
    evalset.write_text("".join(json.dumps({"question": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(3)))
    extra = {
        "train.steps": 4,
        "train.save_every": 2,
        "train.micro_batch_size": 1,
        "rollout.temperature": 0,
        "eval.every": 2,
        "eval.data": f"[{evalset}]",
        "eval.prompt_field": "question",
        "eval.template": "{problem}",
        "eval.max_new_tokens": 4,
    }
    return _fsdp_resumed_and_one(root, assets, extra)


def _fsdp_resumed_and_one(root: Path, assets: dict, extra: dict) -> dict:
    """An FSDP run, the same run resumed from its next-to-last checkpoint, and one process (no FSDP).

    And ``every``: the FSDP run with every process loading the models whole (as before sead honoured
    ``fsdp_cpu_ram_efficient_loading``), to compare with the shipped config's process-0 loading.
    """
    fsdp, resumed, one, every = root / "fsdp", root / "resumed", root / "one", root / "every"
    stdout = _launch_fsdp(train_overrides(assets, fsdp, **extra), root)
    every_flags = ("--fsdp_cpu_ram_efficient_loading", "false")
    every_stdout = _launch_fsdp(train_overrides(assets, every, **extra), root, *every_flags)
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step-{extra['train.steps']}")  # as if it died after the one before
    shutil.rmtree(resumed / "final")
    resumed_stdout = _launch_fsdp(train_overrides(assets, resumed, **extra, **{"train.resume": "true"}), root)
    Trainer(load_config(None, train_overrides(assets, one, **extra))).setup().train()
    return {
        "assets": assets,
        "extra": extra,
        "fsdp": fsdp,
        "resumed": resumed,
        "one": one,
        "every": every,
        "stdout": stdout,
        "every_stdout": every_stdout,
        "resumed_stdout": resumed_stdout,
    }


def test_fsdp_trains_sharded_and_matches_one_process(runs):
    """Sharded checkpoints from both processes, a whole final model, and the single process's weights.

    Tolerance 1e-6 (absolute, float32), as for DDP: the same gradients summed in another order
    (a reduce-scatter over 2 processes vs one process's accumulation over 4 micro-batches).
    """
    fsdp, one = runs["fsdp"], runs["one"]
    assert "FSDP2: student and teacher sharded over 2 processes" in runs["stdout"]
    ckpt = fsdp / "checkpoints" / "step-2"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # one shard per process
        assert sorted(p.name for p in (ckpt / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], part
    assert not (ckpt / "model.safetensors").exists()
    a, b = metrics_lines(one), metrics_lines(fsdp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("zones/tokens", "zones/frac_a", "zones/frac_b", "zones/frac_c", "optim/lr"):
            assert ra[key] == rb[key], (ra["step"], key)
        for key in ("loss/total", "loss/fkl", "loss/rkl", "optim/grad_norm", "entropy/teacher_mean"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (ra["step"], key)
    assert [r["eval/eval/pass@1"] for r in b if "eval/eval/pass@1" in r] == [
        r["eval/eval/pass@1"] for r in a if "eval/eval/pass@1" in r
    ]
    assert [r["step"] for r in b if "eval/eval/pass@1" in r] == [2, 4]  # every process took part, rank 0 wrote it
    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(fsdp / "final" / "model.safetensors")
    assert sorted(wa) == sorted(wb)  # gathered whole, the tied head stored once as without FSDP
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6)


def _stable(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in metrics_lines(run)]


def _assert_identical(wa: dict, wb: dict, what: str = "") -> None:
    """Two state dicts with the same names and bit-identical tensors."""
    assert sorted(wa) == sorted(wb), what
    for key in wa:
        assert torch.equal(wa[key], wb[key]), (what, key)


def test_fsdp_loading_on_process0_matches_every_process_loading(runs):
    """The shipped config's process-0 loading: the same checkpoints, metrics and final model, bit for bit.

    That process 1 holds no weights before sharding is ``sharding_worker.py``'s check.
    """
    fsdp, every = runs["fsdp"], runs["every"]
    assert "sharded over 2 processes, weights read by process 0 only" in runs["stdout"]
    assert "weights read by process 0 only" not in runs["every_stdout"]
    assert _stable(fsdp) == _stable(every)
    wa, wb = load_file(every / "final" / "model.safetensors"), load_file(fsdp / "final" / "model.safetensors")
    _assert_identical(wa, wb)


def test_fsdp_resume_matches_the_uninterrupted_run(runs):
    """Resumed from the sharded step-2 checkpoint: the same final weights and metrics, bit for bit."""
    fsdp, resumed = runs["fsdp"], runs["resumed"]
    assert f"resumed from {resumed / 'checkpoints' / 'step-2'} at step 2" in runs["resumed_stdout"]
    wa, wb = load_file(fsdp / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    _assert_identical(wa, wb)
    assert _stable(resumed) == _stable(fsdp)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """The same three runs with LoRA adapters on the student: 2 steps, a checkpoint after each, merge_final."""
    root = tmp_path_factory.mktemp("sharding-lora")
    extra = {
        "train.steps": 2,
        "train.save_every": 1,
        "train.micro_batch_size": 1,
        "rollout.temperature": 0,
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.merge_final": "true",
    }
    return _fsdp_resumed_and_one(root, make_assets(root / "assets"), extra)


def _adapter(run: Path) -> dict:
    return load_file(run / "final" / "adapter_model.safetensors")


def test_fsdp_lora_trains_the_adapters_and_matches_one_process(lora_runs):
    """Adapter-only sharded checkpoints, the single process's losses, adapters and merged model.

    Tolerance 1e-7 (absolute, float32) on the adapters and the merged weights: the same gradients
    summed in another order moved them by at most 4e-9 here, while 2 steps moved lora_B by 1.5e-3.
    The base staying frozen under FSDP is ``sharding_worker.py``'s check; here the losses of step 2,
    computed with the weights step 1 left, match a process whose base is frozen.
    """
    fsdp, one = lora_runs["fsdp"], lora_runs["one"]
    assert "student: 2,176 of 14,080 parameters train (15.5%, LoRA r=4)" in lora_runs["stdout"]
    assert "FSDP2: student and teacher sharded over 2 processes" in lora_runs["stdout"]
    assert "fused loss off" not in lora_runs["stdout"]  # the fused loss ran, on the gathered heads
    ckpt = fsdp / "checkpoints" / "step-1"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (ckpt / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], part
    saved = FileSystemReader(str(ckpt / "pytorch_model_fsdp_0")).read_metadata().state_dict_metadata
    assert len(saved) == 14 and all(".lora_" in key for key in saved)  # the adapters, not the frozen base
    a, b = metrics_lines(one), metrics_lines(fsdp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("zones/tokens", "zones/frac_a", "zones/frac_b", "zones/frac_c"):
            assert ra[key] == rb[key], (ra["step"], key)
        for key in ("loss/total", "loss/fkl", "loss/rkl", "optim/grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (ra["step"], key)
    wa, wb = _adapter(one), _adapter(fsdp)
    assert sorted(wa) == sorted(wb) and all("lora_" in key for key in wb)
    assert all(wb[key].abs().max() > 1e-4 for key in wb if "lora_B" in key)  # B starts at 0: every adapter moved
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-7)
    ma, mb = (load_file(run / "final" / "merged" / "model.safetensors") for run in (one, fsdp))
    assert sorted(ma) == sorted(mb)
    for key in ma:
        torch.testing.assert_close(mb[key], ma[key], rtol=0, atol=1e-7)


def test_fsdp_lora_final_loads_with_plain_transformers_and_peft(lora_runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final, student = lora_runs["fsdp"] / "final", lora_runs["assets"]["student"]
    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student), str(final))(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(final / "merged"))(ids).logits
        base = AutoModelForCausalLM.from_pretrained(student)(ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted, base)


def test_fsdp_lora_loading_on_process0_matches_every_process_loading(lora_runs):
    """PEFT wraps process 1's meta-device student; sharding gives it process 0's adapters and base."""
    fsdp, every = lora_runs["fsdp"], lora_runs["every"]
    assert "weights read by process 0 only" in lora_runs["stdout"]
    assert _stable(fsdp) == _stable(every)
    for part in ("adapter_model.safetensors", "merged/model.safetensors"):
        wa, wb = load_file(every / "final" / part), load_file(fsdp / "final" / part)
        _assert_identical(wa, wb, part)


def test_fsdp_lora_resume_matches_the_uninterrupted_run(lora_runs):
    """Resumed from the adapter-only step-1 checkpoint: the same adapters and metrics, bit for bit."""
    fsdp, resumed = lora_runs["fsdp"], lora_runs["resumed"]
    assert f"resumed from {resumed / 'checkpoints' / 'step-1'} at step 1" in lora_runs["resumed_stdout"]
    wa, wb = _adapter(fsdp), _adapter(resumed)
    _assert_identical(wa, wb)
    assert _stable(resumed) == _stable(fsdp)


def test_fsdp_lora_trained_tied_head_is_one_line_error(tmp_path, capsys, monkeypatch):
    """A trained copy of a head tied to the embedding cannot be sharded: refused before anything is sharded."""
    import sead.trainer

    monkeypatch.setattr(sead.trainer, "is_sharded", lambda acc: True)  # the check, without a 2-process launch
    assets = make_assets(tmp_path / "assets")
    args = train_overrides(assets, tmp_path / "run", **{"lora.r": 4, "lora.modules_to_save": "[lm_head]"})
    capsys.readouterr()  # the assets' progress bars
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sead train: error: lora.modules_to_save=['lm_head'] trains"), lines
    assert "FSDP2 cannot shard that tie; under FSDP leave the head out of lora.modules_to_save" in lines[0]
    untied = wrap_with_lora(tiny_llama(40, tie=False), LoraConfig(r=4, modules_to_save=["lm_head"]))
    check_shardable(untied, ["lm_head"])  # an untied head trains under FSDP (run by hand: matches one process)


def test_difficulty_estimate_with_loading_on_process0_is_one_line_error(tmp_path, capsys, monkeypatch):
    """Estimating difficulty samples with whole students before sharding: refused before any sampling."""
    import sead.sharding

    monkeypatch.setattr(sead.sharding, "loads_on_process0", lambda acc: True)  # without a 2-process launch
    assets = make_assets(tmp_path / "assets")
    missing = tmp_path / "difficulty.jsonl"
    curriculum = {"objective.curriculum": "true", "curriculum.sampler": "competence"}
    args = train_overrides(assets, tmp_path / "run", **curriculum, **{"curriculum.difficulty_path": str(missing)})
    capsys.readouterr()
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sead train: error: curriculum.difficulty_path='{missing}'"), lines
    assert "run `sead difficulty` first to write it, or launch with --fsdp_cpu_ram_efficient_loading false" in lines[0]
    assert not missing.exists()


def test_fsdp_checkpoint_resumed_without_fsdp_is_one_line_error(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["fsdp"], run)
    before = (run / "metrics.jsonl").read_bytes()
    args = train_overrides(runs["assets"], run, **runs["extra"], **{"train.resume": "true"})
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sead train: error: "), lines
    assert "was written by an FSDP run; resume it with the same launch" in lines[0]
    assert (run / "metrics.jsonl").read_bytes() == before


def test_sharding_pieces_against_unsharded_copies(tmp_path):
    """The pieces against unsharded copies, in 2 gloo processes (``tests/sharding_worker.py``)."""
    env = dict(_env(), ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_STATE_DICT_TYPE="FULL_STATE_DICT")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(HERE / "sharding_worker.py"),
    ]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == ["ok-0", "ok-1"], done.stdout[-3000:]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "the launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true) but "),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "sead shards with FSDP2 only, but the launch asks "),
    ],
    ids=["deepspeed-missing", "fsdp-version-1"],
)
def test_unsupported_launch_is_one_line_error(tmp_path, capsys, monkeypatch, env, message):
    monkeypatch.setattr(sharding, "_installed", lambda module: False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assets = make_assets(tmp_path / "assets")
    assert main(["train", *train_overrides(assets, tmp_path / "run", **{"train.steps": 1})]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sead train: error: {message}"), lines
    assert not (tmp_path / "run").exists()


def test_deepspeed_installed_is_started_with_a_warning(monkeypatch):
    monkeypatch.setattr(sharding, "_installed", lambda module: module == "deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    notes = sharding.check_launch()
    assert len(notes) == 1 and notes[0].startswith("DeepSpeed has never been run with sead")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert sharding.check_launch() == []


def test_shipped_accelerate_configs_name_fsdp2_and_zero3():
    import yaml

    fsdp = yaml.safe_load(FSDP2_CONFIG.read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert fsdp["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    zero3 = yaml.safe_load((FSDP2_CONFIG.parent / "deepspeed_zero3.yaml").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
