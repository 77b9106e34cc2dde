"""The shared JSON helpers: bad lines reach the caller, writes are all-or-nothing."""

import json

import pytest

from sead.errors import DataError
from sead.jsonio import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl


def test_read_jsonl_reports_each_bad_line_and_keeps_the_good_ones(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\nnot json\n[1, 2]\n\xff\xfe\n{"b": 2}\n')
    seen = []
    rows = read_jsonl(path, on_bad_line=lambda where, problem: seen.append((where, problem)))
    assert rows == [{"a": 1}, {"b": 2}]
    assert [w.rsplit(" ", 1)[1] for w, _ in seen] == ["3", "4", "5"]
    assert "not valid JSON" in seen[0][1] and "list" in seen[1][1] and "UTF-8" in seen[2][1]


def test_read_jsonl_raises_by_default_and_skips_when_asked(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"torn": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_jsonl(path)
    assert read_jsonl(path, on_bad_line=None) == [{"a": 1}]


def test_atomic_writers_round_trip_and_leave_no_temporary(tmp_path):
    out = tmp_path / "sub" / "x.json"
    atomic_write_json(out, {"k": [1, 2]}, durable=True)
    assert json.loads(out.read_text()) == {"k": [1, 2]}
    write_jsonl(tmp_path / "r.jsonl", [{"i": 0}, {"i": 1}])
    assert read_jsonl(tmp_path / "r.jsonl") == [{"i": 0}, {"i": 1}]
    atomic_write_text(out, "replaced")
    assert out.read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.jsonl", "sub", "x.json"]
