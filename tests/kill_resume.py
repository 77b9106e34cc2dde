"""SIGKILL a real ``sead train`` process at three moments, resume it each time, compare bit for bit.

    python tests/kill_resume.py [--fast] [WORKDIR]   # prints a summary; exit status 0 = identical

A reference run goes uninterrupted while a second run of the same config is killed with SIGKILL
(no handler can run) at three moments and resumed with ``train.resume=true`` after each:

1. mid-run, after the first metrics line and before the first checkpoint;
2. in the middle of writing a checkpoint (``SEAD_TEST_PAUSE_IN_CHECKPOINT`` in ``sead.checkpoint``
   holds the write of ``step-4`` half-done): the half-written ``.tmp-step-4`` must not be picked;
3. mid-step, after a later checkpoint (the resumed run redoes the steps since it).

Then the final weights, the final checkpoint's optimiser/scheduler/RNG/trainer state, every
``metrics.jsonl`` line (timings aside) and ``samples.jsonl`` must equal the reference on CPU, with
no metrics line lost or duplicated. ``tests/test_reliability.py`` runs :func:`kill_resume_check`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS, SAVE_EVERY = 8, 2  # two checkpoints after moment 3, so the run cannot finish before it is killed
PAUSE_STEP = 4  # checkpoint whose write is interrupted (moment 2)
VOLATILE = ("time/", "perf/")  # wall-clock metrics: the only keys allowed to differ


def make_assets(root: Path) -> dict:
    """Tiny teacher/student checkpoints and 100 addition prompts under ``root``."""
    sys.path.insert(0, str(HERE))
    from tiny import save_addition_run

    root.mkdir(parents=True, exist_ok=True)
    return save_addition_run(root)


def train_overrides(assets: dict, out: Path, **extra) -> list[str]:
    values = {
        "model.student": assets["student"],
        "model.teacher": assets["teacher"],
        "data.path": assets["data"],
        "data.prompt_field": "question",
        "data.template": "{problem}",
        "verifier.kind": "exact",
        "objective.method": "sead",
        "train.steps": STEPS,
        "train.save_every": SAVE_EVERY,
        "train.batch_size": 4,
        "train.micro_batch_size": 4,
        "rollout.max_new_tokens": 6,
        "rollout.batch_size": 8,
        "train.output_dir": str(out),
        "train.torch_threads": 1,
        "logging.samples_every": 1,
        "logging.progress": False,
        "optim.lr": 1e-3,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


class Proc:
    """A running ``sead train`` process: ``pid``, ``poll()``, ``wait(timeout)``, ``returncode``."""

    def __init__(self, popen=None, process=None):
        self.popen, self.process = popen, process
        self.pid = popen.pid if popen is not None else process.pid

    @property
    def returncode(self):
        return self.popen.returncode if self.popen is not None else self.process.exitcode

    def poll(self):
        return self.popen.poll() if self.popen is not None else self.process.exitcode

    def wait(self, timeout=None):
        if self.popen is not None:
            return self.popen.wait(timeout)
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("sead train", timeout)
        return self.process.exitcode

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()


# Everything a `sead train` run imports (lazily or not), so a forked run starts at once; missing names are skipped.
_PRELOAD = [
    "torch",
    "numpy",
    "sympy",
    "math_verify",
    "rich",
    "safetensors.torch",
    "tokenizers",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.llama.modeling_llama",
    "transformers.generation.utils",
    "transformers.tokenization_utils_tokenizers",
    "transformers.tokenization_utils_fast",
    "accelerate",
    "accelerate.accelerator",
    "sead.cli",
    "sead.trainer",
    "sead.step",
    "sead.scoring",
    "sead.fused",
    "sead.data",
    "sead.curriculum",
    "sead.verifier",
    "sead.evaluate",
    "sead.progress",
    "sead.checkpoint",
    "sead.metrics",
]


def _forked_train(args: list[str], log: str, env_extra: dict, err_log: str | None = None) -> None:
    """Body of a forkserver child: exactly what ``python -m sead.cli train ARGS`` runs after its imports."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(os.open(err_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if err_log else fd, 2)
    os.chdir(os.path.dirname(log))
    os.environ.pop("SEAD_TEST_PAUSE_IN_CHECKPOINT", None)
    os.environ.update(env_extra)
    from sead.cli import main

    code = main(["train", *args])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


