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


def _fake_row(tmp_path, name, correct, greedy=True, seed=None):
    """An evaluated row without a model: its samples file says which problems it got right.
    With ``seed``, one run of a seeded variant (``<name>-s<seed>/``, with a ``final/`` folder)."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        eval=SimpleNamespace(k=1, greedy=greedy), train=SimpleNamespace(steps=2, seed=0, batch_size=4)
    )
    run_dir = None if seed is None else tmp_path / f"{name}-s{seed}"
    path = (run_dir or tmp_path / name) / "eval" / "final.json"
    path.parent.mkdir(parents=True)
    if run_dir is not None:
        (run_dir / "final").mkdir()
    recs = [
        {"benchmark": bench, "id": str(i), "mode": "greedy", "sample": 0, "correct": ok}
        for bench, oks in correct.items()
        for i, ok in enumerate(oks)
    ]
    path.with_name("final.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    path.write_text(json.dumps({"compare": {"fp": 1}}))
    return compare_rows.Row(name, name, name, cfg, run_dir, path, {"fp": 1}, seed=seed)


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


def test_single_seed_tables_are_unchanged(tmp_path):
    """Without --seeds the tables are those of the command before it had seeds, line for line."""
    a = [True] * 10 + [False] * 20
    b = [True] * 18 + [False] * 12
    rows = [_fake_row(tmp_path, "opd", {"x": a, "y": a[:10]}), _fake_row(tmp_path, "sead", {"y": b[:10], "x": b})]
    cfg, eopd = rows[0].cfg, tmp_path / "eopd"
    rows.append(compare_rows.Row("eopd", "eopd", "eopd", cfg, eopd, eopd / "eval" / "final.json", {"fp": 1}))
    result = compare_tables.tabulate(rows, tmp_path, "opd", n_resamples=1000)
    keys = ["benchmarks", "confidence", "eval", "metric", "reference", "resamples", "rows", "seed", "train"]
    assert sorted(result) == keys and result["train"] == {"steps": 2, "seed": 0, "batch_size": 4}
    for row in result["rows"]:
        assert sorted(row) == ["description", "diff", "eval", "method", "run_dir", "scores", "status", "variant"]
    assert (tmp_path / "comparison.md").read_text().splitlines() == [
        "# Comparison",
        "",
        "greedy pass@1, in %. Brackets: 95% percentile-bootstrap interval over problems (1000 resamples, seed 0); "
        "average = mean of the benchmark scores, benchmarks resampled independently. Every variant: 2 steps of 4 "
        "prompts, train.seed=0.",
        "",
        "## Scores",
        "",
        "| variant | what | x (n=30) | y (n=10) | average |",
        "|---|---|---:|---:|---:|",
        "| opd | opd | 33.3 [16.7, 50.0] | 100.0 [100.0, 100.0] | 66.7 [58.3, 75.0] |",
        "| sead | sead | 60.0 [43.3, 76.7] | 100.0 [100.0, 100.0] | 80.0 [71.7, 88.3] |",
        "| eopd | eopd | untrained | untrained | untrained |",
        "",
        "## Paired difference to opd (percentage points)",
        "",
        "Each variant minus opd on the same resampled problems. `*`: the interval excludes 0.",
        "",
        "| variant | x (n=30) | y (n=10) | average |",
        "|---|---:|---:|---:|",
        "| sead | +26.7 [+13.3, +43.3] * | +0.0 [+0.0, +0.0] | +13.3 [+6.7, +21.7] * |",
        "",
        "Not in the tables yet (eopd): run `sead compare` again to finish them.",
        "",
        "The intervals cover only the sampling of evaluation problems: each variant was trained once, so "
        "run-to-run training variance is not included. With few problems, read overlapping intervals as no "
        "measured difference.",
    ]


def test_tabulate_averages_seeds_per_problem_and_shows_each_seed(tmp_path):
    import random

    import numpy as np

    from sead.stats import compare_scores

    n, seeds, rng = 40, (0, 1, 2), random.Random(0)
    right = {(m, s): [rng.random() < p for _ in range(n)] for m, p in (("opd", 0.4), ("sead", 0.7)) for s in seeds}
    start = [i < 8 for i in range(n)]
    rows = [_fake_row(tmp_path, "base", {"x": start})]
    rows += [_fake_row(tmp_path, m, {"x": right[m, s]}, seed=s) for m in ("opd", "sead") for s in seeds]
    result = compare_tables.tabulate(rows, tmp_path, "opd", n_resamples=500)
    by = {r["variant"]: r for r in result["rows"]}
    assert list(by) == ["base", "opd", "sead"] and result["train"] == {"steps": 2, "seeds": [0, 1, 2], "batch_size": 4}
    per_problem = {m: [sum(right[m, s][i] for s in seeds) / len(seeds) for i in range(n)] for m in ("opd", "sead")}
    for m in ("opd", "sead"):
        assert by[m]["scores"]["x"]["mean"] == pytest.approx(sum(per_problem[m]) / n)  # the mean over seeds
        assert [x["seed"] for x in by[m]["per_seed"]] == [0, 1, 2]
        assert [x["scores"]["x"] for x in by[m]["per_seed"]] == pytest.approx([sum(right[m, s]) / n for s in seeds])
        assert by[m]["per_seed"][1]["run_dir"] == str(tmp_path / f"{m}-s1") and by[m]["run_dir"] is None
    # The bootstrap resamples problems of the seed-averaged scores, pairing each variant with opd.
    arrays = {"x": np.array([[float(x) for x in start], per_problem["opd"], per_problem["sead"]])}
    expected = compare_scores(arrays, 1, n_resamples=500)["x"]
    assert by["sead"]["diff"]["x"] == pytest.approx(expected["diff"][2].to_dict())
    assert by["sead"]["scores"]["x"] == pytest.approx(expected["score"][2].to_dict())
    assert by["base"]["per_seed"] is None and by["base"]["diff"]["x"]["mean"] < 0

    md = (tmp_path / "comparison.md").read_text()
    assert "## Scores (mean of 3 seeds)" in md and "| average, seed 0 / 1 / 2 |" in md
    assert "3 seeds (0, 1, 2: train.seed and curriculum.seed)" in md and "averaged over 3 seeds" in md
    cells = {m: " / ".join(f"{100 * sum(right[m, s]) / n:.1f}" for s in seeds) for m in ("opd", "sead")}
    for m in ("opd", "sead"):
        assert f"| {m} | {m} | " in md and md.split(f"| {m} | {m} | ")[1].split("\n")[0].endswith(f"| {cells[m]} |")
    assert md.split("| base | base | ")[1].split("\n")[0].endswith("| – |")

    # Some seeds done and others not: a one-line error naming the seed and the command that makes it.
    (tmp_path / "sead-s2" / "eval" / "final.json").unlink()
    with pytest.raises(DataError, match=r"^sead seed 2 is not evaluated \(.*sead-s2.*--only sead \(same --config"):
        compare_tables.tabulate(rows, tmp_path, "opd", n_resamples=500)
    (tmp_path / "opd-s0" / "final").rmdir()
    with pytest.raises(DataError, match=r"^opd seed 0 is not trained \(.*opd-s0 has no final/\)"):
        compare_tables.tabulate(rows, tmp_path, "opd", n_resamples=500)
    # No seed done yet: the variant waits in the table, as an unfinished single run does.
    for s in seeds:
        (tmp_path / f"sead-s{s}" / "eval" / "final.json").unlink(missing_ok=True)
    (tmp_path / "opd-s0" / "final").mkdir()
    result = compare_tables.tabulate(rows, tmp_path, "opd", n_resamples=500)
    sead = result["rows"][2]
    assert sead["status"] == "missing" and [x["status"] for x in sead["per_seed"]] == ["missing"] * 3
    assert "| sead | sead | missing | missing | missing |" in (tmp_path / "comparison.md").read_text()


def test_seeds_are_checked_and_bad_ones_are_one_line_errors(capsys):
    from sead.cli import main
    from sead.compare_options import CompareOptions

    assert CompareOptions().seeds is None and CompareOptions(seeds=[2, 0]).seeds == (2, 0)
    for bad, match in (
        ([], "--seeds is empty"),
        ([0, 0], "names 0 twice"),
        ([0, 1.5], "1.5 is not an integer"),
        ([True], "True is not an integer"),
        ([-1], "out of range"),
        ("0,1", "must be a list of integers"),
    ):
        with pytest.raises(ConfigError, match=match):
            CompareOptions(seeds=bad)
    # Through the CLI: checked before the config is read or any model library is loaded.
    for text, match in (("0,0", "names 0 twice"), ("a", "'a' is not a comma-separated list"), ("", "is empty")):
        assert main(["compare", "--config", "absent.yaml", "--seeds", text]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sead compare: error: --seeds") and match in err and err.count("\n") == 1


def test_compare_seeds_train_each_seed_and_tabulate_them(base, monkeypatch, capsys):
    from sead.cli import main

    real_eval, out = compare_run.evaluate_row, base["root"] / "seeds"
    argv = ["--config", base["config"], "--methods", "opd", "--out", str(out), "--resamples", "500", "--seeds", "0,1"]
    assert compare_main(argv) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["opd-s0", "opd-s1"]
    for s in (0, 1):
        run = out / "runs" / f"opd-s{s}"
        saved = yaml.safe_load((run / "config.yaml").read_text())  # the base config says train.seed=3
        assert saved["train"]["seed"] == s and saved["curriculum"]["seed"] == s and saved["name"] == f"opd-s{s}"
        assert saved["objective"]["method"] == "opd" and (run / "final" / "config.json").is_file()
    assert (out / "base" / "eval" / "base.json").is_file()
    result = json.loads((out / "comparison.json").read_text())
    opd = result["rows"][1]
    assert result["train"]["seeds"] == [0, 1] and [x["seed"] for x in opd["per_seed"]] == [0, 1]
    runs = [problem_scores(out / "runs" / f"opd-s{s}" / "eval" / "final.samples.jsonl")["tiny"] for s in (0, 1)]
    assert opd["scores"]["tiny"]["mean"] == pytest.approx(sum(sum(r.values()) for r in runs) / (2 * 6))
    for entry, run in zip(opd["per_seed"], runs):
        ev = json.loads(open(entry["eval"]).read())
        assert entry["scores"]["tiny"] == pytest.approx(ev["benchmarks"]["tiny"]["pass@1"])
        assert entry["scores"]["tiny"] == pytest.approx(sum(run.values()) / 6)
    assert "## Scores (mean of 2 seeds)" in (out / "comparison.md").read_text()
    table = (out / "comparison.json").read_text()

    # Resumable per seed: nothing trained or evaluated again, also for one seed of them on its own.
    def boom(*a, **k):
        raise AssertionError("must not run again")

    monkeypatch.setattr(compare_run, "train_variant", boom)
    monkeypatch.setattr(compare_run, "evaluate_row", boom)
    assert compare_main(argv) == 0 and (out / "comparison.json").read_text() == table
    assert compare_main(argv[:-1] + ["1", "--only", "opd"]) == 0  # --seeds 1 is seed 1 of --seeds 0,1
    assert "opd seed 1: trained and evaluated already, skipped" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="opd-s0 was trained with a different config .*optim.lr"):
        compare_main(argv + ["optim.lr=5e-4"])

    # A missing seed stops --tabulate-only with one line naming it and the command that makes it.
    (out / "runs" / "opd-s1" / "eval" / "final.json").unlink()
    assert main(["compare", *argv, "--tabulate-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "opd seed 1 is not evaluated" in err and "--only opd" in err
    calls = []
    monkeypatch.setattr(
        compare_run, "evaluate_row", lambda row, *a, **k: calls.append(row.label) or real_eval(row, *a, **k)
    )
    assert compare_main(argv + ["--only", "opd"]) == 0 and calls == ["opd seed 1"]
    monkeypatch.undo()
    assert compare_main(argv + ["--tabulate-only"]) == 0
    assert (out / "comparison.json").read_text() == table  # read back: the numbers of the run that made them


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

    assert sorted(p.name for p in (out / "runs").iterdir()) == ["opd", "sead"]  # no -s<seed> without --seeds
    result = json.loads((out / "comparison.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["base", "opd", "sead"]
    assert result["train"]["seed"] == 3 and not any("per_seed" in r for r in result["rows"])
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


def test_a_variant_being_trained_elsewhere_is_refused_and_left_alone(base, capsys):
    from sead.cli import main
    from sead.run_lock import claim_run_dir

    out = base["root"] / "locked"
    run = out / "runs" / "opd"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    argv = ["--config", base["config"], "--methods", "opd", "--out", str(out), "--only", "opd"]
    with claim_run_dir(run) as claim:  # another `sead compare --only opd` (or `sead train`) is writing it
        claim.started()
        assert main(["compare", *argv]) != 0
    err = capsys.readouterr().err
    assert f"run folder {str(run)!r} (--out) is in use by another sead run" in err
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' and sorted(p.name for p in run.iterdir()) == [
        "metrics.jsonl"
    ]
    assert compare_main(argv) == 0 and (run / "final").is_dir()  # once it is free, the variant trains
