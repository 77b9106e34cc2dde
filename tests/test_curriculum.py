"""Curriculum samplers: order, eligibility, refresh, metrics and exact resume via state_dict."""

from __future__ import annotations

import json

import pytest

from sead.curriculum import CurriculumConfig, build_sampler
from sead.data import PromptItem
from sead.difficulty_file import load_difficulties
from sead.errors import CheckpointError, ConfigError, DataError
from sead.schedule import competence

# 20 prompts, difficulties 0.0, 0.05, ..., 0.95 in a scrambled order
DIFFS = [((i * 7) % 20) / 20 for i in range(20)]


def sampler(kind, difficulties=DIFFS, total_steps=10, num_prompts=20, **kw):
    n = num_prompts if difficulties is None else len(difficulties)
    return build_sampler(CurriculumConfig(sampler=kind, **kw), n, total_steps, difficulties)


def test_uniform_is_a_seeded_permutation_per_epoch():
    s = sampler("uniform", difficulties=None, seed=3)
    first = [i for step in range(5) for i in s.next_batch(step, 4)]
    second = [i for step in range(5, 10) for i in s.next_batch(step, 4)]
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second and first != list(range(20))
    again = sampler("uniform", difficulties=None, seed=3)
    assert [i for step in range(5) for i in again.next_batch(step, 4)] == first
    assert sampler("uniform", difficulties=None, seed=4).next_batch(0, 4) != first[:4]


def test_uniform_batches_cross_epochs_and_report_batch_difficulty():
    s = sampler("uniform", seed=0)
    batches = [s.next_batch(step, 8) for step in range(5)]  # 40 draws = two full epochs
    flat = [i for b in batches for i in b]
    assert sorted(flat[:20]) == sorted(flat[20:]) == list(range(20))
    assert s.metrics()["curriculum/batch_difficulty"] == pytest.approx(sum(DIFFS[i] for i in batches[-1]) / 8)


def test_sorted_is_easy_to_hard_one_pass_then_wraps():
    s = sampler("sorted", total_steps=5, noise_sigma=0.002)  # noise far below the 0.05 gaps
    order = [i for step in range(5) for i in s.next_batch(step, 4)]
    assert sorted(order) == list(range(20))
    assert [DIFFS[i] for i in order] == sorted(DIFFS)
    nxt = s.next_batch(5, 4)  # a second pass starts easy again
    assert max(DIFFS[i] for i in nxt) <= 0.25
    assert s.metrics()["curriculum/epoch"] == 1.0


def test_sorted_noise_breaks_ties_randomly():
    ties = [0.5] * 10
    orders = {tuple(sampler("sorted", ties, seed=seed).next_batch(0, 10)) for seed in range(5)}
    assert len(orders) > 1
    flat = [0.0] * 10
    assert sampler("sorted", flat, noise_sigma=0.0).next_batch(0, 10) == list(range(10))


def test_competence_only_draws_eligible_prompts():
    total = 10
    s = sampler("competence", total_steps=total, c0=0.25, p=2.0)
    for step in range(total):
        c = competence(step + 1, total, 0.25, 2.0)
        batch = s.next_batch(step, 4)
        assert len(set(batch)) == 4
        assert all(DIFFS[i] <= c + 1e-9 for i in batch), (step, c, [DIFFS[i] for i in batch])
        m = s.metrics()
        assert m["curriculum/competence"] == pytest.approx(c)
        assert m["curriculum/eligible"] == pytest.approx(sum(d <= c + 1e-9 for d in DIFFS) / 20)
    assert m["curriculum/competence"] == 1.0 and m["curriculum/eligible"] == 1.0  # last step: everything


def test_competence_covers_the_eligible_set_before_repeating():
    diffs = [0.0] * 6 + [1.0] * 14  # only 6 eligible until the end
    s = sampler("competence", diffs, total_steps=100)
    first = s.next_batch(0, 3) + s.next_batch(1, 3)
    assert sorted(first) == list(range(6))
    assert sorted(s.next_batch(2, 3) + s.next_batch(3, 3)) == list(range(6))


def test_competence_with_no_eligible_prompt_takes_the_easiest():
    diffs = [0.9, 0.6, 1.0, 0.7, 0.95, 0.8]
    s = sampler("competence", diffs, total_steps=100)
    assert sorted(s.next_batch(0, 2)) == [1, 3]  # none <= 0.25: the two easiest
    assert s.metrics()["curriculum/eligible"] == pytest.approx(2 / 6)
    big = s.next_batch(1, 8)  # batch larger than the data: repeats are unavoidable
    assert len(big) == 8 and set(big) == set(range(6))


