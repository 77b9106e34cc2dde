"""FSDP2 on CPU (``sead.sharding``): 2 gloo processes started as a user would, against one process.

``accelerate launch --config_file sead/configs/accelerate/fsdp2.yaml`` with ``ACCELERATE_USE_CPU=1``
trains the tiny pair with the student and the teacher sharded, checkpoints (sharded), evaluates,
resumes, and writes a whole ``final/``. Greedy rollouts make the two processes' rollouts the
single process's, so the weights can be compared; one micro-batch per row puts FSDP's no-sync
accumulation in the step.
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

import sead
from sead import sharding
from sead.cli import main
from sead.config import load_config
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


def _launch_fsdp(args: list[str], cwd: Path) -> str:
    """``accelerate launch`` with the shipped FSDP2 config on 2 CPU processes; returns stdout."""
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
    fsdp, resumed, one = root / "fsdp", root / "resumed", root / "one"
    stdout = _launch_fsdp(train_overrides(assets, fsdp, **extra), root)
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")  # as if the run had died after its step-2 checkpoint
    shutil.rmtree(resumed / "final")
    resumed_stdout = _launch_fsdp(train_overrides(assets, resumed, **extra, **{"train.resume": "true"}), root)
    Trainer(load_config(None, train_overrides(assets, one, **extra))).setup().train()
    return {
        "assets": assets,
        "extra": extra,
        "fsdp": fsdp,
        "resumed": resumed,
        "one": one,
        "stdout": stdout,
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


def test_fsdp_resume_matches_the_uninterrupted_run(runs):
    """Resumed from the sharded step-2 checkpoint: the same final weights and metrics, bit for bit."""
    fsdp, resumed = runs["fsdp"], runs["resumed"]
    assert f"resumed from {resumed / 'checkpoints' / 'step-2'} at step 2" in runs["resumed_stdout"]
    wa, wb = load_file(fsdp / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key

    def stable(run):
        return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in metrics_lines(run)]

    assert stable(resumed) == stable(fsdp)


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
