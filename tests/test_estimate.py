"""Curriculum difficulty estimation at scale: announced with its size and a time estimate, shared by
all processes (the same file as one process writes), written only when complete, resumable after a
kill, and inside the run folder with {output_dir}."""

from __future__ import annotations

import pytest
from tiny import char_tokenizer, tiny_llama

from sead.data import PromptItem
from sead.difficulty import estimate_to_file
from sead.difficulty_file import difficulty_file
from sead.rollout import RolloutConfig

ITEMS = [PromptItem(id=f"p{i}", question=f"{i}+1=", answer=str(i + 1), prompt=f"{i}+1=") for i in range(6)]
CFG = RolloutConfig(max_new_tokens=3, batch_size=4, chat_template="off", temperature=1.0)  # 2 prompts a chunk at k=2


def starts_with_a_digit(response: str, answer: str) -> bool:
    """A verdict that depends on what was sampled (the tiny model never writes the right sum)."""
    return response[:1].isdigit()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = char_tokenizer()
    return tiny_llama(len(tok), seed=3), tok


def estimate(mt, path, **kw):
    model, tok = mt
    verifier = kw.pop("verifier", starts_with_a_digit)
    estimate_to_file(model, tok, ITEMS, verifier, CFG, 2, path, progress=False, seed=7, **kw)
    return path.read_text()


@pytest.fixture(scope="module")
def reference(model_and_tokenizer, tmp_path_factory):
    return estimate(model_and_tokenizer, tmp_path_factory.mktemp("ref") / "difficulty.jsonl")


def test_the_estimate_is_announced_with_its_size_and_time(model_and_tokenizer, tmp_path, reference):
    lines = []
    assert estimate(model_and_tokenizer, tmp_path / "d.jsonl", announce=lines.append) == reference
    assert lines[0] == (
        "curriculum: estimating prompt difficulty before training: 6 prompts x 2 rollouts = 12 rollouts "
        "of up to 3 tokens"
    )
    assert lines[1].startswith("curriculum: the first 2 prompts took ") and "in all" in lines[1]
    assert lines[-1].startswith("curriculum: 6/6 prompts estimated")
    assert len(reference.splitlines()) == 6 and not list(tmp_path.glob("*.partial*"))
    assert len({line.split('"pass_rate": ')[1].split(",")[0] for line in reference.splitlines()}) > 1  # not all alike


def test_processes_share_the_chunks_and_write_the_same_file(model_and_tokenizer, tmp_path, reference):
    path = tmp_path / "d.jsonl"
    model, tok = model_and_tokenizer
    verifier = starts_with_a_digit
    # Rank 1 first (its barrier does not wait here), then rank 0, which merges both shares.
    estimate_to_file(model, tok, ITEMS, verifier, CFG, 2, path, False, 7, None, rank=1, world=2)
    assert not path.exists() and len((tmp_path / "d.jsonl.partial1").read_text().splitlines()) == 2  # chunk 2 of 3
    lines = []
    estimate_to_file(model, tok, ITEMS, verifier, CFG, 2, path, False, 7, lines.append, rank=0, world=2)
    assert path.read_text() == reference and not list(tmp_path.glob("*.partial*"))
    assert "4 prompts x 2 rollouts" in lines[0] and "split over 2 processes, resuming after 2 done" in lines[0]


def test_a_killed_estimate_resumes_to_the_same_file(model_and_tokenizer, tmp_path, reference):
    path = tmp_path / "d.jsonl"
    calls = {"n": 0}

    def dies_in_the_second_chunk(response, answer):
        calls["n"] += 1
        if calls["n"] > 4:  # 2 prompts x 2 rollouts judged, then the process is killed
            raise KeyboardInterrupt
        return starts_with_a_digit(response, answer)

    with pytest.raises(KeyboardInterrupt):
        estimate(model_and_tokenizer, path, verifier=dies_in_the_second_chunk)
    assert not path.exists()  # the trainer would not mistake a partial estimate for a complete file
    assert len((tmp_path / "d.jsonl.partial0").read_text().splitlines()) == 2
    lines = []
    assert estimate(model_and_tokenizer, path, announce=lines.append) == reference
    assert "4 prompts x 2 rollouts" in lines[0] and "resuming after 2 done" in lines[0]


def test_output_dir_in_the_difficulty_path_is_the_run_folder():
    assert difficulty_file("{output_dir}/difficulty.jsonl", "runs/a") == "runs/a/difficulty.jsonl"
    assert difficulty_file("d.jsonl", "runs/a") == "d.jsonl" and difficulty_file(None, "runs/a") is None
