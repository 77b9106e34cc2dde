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
