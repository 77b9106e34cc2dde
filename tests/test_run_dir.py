"""The run directory across restarts: which config changes a resume accepts, and which records it drops."""

import json
from types import SimpleNamespace

from sead.run_dir import RESUME_FREE, config_diff, drop_records_after


class _OneProcess:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def test_config_diff_names_changed_keys_but_not_free_or_missing_ones():
    saved = {"train": {"steps": 10, "output_dir": "a", "max_bad_steps": 3}, "optim": {"lr": 0.1}}
    new = {"train": {"steps": 20, "output_dir": "b", "max_bad_steps": 5, "seed": 1}, "optim": {"lr": 0.1}}
    assert config_diff(saved, new, RESUME_FREE) == ["train.steps"]  # seed: the saved file predates the key
    assert config_diff(saved, new, RESUME_FREE | {("train", "steps")}) == []


def test_drop_records_after_keeps_earlier_samples_and_drops_torn_lines(tmp_path):
    lines = [
        json.dumps({"step": 1, "text": "caf\u00e9"}),
        json.dumps({"step": 2, "x": 0.1}),
        "[1, 2]",
        json.dumps({"step": 3}),
        json.dumps({"no_step": 1}),
        '{"step": 2, "torn',
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    truncated = []
    drop_records_after(_OneProcess(), SimpleNamespace(truncate_after=truncated.append), tmp_path, 2)
    assert truncated == [2]
    assert (tmp_path / "samples.jsonl").read_text(encoding="utf-8") == lines[0] + "\n" + lines[1] + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.jsonl"]  # no temporary left behind
