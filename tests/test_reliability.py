"""Reliability of real ``sead train`` processes: SIGKILL + resume is exact, signals checkpoint, 2 processes = 1.

These tests start real processes (see ``tests/kill_resume.py``); all run on CPU with tiny models.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from kill_resume import kill_resume_check, launch, make_assets, metrics_lines, train_overrides, wait_until

from sead.config import load_config
from sead.trainer import Trainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("reliability_assets"))


def test_sigkill_at_three_moments_then_resume_is_bit_exact(assets, tmp_path):
    """Killed mid-run, mid-checkpoint-write and mid-step: final weights, optimiser, RNG, metrics, samples identical."""
    summary = kill_resume_check(tmp_path, assets, fast=True)
    moments = summary["moments"]
    assert moments[1]["checkpoints"] == [".tmp-step-4", "step-2"]  # killed inside the write of step-4
    assert "step-4" in moments[2]["checkpoints"]
    assert summary["metrics_lines"] == 8


@pytest.mark.parametrize("signum, fast", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_checkpoints_and_exits_nonzero(assets, tmp_path, signum, fast):
    """SIGTERM (a real ``python -m sead.cli train``) and SIGINT: checkpoint, one-line message, exit 130."""
    from sead.checkpoint import latest_checkpoint

    run, log, err = tmp_path / "run", tmp_path / "out.log", tmp_path / "err.log"
    proc = launch(
        train_overrides(assets, run, **{"train.steps": 200, "train.save_every": 1000}), log, fast=fast, err_log=err
    )
    wait_until(lambda: len(metrics_lines(run)) >= 1, proc, log, "the first metrics line")
    os.kill(proc.pid, signum)
    proc.wait(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err.read_text(), log.read_text())
    steps = [r["step"] for r in metrics_lines(run)]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 200
    assert latest_checkpoint(run) == run / "checkpoints" / f"step-{last}"
    lines = err.read_text().strip().splitlines()
    assert lines == [
        f"sead train: interrupted: stopped by signal {int(signum)} after step {last}; checkpoint "
        f"{run / 'checkpoints' / f'step-{last}'} saved, resume with train.resume=true"
    ], lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(assets, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo) = 1 process: zones, loss, update, curriculum choices.

    Greedy rollouts (temperature 0) make each process's rollouts the ones the single process samples;
    the global batch of 4 prompts is split 2 + 2, and the single process does 2 micro-batches of 2.
    """
    difficulty = tmp_path / "difficulty.jsonl"
    difficulty.write_text(
        "".join(json.dumps({"id": str(i), "difficulty": (i * 37 % 100) / 100}) + "\n" for i in range(100))
    )
    extra = {
        "train.steps": 3,
        "train.save_every": 3,
        "train.micro_batch_size": 2,
        "rollout.temperature": 0,
        "objective.curriculum": "true",
        "curriculum.sampler": "refreshing",
        "curriculum.difficulty_path": difficulty,
    }
    one, two = tmp_path / "one", tmp_path / "two"
    # accelerate runs several CPU processes only through its multi-process launcher (torch.distributed.run)
    # with ACCELERATE_USE_CPU set; `--cpu --num_processes 2` alone starts a single process.
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "sead.cli",
        "train",
        *train_overrides(assets, two, **extra),
    ]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (two / "checkpoints" / "step-3" / "random_states_1.pkl").exists()  # there really were two processes

    Trainer(load_config(None, train_overrides(assets, one, **extra))).setup().train()

    a, b = metrics_lines(one), metrics_lines(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in (
            "zones/tokens",
            "zones/frac_a",
            "zones/frac_b",
            "zones/frac_c",
            "curriculum/batch_difficulty",
            "curriculum/competence",
            "curriculum/eligible",
            "optim/lr",
            "sched/alpha",
        ):
            assert ra[key] == rb[key], (ra["step"], key)
        for key in (
            "loss/total",
            "loss/zone_b",
            "loss/zone_c",
            "loss/fkl",
            "loss/rkl",
            "entropy/teacher_mean",
            "entropy/student_mean",
            "optim/grad_norm",
            "reward/mean",
            "rollout/response_len_mean",
        ):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (ra["step"], key)
    # Same prompts, same responses, same per-token zones in the logged samples (rank 0 holds the first rows).
    sa = [json.loads(x) for x in (one / "samples.jsonl").read_text().splitlines()]
    sb = [json.loads(x) for x in (two / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"], s["response"], s["zone"]) for s in sa] == [
        (s["step"], s["prompt"], s["response"], s["zone"]) for s in sb
    ]
    # The curriculum sampler (its RNG, refreshed difficulties, position) ends in the same state.
    state = "checkpoints/step-3/trainer_state.json"
    assert json.loads((one / state).read_text()) == json.loads((two / state).read_text())
    from safetensors.torch import load_file

    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6)


def test_second_process_on_a_run_folder_is_refused_and_a_dead_holders_lock_taken_over(assets, tmp_path, capsys):
    """Two real `sead train` processes on one folder: the second is refused in one line naming the first
    (fresh or resuming) and changes no byte; once the first is SIGKILLed its lock is stale and taken over."""
    from sead.cli import main

    run, log = tmp_path / "run", tmp_path / "first.log"
    # The first run holds its write of checkpoint step-2 open (see sead.checkpoint), so the folder stands still.
    first = launch(
        train_overrides(assets, run, **{"train.steps": 4, "train.save_every": 2}),
        log,
        {"SEAD_TEST_PAUSE_IN_CHECKPOINT": "2"},
        fast=True,
    )
    paused = run / "checkpoints" / ".tmp-step-2" / "PAUSED"
    wait_until(paused.exists, first, log, "the paused write of step-2")
    before = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    holder = f"pid {first.pid} on host {socket.gethostname()}"
    for extra in ({}, {"train.resume": "true"}):
        capsys.readouterr()
        assert main(["train", *train_overrides(assets, run, **{"train.steps": 4, **extra})]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sead train: error: ") and holder in lines[0], lines
        assert "is in use by another sead run" in lines[0]
        assert {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    first.kill()
    assert (run / ".sead.lock").exists()  # SIGKILL: no chance to remove it
    assert (
        main(
            [
                "train",
                *train_overrides(assets, run, **{"train.steps": 4, "train.save_every": 2, "train.resume": "true"}),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"sead: warning: took over the stale lock {run / '.sead.lock'} of {holder}" in err
    assert [r["step"] for r in metrics_lines(run)] == [1, 2, 3, 4] and not (run / ".sead.lock").exists()
