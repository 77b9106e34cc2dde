"""The shipped tiny recipes work on the shipped models: ``tools/run_recipes.py`` on a short budget."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "run_recipes.py"


@pytest.fixture(scope="module")
def run_recipes():
    spec = importlib.util.spec_from_file_location("run_recipes", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_opsd_recipe_lifts_the_shipped_student_through_its_own_hinted_copy(run_recipes, tmp_path, monkeypatch):
    """OPSD's teacher is the student reading the reference answer; 10 steps must already lift it."""
    monkeypatch.chdir(tmp_path)
    rows_path = tmp_path / "rows.json"
    overrides = ["train.steps=10", "train.save_every=10", "eval.max_prompts=60", "optim.warmup_steps=2"]
    args = ["--recipes", "opsd", "--out", str(tmp_path / "runs"), "--json", str(rows_path)]
    code = run_recipes.main([*args, *overrides])
    (row,) = json.loads(rows_path.read_text())
    assert (
        row["method"] == "opsd"
        and row["teacher"] is None
        and row["teacher_kind"] == "self"
        and row["n"] == 60
        and row["steps"] == 10
    )
    assert row["end"] > row["start"] + 0.1, row
    assert row["diff"]["low"] > 0 and code == 0
    assert "| opsd | opsd | 10 |" in run_recipes.table([row])


def test_sead_difficulty_writes_the_file_the_trainer_would_estimate(tmp_path, monkeypatch, capsys):
    """``sead difficulty --config C`` uses C's curriculum.estimate_k, so ahead-of-time and at-start agree."""
    from sead.cli import main
    from sead.config import load_config
    from sead.config_files import find_config
    from sead.jsonio import read_jsonl
    from sead.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    common = ["data.max_prompts=24", "curriculum.estimate_k=3", "rollout.max_new_tokens=24"]
    assert main(["difficulty", "--config", "sead", *common, "curriculum.difficulty_path=ahead.jsonl"]) == 0
    cfg = load_config(find_config("sead"), [*common, "curriculum.difficulty_path=at_start.jsonl", "train.steps=1"])
    Trainer(cfg).setup()  # no difficulty file yet: the trainer estimates it before training
    ahead, at_start = read_jsonl(tmp_path / "ahead.jsonl"), read_jsonl(tmp_path / "at_start.jsonl")
    assert len(ahead) == 24 and {row["k"] for row in ahead} == {3}
    assert ahead == at_start
    assert main(["difficulty", "--config", "sead", "--k", "0", *common, "curriculum.difficulty_path=x.jsonl"]) != 0
    assert "k >= 1" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
