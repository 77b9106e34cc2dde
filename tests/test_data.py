"""Prompt loading: file formats, field mapping, templates and one-line errors for bad data."""

from __future__ import annotations

import json
import time

import pytest

from sead.data import DEFAULT_TEMPLATE, DataConfig, PromptItem, load_prompts
from sead.errors import ConfigError, DataError

ROWS = [
    {"problem": "1+1?", "answer": "2", "uid": "a", "topic": "add"},
    {"problem": "2*3?", "answer": 6, "uid": "b", "topic": "mul"},
    {"problem": "half of 1?", "answer": "\\frac{1}{2}", "uid": "c", "topic": "div"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_default_template(tmp_path):
    items = load_prompts(DataConfig(path=str(write_jsonl(tmp_path / "d.jsonl", ROWS))))
    assert [it.id for it in items] == ["0", "1", "2"]
    assert items[1] == PromptItem(id="1", question="2*3?", answer="6", prompt=DEFAULT_TEMPLATE.format(problem="2*3?"))
    assert items[0].prompt.endswith("within \\boxed{}.")


@pytest.mark.parametrize("fmt", ["json", "json_columns", "csv", "parquet", "dataset_dir"])
def test_other_formats_agree_with_jsonl(tmp_path, fmt):
    cfg = dict(id_field="uid", template="[{topic}] {problem}")
    want = load_prompts(DataConfig(path=str(write_jsonl(tmp_path / "d.jsonl", ROWS)), **cfg))
    if fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(ROWS))
    elif fmt == "json_columns":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}))
    elif fmt == "csv":
        import csv

        path = tmp_path / "d.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist([{**r, "answer": str(r["answer"])} for r in ROWS]), path)
    else:
        import datasets

        path = tmp_path / "ds"
        rows = [{**r, "answer": str(r["answer"])} for r in ROWS]
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    got = load_prompts(DataConfig(path=str(path), **cfg))
    assert got == want
    assert got[2].prompt == "[div] half of 1?"


def test_field_mapping_and_no_answers(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "why?", "id": 7}])
    items = load_prompts(
        DataConfig(path=str(path), prompt_field="question", answer_field=None, id_field="id", template="Q: {problem}")
    )
    assert items == [PromptItem(id="7", question="why?", answer=None, prompt="Q: why?")]


def test_max_prompts_is_a_seeded_subset_in_file_order(tmp_path):
    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(50)]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    a = load_prompts(DataConfig(path=path, max_prompts=10, shuffle_seed=1))
    b = load_prompts(DataConfig(path=path, max_prompts=10, shuffle_seed=1))
    c = load_prompts(DataConfig(path=path, max_prompts=10, shuffle_seed=2))
    assert a == b and a != c and len(a) == 10
    assert [int(it.id) for it in a] == sorted(int(it.id) for it in a)


@pytest.mark.parametrize(
    "content, expect",
    [
        (b'{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n', ["line 2", "not valid JSON"]),
        (b'{"problem": "a", "answer": "1"}\n{"problem": "\xff\xfe", "answer": "1"}\n', ["line 2", "UTF-8"]),
        (b'{"question": "a", "answer": "1"}\n', ["line 1", "'problem'", "data.prompt_field", "question"]),
        (b'{"problem": "a"}\n', ["line 1", "'answer'", "data.answer_field"]),
        (b'{"problem": "", "answer": "1"}\n', ["line 1", "empty"]),
        (b'{"problem": {"x": 1}, "answer": "1"}\n', ["line 1", "not text"]),
        (b"[1, 2]\n", ["line 1", "not an object"]),
        (b"\n\n", ["no rows"]),
    ],
)
def test_bad_rows_give_one_line_errors(tmp_path, content, expect):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_prompts(DataConfig(path=str(path)))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg or "no rows" in msg
    for part in expect:
        assert part in msg


def test_duplicate_ids_and_template_fields(tmp_path):
    path = str(
        write_jsonl(
            tmp_path / "d.jsonl", [{"problem": "a", "answer": "1", "k": 1}, {"problem": "b", "answer": "2", "k": 1}]
        )
    )
    with pytest.raises(DataError, match="repeats"):
        load_prompts(DataConfig(path=path, id_field="k"))
    with pytest.raises(DataError, match="'topic' used by data.template"):
        load_prompts(DataConfig(path=path, template="{topic}: {problem}"))


def test_missing_paths_fail_fast(tmp_path):
    start = time.perf_counter()
    for path in [str(tmp_path / "nope.jsonl"), str(tmp_path / "a" / "b" / "c"), "no-such-local-thing", ""]:
        with pytest.raises(DataError):
            load_prompts(DataConfig(path=path))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_prompts(DataConfig(path=str(tmp_path / "d.txt")))
    assert time.perf_counter() - start < 5


def test_json_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"problem": "a"}\n{"problem": "b"}\n')
    with pytest.raises(DataError, match=".jsonl"):
        load_prompts(DataConfig(path=str(path)))
    path.write_text('{"x": 1}')
    with pytest.raises(DataError, match="JSON list"):
        load_prompts(DataConfig(path=str(path)))


def test_missing_split_in_dataset_dir(tmp_path):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"problem": "a", "answer": "1"}])}).save_to_disk(
        str(tmp_path / "ds")
    )
    with pytest.raises(DataError, match="data.split"):
        load_prompts(DataConfig(path=str(tmp_path / "ds")))
    assert len(load_prompts(DataConfig(path=str(tmp_path / "ds"), split="test"))) == 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(prompt_field=""), "data.prompt_field"),
        (dict(template="no placeholder"), "data.template"),
        (dict(template="{problem} \\boxed{}"), "data.template"),
        (dict(template="{problem"), "data.template"),
        (dict(max_prompts=0), "data.max_prompts"),
        (dict(answer_field=""), "data.answer_field"),
    ],
)
def test_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DataConfig(**kwargs)
