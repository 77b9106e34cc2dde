"""A shortened `sead demo` end to end on the shipped tiny models: runs, evaluates, reports."""

from __future__ import annotations

import json

from sead.cli import main
from sead.report import SECTIONS


def test_short_demo_writes_results_and_a_full_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--steps", "2", "--prompts", "64", "--k", "1", "--methods", "opd,sead"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["after"]) == {"opd", "sead"}
    assert 0.0 <= results["before"] <= 1.0 and results["teacher"] > results["before"]  # shipped teacher is stronger
    for method in ("opd", "sead"):
        run = out / "runs" / method
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
        assert (run / "final" / "config.json").exists()
        assert {p.name for p in (run / "eval").glob("*.json")} == {"before.json", "after.json"}
    html = (out / "report" / "report.html").read_text()
    for section_id, heading in SECTIONS:
        assert f'id="{section_id}"' in html, section_id
    assert list((out / "report").glob("*.png"))
    printed = capsys.readouterr().out
    assert "after sead" in printed and "OPD" in printed and "fixed/broken" in printed
