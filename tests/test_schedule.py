"""sead.schedule: the Zone C annealing weight (paper Eq. 7) and the curriculum competence."""

from __future__ import annotations

import math

import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from sead.schedule import competence, cosine_alpha

PROPS = settings(max_examples=50, deadline=None)


@pytest.mark.parametrize("total", [1, 7, 100, 10_000])
@pytest.mark.parametrize("start,end", [(0.8, 0.0), (1.0, 0.2), (0.5, 0.5), (0.3, 0.9)])
def test_cosine_alpha_matches_reference(total, start, end):
    for step in sorted({-3, 0, 1, total // 3, total // 2, total - 1, total, total + 5}):
        got = cosine_alpha(step, total, start=start, end=end)
        assert got == pytest.approx(ref.cosine_alpha(step, total, start, end), rel=1e-12, abs=1e-12)


def test_cosine_alpha_defaults_are_the_papers():
    assert cosine_alpha(0, 100) == pytest.approx(0.8, abs=1e-12)
    assert cosine_alpha(50, 100) == pytest.approx(0.4, abs=1e-12)  # halfway: the mean of start and end
    assert cosine_alpha(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_alpha(25, 100) == pytest.approx(0.4 * (1 + math.cos(math.pi / 4)), abs=1e-12)


@PROPS
@given(
    total=st.integers(1, 5000),
    start=st.floats(0.0, 2.0),
    drop=st.floats(0.0, 2.0),
    steps=st.lists(st.integers(-10, 5100), min_size=2, max_size=20),
)
def test_cosine_alpha_monotone_with_exact_ends(total, start, drop, steps):
    end = start - drop
    assert cosine_alpha(0, total, start, end) == pytest.approx(start, abs=1e-12)
    assert cosine_alpha(total, total, start, end) == pytest.approx(end, abs=1e-12)
    values = [cosine_alpha(s, total, start, end) for s in sorted(steps)]
    for a, b in zip(values, values[1:]):
        assert b <= a + 1e-15  # non-increasing in step
    for v in values:
        assert end - 1e-12 <= v <= start + 1e-12  # clamped outside [0, total]


def test_cosine_alpha_rejects_nonpositive_total():
    for total in (0, -5):
        with pytest.raises(ValueError, match="total_steps"):
            cosine_alpha(0, total)


@pytest.mark.parametrize("c0,p", [(0.25, 2.0), (0.1, 1.0), (0.5, 3.0), (1.5, 2.0)])
def test_competence_matches_reference(c0, p):
    total = 40
    for step in range(0, 2 * total + 1, 3):
        assert competence(step, total, c0, p) == pytest.approx(ref.competence(step, total, c0, p), rel=1e-12)


def test_competence_defaults_start_at_c0_and_reach_one_at_the_end():
    assert competence(0, 100) == pytest.approx(0.25)
    assert competence(100, 100) == pytest.approx(1.0)
    assert competence(50, 100) == pytest.approx(0.25 * 1.5**2)


@PROPS
@given(
    total=st.integers(1, 5000),
    c0=st.floats(1e-3, 2.0),
    p=st.floats(0.1, 5.0),
    steps=st.lists(st.integers(0, 20_000), min_size=2, max_size=20),
)
def test_competence_nondecreasing_and_capped(total, c0, p, steps):
    values = [competence(s, total, c0, p) for s in sorted(steps)]
    for a, b in zip(values, values[1:]):
        assert b >= a
    assert all(0.0 < v <= 1.0 for v in values)
    assert competence(0, total, c0, p) == pytest.approx(min(1.0, c0))


@pytest.mark.parametrize("kwargs", [{"total_steps": 0}, {"c0": 0.0}, {"c0": -1.0}, {"p": 0.0}])
def test_competence_rejects_bad_arguments(kwargs):
    args = {"step": 1, "total_steps": 10, "c0": 0.25, "p": 2.0} | kwargs
    with pytest.raises(ValueError):
        competence(**args)