def test_refreshing_follows_verdicts_and_explores():
    diffs = [0.0] * 8 + [0.5] * 8 + [1.0] * 4
    s = sampler("refreshing", diffs, total_steps=1000, refresh_momentum=0.5, explore_frac=0.25)
    batch = s.next_batch(0, 4)
    explored = [i for i in batch if diffs[i] > 0.25]
    assert len(explored) == 1 and 8 <= explored[0] < 16  # the easiest not-yet-eligible prompts
    s.update(batch, [1.0 if i in explored else 0.0 for i in batch])
    assert s.difficulties[explored[0]] == pytest.approx(0.25)  # 0.5*0.5 + 0.5*0
    assert all(s.difficulties[i] == pytest.approx(0.5) for i in batch if i not in explored)
    assert s.metrics()["curriculum/batch_pass_rate"] == pytest.approx(0.25)
    s.next_batch(1, 4)  # the refreshed prompt is now eligible, the three failed ones are not
    assert s.metrics()["curriculum/eligible"] == pytest.approx((8 - 3 + 1) / 20)


def test_refreshing_without_updates_matches_competence_eligibility():
    s = sampler("refreshing", explore_frac=0.0)
    c = sampler("competence")
    for step in range(10):
        s.next_batch(step, 4)
        c.next_batch(step, 4)
        assert s.metrics()["curriculum/eligible"] == c.metrics()["curriculum/eligible"]


@pytest.mark.parametrize("kind", ["uniform", "competence", "sorted", "refreshing"])
def test_state_dict_round_trip_resumes_identically(kind):
    s = sampler(kind, total_steps=12, seed=5)
    for step in range(7):
        b = s.next_batch(step, 3)
        s.update(b, [float(i % 2) for i in b])
    state = json.loads(json.dumps(s.state_dict()))
    fresh = sampler(kind, total_steps=12, seed=5)
    fresh.load_state_dict(state)
    assert fresh.metrics() == s.metrics()
    for step in range(7, 20):
        a, b = s.next_batch(step, 3), fresh.next_batch(step, 3)
        assert a == b
        s.update(a, [0.5] * 3)
        fresh.update(b, [0.5] * 3)
    assert fresh.metrics() == s.metrics()


def test_state_dict_mismatch_is_refused():
    state = sampler("uniform").state_dict()
    with pytest.raises(CheckpointError, match="same data"):
        sampler("sorted").load_state_dict(state)
    with pytest.raises(CheckpointError):
        sampler("uniform", difficulties=DIFFS[:10]).load_state_dict(state)


def test_build_errors():
    with pytest.raises(ConfigError, match="curriculum.difficulty_path"):
        build_sampler(CurriculumConfig(sampler="competence"), 10, 10, None)
    with pytest.raises(DataError, match="sead difficulty"):
        build_sampler(CurriculumConfig(sampler="sorted"), 10, 10, [0.1] * 9)
    for kw, key in [
        ({"sampler": "easy"}, "curriculum.sampler"),
        ({"c0": 0}, "curriculum.c0"),
        ({"p": -1}, "curriculum.p"),
        ({"refresh_momentum": 1.0}, "curriculum.refresh_momentum"),
    ]:
        with pytest.raises(ConfigError, match=key):
            CurriculumConfig(**kw)


def test_load_difficulties(tmp_path):
    items = [PromptItem(id=str(i), question="q", answer="1", prompt="q") for i in range(3)]
    path = tmp_path / "diff.jsonl"
    path.write_text(
        '{"id": "2", "pass_rate": 0.25, "difficulty": 0.75}\n{"id": "0", "pass_rate": 1.0}\n'
        '{"id": "1", "pass_rate": 0.5, "difficulty": 0.5}\n{"id": "extra", "pass_rate": 0, "difficulty": 1}\n'
    )
    assert load_difficulties(str(path), items) == [0.0, 0.5, 0.75]
    items.append(PromptItem(id="new", question="q", answer="1", prompt="q"))
    with pytest.raises(DataError, match="1 of 4 prompts have no difficulty.*'new'"):
        load_difficulties(str(path), items)
    path.write_text('{"id": "0", "pass_rate": 1.0}\nnot json\n')
    with pytest.raises(DataError, match="line 2"):
        load_difficulties(str(path), items[:1])
    path.write_text('{"id": "0", "difficulty": 1.5}\n')
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        load_difficulties(str(path), items[:1])
    with pytest.raises(DataError, match="does not exist"):
        load_difficulties(str(tmp_path / "none.jsonl"), items)