_CONTEXT = None


def launch(
    args: list[str], log: Path, env_extra: dict | None = None, fast: bool = False, err_log: Path | None = None
) -> Proc:
    """``python -m sead.cli train ARGS`` in a new process, output to ``log`` (stderr to ``err_log`` if given).

    ``fast=True`` forks the process from a multiprocessing forkserver that imported torch,
    transformers, accelerate and sead once, and runs ``sead.cli.main(["train", *ARGS])`` in it: the
    same code path minus about ten seconds of imports per launch (used by the pytest test).
    """
    global _CONTEXT
    if fast:
        import multiprocessing as mp

        if _CONTEXT is None:
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(_PRELOAD)
        process = _CONTEXT.Process(
            target=_forked_train, args=(list(args), str(log), dict(env_extra or {}), str(err_log) if err_log else None)
        )
        process.start()
        return Proc(process=process)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("SEAD_TEST_PAUSE_IN_CHECKPOINT", None)
    env.update(env_extra or {})
    with open(log, "ab") as fh, open(err_log or os.devnull, "ab") as eh:
        popen = subprocess.Popen(
            [sys.executable, "-m", "sead.cli", "train", *args],
            stdout=fh,
            stderr=eh if err_log else subprocess.STDOUT,
            env=env,
            cwd=str(log.parent),
        )
    return Proc(popen=popen)


