"""A shortened `sead demo` end to end on the shipped tiny models, and the demo's verdict maths."""

from __future__ import annotations

import json

import pytest

from sead.cli import main
from sead.demo_summary import summarise, verdict_lines
from sead.report import SECTIONS


def test_short_demo_writes_results_and_a_full_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--steps",
            "2",
            "--prompts",
            "64",
            "--k",
            "1",
            "--methods",
            "opd,sead",
            "--seeds",
            "0,1",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert {"before", "teacher", "after", "per_seed", "seeds", "sampled", "total_s"} <= set(results)
    assert results["seeds"] == [0, 1] and set(results["after"]) == {"opd", "sead"}
    assert 0.0 <= results["before"] <= 1.0 and results["teacher"] > results["before"]  # shipped teacher is stronger
    for method in ("opd", "sead"):
        assert len(results["per_seed"][method]) == 2
        assert results["after"][method] == pytest.approx(sum(results["per_seed"][method]) / 2)
        for seed in (0, 1):
            run = out / "runs" / f"{method}-s{seed}"
            steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert steps == [1, 2]
            assert (run / "final" / "config.json").exists()
            assert {p.name for p in (run / "eval").glob("*.json")} == {"before.json", "after.json"}
    html = (out / "report" / "report.html").read_text()
    for section_id, _heading in SECTIONS:
        assert f'id="{section_id}"' in html, section_id
    assert "vs before" in html and "gap closed" in html
    assert list((out / "report").glob("*.png"))
    printed = capsys.readouterr().out
    assert "opd" in printed and "sead - opd" in printed and "fix/brk" in printed


def test_bad_seeds_are_one_line_errors(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0,x"]) == 2
    assert main(["demo", "--out", str(tmp_path), "--seeds", "1,1"]) == 2
    err = capsys.readouterr().err
    assert err.count("sead demo: error:") == 2 and "--seeds" in err


def _problems(n: int, right: int) -> dict[str, float]:
    return {str(i): float(i < right) for i in range(n)}


def test_summary_means_over_seeds_gap_and_paired_intervals():
    problems = {
        "before": _problems(100, 20),
        "teacher": _problems(100, 80),
        "a": [_problems(100, 50), _problems(100, 60)],  # mean 55: 35 of the 60-point gap
        "b": [_problems(100, 20), _problems(100, 20)],
    }  # no change
    s = summarise(problems, ["a", "b"], n_resamples=500)
    assert s["score"]["a"]["mean"] == pytest.approx(0.55)
    assert s["gap_closed"]["a"] == pytest.approx(35 / 60) and s["gap_closed"]["b"] == 0
    lift = s["vs_before"]["a"]
    assert lift["mean"] == pytest.approx(0.35) and 0 < lift["low"] <= 0.35 <= lift["high"]
    assert s["vs_before"]["b"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert s["pairs"]["b - a"]["mean"] == pytest.approx(-0.35) and s["pairs"]["b - a"]["high"] < 0
    results = {
        "summary": s,
        "before": 0.2,
        "teacher": 0.8,
        "after": {"a": 0.55, "b": 0.2},
        "seeds": [0, 1],
        "n_eval": 100,
        "flips": {"a": [{"fixed": 30, "broken": 0}, {"fixed": 40, "broken": 0}], "b": [{"fixed": 0, "broken": 0}] * 2},
    }
    text = "\n".join(verdict_lines(results, ["a", "b"]))
    assert "Lifted the student, interval above zero (mean over 2 seeds): a." in text
    assert "includes zero): b" in text and "Best: a, closing 58%" in text and "a beat b by 35.0 points" in text


def test_a_second_demo_on_the_same_folder_is_refused_and_touches_nothing(tmp_path, capsys):
    from sead.run_lock import LOCK_NAME, claim_run_dir

    out = tmp_path / "demo"
    (out / "runs" / "opd-s0").mkdir(parents=True)
    (out / "runs" / "opd-s0" / "metrics.jsonl").write_text('{"step": 1}\n')
    with claim_run_dir(out, key="--out") as claim:  # a demo under way in this folder
        claim.started()
        code = main(["demo", "--out", str(out), "--steps", "1", "--prompts", "32", "--k", "1", "--methods", "opd"])
        err = capsys.readouterr().err
    assert code != 0 and f"run folder {str(out)!r} (--out) is in use by another sead run" in err
    assert (out / "runs" / "opd-s0" / "metrics.jsonl").read_text() == '{"step": 1}\n'  # not cleaned away
    assert sorted(p.name for p in out.iterdir()) == ["runs"] and not (out / LOCK_NAME).exists()
