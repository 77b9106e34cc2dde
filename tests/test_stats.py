"""Percentile bootstrap and paired differences (sead.stats) on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sead.stats import Interval, bootstrap_mean, compare_scores, paired_difference, percentile_interval


def test_constant_scores_give_a_point_interval():
    assert bootstrap_mean(np.ones(25)) == Interval(1.0, 1.0, 1.0)
    assert bootstrap_mean(np.zeros(7)) == Interval(0.0, 0.0, 0.0)


def test_symmetric_case_is_centred_and_about_normal_width():
    x = np.array([0.0, 1.0] * 50)  # mean 0.5, sd of the mean 0.05
    iv = bootstrap_mean(x, n_resamples=4000, seed=1)
    assert iv.estimate == 0.5
    assert iv.low < 0.5 < iv.high
    assert (iv.low + iv.high) / 2 == pytest.approx(0.5, abs=0.01)
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * 0.05, rel=0.1)


def test_seeded_and_deterministic():
    x = np.random.default_rng(0).random(40)
    assert bootstrap_mean(x, seed=3) == bootstrap_mean(x, seed=3)
    assert bootstrap_mean(x, seed=3) != bootstrap_mean(x, seed=4)
    # Drawing in blocks does not depend on how many resamples came before in the same block.
    assert bootstrap_mean(x, n_resamples=600, seed=3) == bootstrap_mean(x, n_resamples=600, seed=3)


def test_percentile_interval_matches_numpy_quantiles():
    values = np.arange(1001, dtype=float)
    assert percentile_interval(values, 0.9) == pytest.approx((50.0, 950.0))


def test_paired_difference_sign_and_coverage():
    rng = np.random.default_rng(0)
    hard = rng.random(200)  # per-problem difficulty shared by both models
    b = (rng.random(200) > hard).astype(float)
    a = np.maximum(b, (rng.random(200) < 0.15).astype(float))  # a = b plus some extra solved problems
    true = a.mean() - b.mean()
    iv = paired_difference(a, b, seed=0)
    assert iv.estimate == pytest.approx(true)
    assert iv.low <= true <= iv.high
    assert iv.low > 0  # a is better, and pairing sees it
    flipped = paired_difference(b, a, seed=0)
    assert flipped.estimate == pytest.approx(-true) and flipped.high < 0
    # Pairing removes the shared difficulty: narrower than two independent intervals.
    ia, ib = bootstrap_mean(a, seed=0), bootstrap_mean(b, seed=0)
    assert iv.high - iv.low < (ia.high - ia.low) + (ib.high - ib.low)


def test_compare_scores_reference_rows_and_average():
    rng = np.random.default_rng(1)
    s1 = (rng.random((3, 30)) < [[0.3], [0.5], [0.7]]).astype(float)
    s2 = (rng.random((3, 10)) < [[0.2], [0.2], [0.9]]).astype(float)
    out = compare_scores({"one": s1, "two": s2}, reference=0, n_resamples=500, seed=0)
    assert set(out) == {"one", "two", "average"}
    assert out["one"]["diff"][0] is None and out["two"]["diff"][0] is None
    for m in range(3):
        avg = out["average"]["score"][m]
        assert avg.estimate == pytest.approx((s1[m].mean() + s2[m].mean()) / 2)
        assert avg.low <= avg.estimate <= avg.high
        assert out["one"]["score"][m] == bootstrap_mean(s1[m], 500, seed=0)  # first benchmark: same draws
    d = out["average"]["diff"][2]
    assert d.estimate == pytest.approx(out["average"]["score"][2].estimate - out["average"]["score"][0].estimate)
    assert compare_scores({"one": s1}, reference=None, n_resamples=200)["one"]["diff"] == [None, None, None]
    with pytest.raises(ValueError):
        compare_scores({"one": s1, "two": s2[:2]})
    with pytest.raises(ValueError):
        bootstrap_mean([])