def metrics_lines(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


def wait_until(predicate, proc: Proc, log: Path, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited (code {proc.returncode}) before {what}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}:\n{_tail(log)}")
        time.sleep(0.01)


def sigkill(proc: Proc) -> None:
    proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def _tail(log: Path, n: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else "(no log)"


def _checkpoints(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _finish(proc: Proc, log: Path, timeout: float = 300.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"run did not finish:\n{_tail(log)}") from None
    assert proc.returncode == 0, f"run failed (code {proc.returncode}):\n{_tail(log)}"


def assert_same_objects(a, b, where: str = "state") -> None:
    """Recursive equality with tensors compared exactly (bit for bit, NaN equal to NaN; floats too)."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same_objects(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_objects(x, y, f"{where}[{i}]")
    else:
        import numpy as np

        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b), where
        else:
            assert a == b or (isinstance(a, float) and a != a and b != b), f"{where}: {a!r} != {b!r}"


def compare_runs(ref: Path, cut: Path) -> dict:
    """Assert ``cut`` equals ``ref`` bit for bit (see module doc); return what was compared."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(ref / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert_same_objects(a, b, "final weights")
    last = f"checkpoints/step-{STEPS}"
    assert_same_objects(
        load_file(ref / last / "model.safetensors"), load_file(cut / last / "model.safetensors"), "ckpt weights"
    )
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):  # accelerate writes them with torch.save
        assert_same_objects(
            torch.load(ref / last / name, weights_only=False), torch.load(cut / last / name, weights_only=False), name
        )
    assert_same_objects(
        json.loads((ref / last / "trainer_state.json").read_text()),
        json.loads((cut / last / "trainer_state.json").read_text()),
        "trainer_state",
    )
    strip = lambda recs: [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in recs]  # noqa: E731
    ref_lines, cut_lines = metrics_lines(ref), metrics_lines(cut)
    raw = (cut / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(raw) == len(cut_lines), "a torn or blank line is left in metrics.jsonl"
    assert [r["step"] for r in cut_lines] == list(range(1, STEPS + 1)), [r["step"] for r in cut_lines]
    assert strip(cut_lines) == strip(ref_lines), "metrics lines differ"
    assert (cut / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text(), "samples differ"
    return {"tensors": len(a), "metrics_lines": len(cut_lines), "metric_keys": len(strip(cut_lines)[0])}


def kill_resume_check(work: Path, assets: dict | None = None, fast: bool = False) -> dict:
    """Run the whole scenario in ``work``; raise AssertionError on any difference. Returns a summary.

    ``fast``: launch the runs from a pre-imported forkserver (see :func:`launch`).
    """
    from sead.checkpoint import latest_checkpoint, list_checkpoints

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    assets = assets or make_assets(work / "assets")
    ref, cut = work / "ref", work / "cut"
    t0 = time.monotonic()
    ref_proc = launch(train_overrides(assets, ref), work / "ref.log", fast=fast)  # runs alongside the interrupted one
    moments = []
    cut_log = work / "cut.log"
    resume = train_overrides(assets, cut, **{"train.resume": "true"})

    # 1. mid-run, before any checkpoint
    proc = launch(train_overrides(assets, cut), cut_log, fast=fast)
    wait_until(lambda: len(metrics_lines(cut)) >= 1, proc, cut_log, "the first metrics line")
    sigkill(proc)
    moments.append(
        {
            "moment": "mid-run",
            "at_s": round(time.monotonic() - t0, 1),
            "metrics_lines": len(metrics_lines(cut)),
            "checkpoints": _checkpoints(cut),
        }
    )

    # 2. in the middle of writing checkpoint step-PAUSE_STEP
    proc = launch(resume, cut_log, {"SEAD_TEST_PAUSE_IN_CHECKPOINT": str(PAUSE_STEP)}, fast=fast)
    paused = cut / "checkpoints" / f".tmp-step-{PAUSE_STEP}" / "PAUSED"
    wait_until(paused.exists, proc, cut_log, f"the paused write of step-{PAUSE_STEP}")
    sigkill(proc)
    moments.append(
        {
            "moment": "checkpoint write",
            "at_s": round(time.monotonic() - t0, 1),
            "metrics_lines": len(metrics_lines(cut)),
            "checkpoints": _checkpoints(cut),
        }
    )
    partial = cut / "checkpoints" / f".tmp-step-{PAUSE_STEP}"
    assert partial.is_dir() and not (partial / "COMPLETE").exists()
    assert latest_checkpoint(cut) == cut / "checkpoints" / f"step-{PAUSE_STEP - SAVE_EVERY}", latest_checkpoint(cut)

    # 3. mid-step after a later checkpoint
    proc = launch(resume, cut_log, fast=fast)
    wait_until(
        lambda: (
            (list_checkpoints(cut) or [(0, None)])[-1][0] >= PAUSE_STEP and len(metrics_lines(cut)) >= PAUSE_STEP + 1
        ),
        proc,
        cut_log,
        "a step after the later checkpoint",
    )
    sigkill(proc)
    moments.append(
        {
            "moment": "mid-step after a checkpoint",
            "at_s": round(time.monotonic() - t0, 1),
            "metrics_lines": len(metrics_lines(cut)),
            "checkpoints": _checkpoints(cut),
        }
    )

    proc = launch(resume, cut_log, fast=fast)
    _finish(proc, cut_log)
    _finish(ref_proc, work / "ref.log")
    log = cut_log.read_text(errors="replace")
    resumed = [line.split(" at step ")[-1] for line in log.splitlines() if line.startswith("resumed from ")]
    assert len(resumed) == 2 and int(resumed[0]) == PAUSE_STEP - SAVE_EVERY and int(resumed[1]) >= PAUSE_STEP, resumed
    assert "Traceback" not in log, _tail(cut_log)
    summary = compare_runs(ref, cut)
    summary.update(moments=moments, seconds=round(time.monotonic() - t0, 1))
    return summary


def main(argv: list[str]) -> int:
    import tempfile

    fast = "--fast" in argv
    argv = [a for a in argv if a != "--fast"]
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="sead-kill-resume-"))
    summary = kill_resume_check(work, fast=fast)
    print(json.dumps(summary, indent=1))
    print(f"identical to the uninterrupted run ({work})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
