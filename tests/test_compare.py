"""`sead compare` end to end on tiny models (CPU): train, evaluate, tabulate, resume, skip."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny import save_tiny_pair

from sead import compare_rows, compare_run, compare_tables
from sead.compare import compare_main
from sead.compare_plan import plan_variants, resolve_variants
from sead.compare_tables import problem_scores
from sead.config import load_config
from sead.errors import ConfigError, DataError
from sead.metrics import read_metrics


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    paths = save_tiny_pair(root)
    train = root / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a in range(5) for b in range(5))
    )
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"problem": f"{a}*{a}=", "answer": str(a * a)}) + "\n" for a in range(6)))
    config = {
        "model": {"student": paths["student"], "teacher": paths["teacher"]},
        "data": {"path": str(train), "prompt_field": "question", "template": "{problem}"},
        "verifier": {"kind": "exact"},
        "train": {"steps": 2, "batch_size": 4, "micro_batch_size": 4, "save_every": 100, "seed": 3, "torch_threads": 1},
        "rollout": {"max_new_tokens": 4, "batch_size": 8},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "logging": {"progress": False, "samples_every": 0},
        "eval": {"data": [f"tiny={heldout}"], "template": "{problem}", "k": 0, "max_new_tokens": 3},
    }
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": str(path), "heldout": str(heldout)}


def test_plan_variants_and_ablation_names():
    assert [v.name for v in plan_variants(["opd", "eopd", "sead"])] == ["opd", "eopd", "sead"]
    names = [v.name for v in plan_variants(["opd", "sead", "grpo"], "tac")]
    assert names == [
        "opd",
        "sead-none",
        "sead-T",
        "sead-A",
        "sead-C",
        "sead-T-A",
        "sead-T-C",
        "sead-A-C",
        "sead-T-A-C",
        "grpo",
    ]
    full = plan_variants(["opd"], "tac")[-1]
    assert full.name == "sead-T-A-C" and full.objective == {
        "method": "sead",
        "zones": True,
        "anneal": True,
        "curriculum": True,
    }
    assert plan_variants(["opd"])[0].objective == {"method": "opd", "curriculum": False}
    for bad, match in ((["opd", "sed"], "not a method"), (["opd", "opd"], "twice"), ([], "empty")):
        with pytest.raises(ConfigError, match=match):
            plan_variants(bad)
    with pytest.raises(ConfigError, match="--ablation tac"):
        plan_variants(["opd"], "ta")


def test_curriculum_and_eval_sets_are_checked_before_training(base, tmp_path):
    cfg = load_config(base["config"])
    resolved = resolve_variants(cfg, plan_variants(["opd", "sead"]), tmp_path)
    assert resolved["sead"].train.output_dir == str(tmp_path / "runs" / "sead")
    assert resolved["opd"].objective.method == "opd" and resolved["opd"].train.seed == 3
    with pytest.raises(ConfigError, match="sead-C: C .*curriculum.difficulty_path"):
        resolve_variants(cfg, plan_variants(["opd"], "tac"), tmp_path)
    with pytest.raises(ConfigError, match="eval.data"):
        resolve_variants(load_config(base["config"], ["eval.data=[]"]), plan_variants(["opd"]), tmp_path)


def test_problem_scores_greedy_and_sampled(tmp_path):
    recs = [
        {"benchmark": "b", "id": "0", "mode": "greedy", "sample": 0, "correct": True},
        {"benchmark": "b", "id": "0", "mode": "sample", "sample": 0, "correct": False},
        {"benchmark": "b", "id": "0", "mode": "sample", "sample": 1, "correct": True},
        {"benchmark": "b", "id": "1", "mode": "greedy", "sample": 0, "correct": False},
        {"benchmark": "b", "id": "1", "mode": "sample", "sample": 0, "correct": True},
        {"benchmark": "b", "id": "1", "mode": "sample", "sample": 1, "correct": True},
    ]
    path = tmp_path / "x.samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert problem_scores(path) == {"b": {"0": 1.0, "1": 0.0}}
    assert problem_scores(path, "avg@k") == {"b": {"0": 0.5, "1": 1.0}}


def _fake_row(tmp_path, name, correct, greedy=True):
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        eval=SimpleNamespace(k=1, greedy=greedy), train=SimpleNamespace(steps=2, seed=0, batch_size=4)
    )
    path = tmp_path / name / "eval" / "final.json"
    path.parent.mkdir(parents=True)
    recs = [
        {"benchmark": bench, "id": str(i), "mode": "greedy", "sample": 0, "correct": ok}
        for bench, oks in correct.items()
        for i, ok in enumerate(oks)
    ]
    path.with_name("final.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    path.write_text(json.dumps({"compare": {"fp": 1}}))
    return compare_rows.Row(name, name, name, cfg, None, path, {"fp": 1})


def test_tabulate_pairs_problems_and_marks_clear_differences(tmp_path):
    a = [True] * 10 + [False] * 20
    b = [True] * 18 + [False] * 12  # solves everything a solves, and 8 more
    rows = [_fake_row(tmp_path, "opd", {"x": a, "y": a[:10]}), _fake_row(tmp_path, "sead", {"y": b[:10], "x": b})]
    result = compare_tables.tabulate(rows, tmp_path, "opd", n_resamples=1000)
    assert list(result["benchmarks"]) == ["x", "y"]
    sead = result["rows"][1]
    assert sead["scores"]["x"]["mean"] == pytest.approx(0.6) and sead["diff"]["x"]["mean"] == pytest.approx(8 / 30)
    assert sead["diff"]["x"]["low"] > 0  # paired: every resample keeps sead >= opd
    assert sead["scores"]["x"]["low"] < result["rows"][0]["scores"]["x"]["high"]  # unpaired intervals overlap
    assert sead["diff"]["average"]["mean"] == pytest.approx((8 / 30 + 0) / 2)
    md = (tmp_path / "comparison.md").read_text()
    assert "| sead | +26.7 [" in md and "] * |" in md
    rows.append(_fake_row(tmp_path, "bad", {"x": a[:29], "y": a[:10]}))
    with pytest.raises(DataError, match="different problems"):
        compare_tables.tabulate(rows, tmp_path, "opd")


def test_compare_trains_evaluates_tabulates_and_resumes(base, monkeypatch, capsys):
    out = base["root"] / "out"
    argv = ["--config", base["config"], "--methods", "opd,sead", "--out", str(out), "--resamples", "500"]
    assert compare_main(argv) == 0

    for name in ("opd", "sead"):
        run = out / "runs" / name
        assert (run / "final" / "config.json").is_file() and (run / "config.yaml").is_file()
        assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
        assert yaml.safe_load((run / "config.yaml").read_text())["objective"]["method"] == name
    assert (out / "base" / "eval" / "base.json").is_file()

    result = json.loads((out / "comparison.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["base", "opd", "sead"]
    assert result["reference"] == "opd" and result["benchmarks"] == {"tiny": {"n": 6}}
    for row in result["rows"]:
        ev = json.loads(open(row["eval"]).read())
        assert row["scores"]["tiny"]["mean"] == pytest.approx(ev["benchmarks"]["tiny"]["pass@1"])
        assert row["scores"]["tiny"]["low"] <= row["scores"]["tiny"]["mean"] <= row["scores"]["tiny"]["high"]
        assert row["scores"]["average"]["mean"] == pytest.approx(row["scores"]["tiny"]["mean"])
        if row["variant"] == "opd":
            assert row["diff"] is None
        else:
            diff = row["diff"]["tiny"]
            assert diff["mean"] == pytest.approx(
                row["scores"]["tiny"]["mean"] - result["rows"][1]["scores"]["tiny"]["mean"]
            )
    md = (out / "comparison.md").read_text()
    assert "| base | initial student |" in md and "| opd | opd |" in md and "| sead | sead: T on, A on, C off |" in md
    assert "Paired difference to opd" in md and "tiny (n=6)" in md

    # Second run: nothing is trained or evaluated again; the tables are rewritten identically.
    final = out / "runs" / "sead" / "final" / "model.safetensors"
    mtime = final.stat().st_mtime_ns
    table = (out / "comparison.json").read_text()

    def boom(*a, **k):
        raise AssertionError("must not run again")

    monkeypatch.setattr(compare_run, "train_variant", boom)
    monkeypatch.setattr(compare_run, "evaluate_row", boom)
    assert compare_main(argv) == 0
    assert final.stat().st_mtime_ns == mtime and (out / "comparison.json").read_text() == table
    monkeypatch.undo()

    # A changed training config is refused, naming the variant's run dir; eval-only changes are not.
    with pytest.raises(ConfigError, match="different config .*optim.lr"):
        compare_main(argv + ["optim.lr=5e-4"])

    # An unfinished variant resumes from its checkpoint with the same resolved config.
    import shutil

    shutil.rmtree(out / "runs" / "opd" / "final")
    (out / "runs" / "opd" / "eval" / "final.json").unlink()
    calls = []
    real_eval = compare_run.evaluate_row
    monkeypatch.setattr(
        compare_run, "evaluate_row", lambda row, *a, **k: calls.append(row.name) or real_eval(row, *a, **k)
    )
    assert compare_main(argv + ["--only", "opd"]) == 0
    assert calls == ["opd"] and (out / "runs" / "opd" / "final").is_dir()
    assert [r["step"] for r in read_metrics(out / "runs" / "opd" / "metrics.jsonl")] == [1, 2]
    assert "resumed from" in capsys.readouterr().out

    # --tabulate-only gathers what is there and names what is missing.
    assert compare_main(argv[:3] + ["opd,eopd,sead"] + argv[4:] + ["--tabulate-only"]) == 0
    md = (out / "comparison.md").read_text()
    assert "| eopd | eopd | untrained |" in md and "Not in the tables yet (eopd)" in md
    result = json.loads((out / "comparison.json").read_text())
    assert [r["status"] for r in result["rows"]] == ["done", "done", "untrained", "done"]
    print(md)


def test_options_are_checked_before_any_model_library_loads():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import sead
    from sead.compare_options import CompareOptions

    assert CompareOptions().methods == ("opd", "sead") and CompareOptions().n_resamples == 2000
    for bad, match in (
        ({"metric": "pass@2"}, "--metric 'pass@2'"),
        ({"n_resamples": 10}, "--resamples"),
        ({"confidence": 1.0}, "--confidence"),
        ({"only": ["opd"], "tabulate_only": True}, "exclude"),
    ):
        with pytest.raises(ConfigError, match=match):
            CompareOptions(**bad)
    # cli.py builds the compare parser on every `sead` call: importing the command must stay light.
    code = "import sys, sead.compare; print(sorted({'torch', 'accelerate'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(sead.__file__).parents[1])}  # the sead under test
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"


def test_saved_config_check_frees_what_the_trainer_frees_on_resume(base, tmp_path):
    from sead.config import config_to_dict
    from sead.run_dir import RESUME_FREE, resume_changes

    cfg = resolve_variants(load_config(base["config"]), plan_variants(["opd"]), tmp_path)["opd"]
    row = compare_rows.variant_row(plan_variants(["opd"])[0], cfg)
    saved = config_to_dict(cfg)
    row.run_dir.mkdir(parents=True)
    assert row.saved_config() == {}  # no run yet
    for section, key in sorted(RESUME_FREE):  # train.max_bad_steps among them: the trainer resumes over it
        changed = json.loads(json.dumps(saved))
        changed[section][key] = 7 if key in ("max_bad_steps", "torch_threads") else "elsewhere"
        (row.run_dir / "config.yaml").write_text(yaml.safe_dump(changed))
        assert row.saved_config() == changed
    eval_edit = json.loads(json.dumps(saved))
    eval_edit["eval"]["max_new_tokens"] = 9
    (row.run_dir / "config.yaml").write_text(yaml.safe_dump(eval_edit))
    assert row.saved_config() == eval_edit  # evaluation does not change training ...
    assert resume_changes(eval_edit, cfg) == ["eval.max_new_tokens"]  # ... but the trainer needs it forced
    trained = json.loads(json.dumps(saved))
    trained["optim"]["lr"] = 0.5
    (row.run_dir / "config.yaml").write_text(yaml.safe_dump(trained))
    with pytest.raises(ConfigError, match=r"different config \(optim.lr\).* retrain opd"):
        row.saved_config()


def test_problem_scores_refuses_a_bad_samples_file(tmp_path):
    good = json.dumps({"benchmark": "b", "id": 0, "mode": "greedy", "correct": True})
    path = tmp_path / "x.samples.jsonl"
    path.write_text(good + "\n\n" + '{"benchmark": "b", "id"\n')
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        problem_scores(path)
    path.write_text(good + "\n" + json.dumps({"benchmark": "b", "id": 1}) + "\n")
    with pytest.raises(DataError, match="record 2 is not an eval sample record"):
        problem_scores(path)
    with pytest.raises(DataError, match="cannot read"):
        problem_scores(tmp_path / "absent.samples.jsonl")
