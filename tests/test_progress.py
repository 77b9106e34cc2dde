"""Cluster observability: plain log lines when stdout is not a terminal, a rich bar that keeps the step
and ETA at 80 columns, eval results on the console, and the trackers (TensorBoard, W&B offline,
trackio) receiving a 2-step run's metrics under the run's name."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console
from tiny import save_tiny_pair

from sead.config import load_config
from sead.progress import StepProgress, plain_line
from sead.trackers import _installed
from sead.trainer import Trainer

RECORD = {
    "loss/total": 0.12345,
    "zones/frac_a": 0.5,
    "zones/frac_b": 0.4,
    "zones/frac_c": 0.1,
    "perf/tokens_per_s": 812.4,
    "entropy/student_mean": 1.25,
}


class Clock:
    """A clock the test moves: each step below takes one second."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def lines_of(total, start=0, log_every=10, evals=(), **kw) -> list[str]:
    stream, clock = io.StringIO(), Clock()
    with StepProgress(total, start=start, log_every=log_every, stream=stream, clock=clock, **kw) as progress:
        for step in range(start + 1, total + 1):
            clock.t += 1.0
            record = {**RECORD, **({"eval/heldout/pass@1": 0.25} if step in evals else {})}
            progress.update(step, record)
    return stream.getvalue().splitlines()


def test_plain_lines_every_n_steps_first_and_last_always():
    lines = lines_of(25)
    assert [line.split()[1] for line in lines] == ["1/25", "10/25", "20/25", "25/25"]
    assert lines[1] == ("step 10/25  loss 0.1235  zones A/B/C 0.50/0.40/0.10  tok/s 812  elapsed 0:00:10  eta 0:00:15")
    assert lines[-1].endswith("eta 0:00:00")


def test_plain_lines_of_a_resumed_run_and_eval_steps():
    lines = lines_of(25, start=12, evals={13})
    assert [line.split()[1] for line in lines] == ["13/25", "20/25", "25/25"]
    assert lines[0].endswith("eval heldout/pass@1 0.250") and "elapsed 0:00:01  eta 0:00:12" in lines[0]
    assert [line.split()[1] for line in lines_of(25, evals={7})] == ["1/25", "7/25", "10/25", "20/25", "25/25"]


def test_no_lines_when_off_or_not_the_main_process():
    assert lines_of(25, log_every=0) == []
    assert lines_of(25, enabled=False) == []


def test_plain_line_without_zones_or_eta():
    line = plain_line(1, 5, {"loss/total": 1.0, "reward/mean": 0.5, "zones/frac_b": float("nan")}, 3.0, None)
    assert line == "step 1/5  loss 1.0000  reward 0.50  elapsed 0:00:03  eta ?"


def test_the_bar_keeps_step_and_eta_at_80_columns():
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    with StepProgress(200, start=56, console=console) as progress:
        progress.update(57, {**RECORD, "loss/fkl": 0.5, "reward/mean": 0.3})
        progress.update(58, {**RECORD, "eval/heldout/pass@1": 0.5})
        progress._progress.refresh()
    out = console.file.getvalue()
    bar = [line for line in re.split(r"[\r\n]", out) if "train" in line][-1]
    assert "58/200" in bar and "eta" in bar and re.search(r"eta \S+:\d\d:\d\d", bar), bar
    assert "loss 0.1235" in bar and len(bar.replace("\x1b[2K", "")) <= 80
    assert "step 58: eval heldout/pass@1 0.500" in out  # above the bar, not lost in it


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress_assets")
    paths = save_tiny_pair(root)
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**paths, "data": str(data)}


def overrides(assets, out, **extra) -> list[str]:
    base = {
        "name": "tiny-run",
        "model.student": assets["student"],
        "model.teacher": assets["teacher"],
        "data.path": assets["data"],
        "data.prompt_field": "question",
        "data.template": "{problem}",
        "verifier.kind": "exact",
        "train.steps": 2,
        "train.batch_size": 2,
        "train.micro_batch_size": 2,
        "rollout.max_new_tokens": 4,
        "rollout.chat_template": "off",
        "logging.samples_every": 0,
        "train.output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_a_run_off_a_terminal_prints_its_lines_and_eval(assets, tmp_path, capsys):
    extra = {"eval.data": f"[heldout={assets['data']}]", "eval.every": 2, "eval.k": 0, "eval.max_new_tokens": 3}
    extra.update({"eval.prompt_field": "question", "eval.template": "{problem}", "eval.chat_template": "off"})
    Trainer(load_config(None, overrides(assets, tmp_path / "run", **extra))).setup().train()
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("step ")]
    assert steps[0].startswith("step 1/2  loss ") and "elapsed" in steps[0] and "eta" in steps[0]
    assert "step 2: evaluating on heldout" in steps and "eval heldout/pass@1" in steps[-1]


def _run_with(assets, tmp_path, tracker, **extra):
    cfg = load_config(None, overrides(assets, tmp_path / "run", **{"logging.trackers": f"[{tracker}]", **extra}))
    trainer = Trainer(cfg).setup()
    return trainer, trainer.accelerator.get_tracker(tracker, unwrap=True)


def _loss(tmp_path, step) -> float:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return next(json.loads(line) for line in lines if json.loads(line)["step"] == step)["loss/total"]


@pytest.mark.skipif(not _installed("tensorboard"), reason="tensorboard is not installed")
def test_tensorboard_receives_the_metrics(assets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _ = _run_with(assets, tmp_path, "tensorboard", **{"logging.project": "proj"})
    trainer.train()
    events = EventAccumulator(str(tmp_path / "run" / "proj")).Reload()  # TensorBoard's run: RUN/<project>
    loss = events.Scalars("loss/total")
    assert [e.step for e in loss] == [1, 2] and loss[1].value == pytest.approx(_loss(tmp_path, 2), rel=1e-6)


@pytest.mark.skipif(not _installed("wandb"), reason="wandb is not installed")
def test_wandb_offline_receives_the_metrics_under_the_run_name(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer, run = _run_with(assets, tmp_path, "wandb", **{"logging.run_name": "my-wandb-run"})
    assert run.name == "my-wandb-run"
    trainer.train()
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")  # inside the run folder
    deadline = time.monotonic() + 60  # wandb's service process may still be writing the file out
    while b"loss/total" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    raw = log.read_bytes()  # the offline record log holds the run name and each logged key and value
    assert b"my-wandb-run" in raw and b"loss/total" in raw and json.dumps(_loss(tmp_path, 2)).encode() in raw


@pytest.mark.skipif(not _installed("trackio"), reason="trackio is not installed")
def test_trackio_receives_the_metrics_under_the_config_name(assets, tmp_path, monkeypatch):
    import trackio
    import trackio.sqlite_storage
    import trackio.utils
    from trackio.sqlite_storage import SQLiteStorage

    # trackio reads TRACKIO_DIR once, at import: point every module's copy at this test's folder
    for module in (trackio, trackio.utils, trackio.sqlite_storage):
        monkeypatch.setattr(module, "TRACKIO_DIR", tmp_path / "trackio")
    trainer, run = _run_with(assets, tmp_path, "trackio", **{"logging.project": "sead-test"})
    assert run.name == "tiny-run"  # no logging.run_name: the config's name
    trainer.train()
    logs = [row for row in SQLiteStorage.get_logs("sead-test", "tiny-run") if "loss/total" in row]
    assert [row["step"] for row in logs] == [1, 2] and logs[1]["loss/total"] == pytest.approx(_loss(tmp_path, 2))
    assert (tmp_path / "trackio" / "sead-test.db").is_file()
