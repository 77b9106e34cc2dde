"""sead.zones against the plain reference (tests/reference.py) and the spec's invariants."""

from __future__ import annotations

import pytest
import reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sead.zones import MASKED, Zone, assign_zones, assign_zones_threshold, check_fractions, zone_counts

FRACTIONS = [
    (0.5, 0.4, 0.1),  # the default
    (0.3, 0.3, 0.4),
    (0.0, 0.5, 0.5),  # round(0.5 N) + round(0.5 N) can exceed N (N = 3: 2 + 2)
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.25, 0.5, 0.25),
]


def tied_entropies(shape, seed, levels=4):
    """Entropies on a coarse grid, so ties are frequent and tie-breaking is exercised."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=g).float() * 0.75


def random_mask(shape, seed, p_valid=0.7):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p_valid


def assert_partition(zones, mask):
    """Every valid position is exactly one of A/B/C, every masked one is -1."""
    valid = mask.bool()
    assert zones.shape == mask.shape and zones.dtype == torch.long
    assert bool((zones[~valid] == MASKED).all())
    assert bool(torch.isin(zones[valid], torch.tensor([Zone.A, Zone.B, Zone.C])).all())


def expected_counts(n, fractions):
    _, rho_b, rho_c = fractions
    n_c = min(round(rho_c * n), n)
    return min(round(rho_b * n), n - n_c), n_c


@pytest.mark.parametrize("fractions", FRACTIONS, ids=str)
@pytest.mark.parametrize(
    "shape,p_valid",
    [((1, 1), 1.0), ((1, 1), 0.0), ((3, 7), 0.7), ((4, 33), 0.5), ((2, 500), 0.9), ((3,), 1.0)],
    ids=["1x1", "1x1-masked", "3x7", "4x33", "2x500", "3"],
)
@pytest.mark.parametrize("ties", [True, False], ids=["ties", "distinct"])
def test_matches_reference(shape, p_valid, fractions, ties):
    seed = sum(shape) * 7 + int(p_valid * 10)
    if ties:
        h_t, h_s = tied_entropies(shape, seed), tied_entropies(shape, seed + 1)
    else:
        g = torch.Generator().manual_seed(seed)
        h_t, h_s = torch.rand(shape, generator=g) * 3, torch.rand(shape, generator=g) * 3
    mask = random_mask(shape, seed + 2, p_valid) if p_valid < 1.0 else torch.ones(shape, dtype=torch.bool)
    zones = assign_zones(h_t, h_s, mask, fractions)
    expected = ref.assign_zones(h_t, h_s, mask, fractions)
    assert_partition(zones, mask)
    assert torch.equal(zones, expected), (zones, expected)


@settings(max_examples=50, deadline=None)
@given(
    n_total=st.integers(1, 60),
    weights=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(lambda w: sum(w) > 0),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    p_valid=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
)
def test_zone_properties(n_total, weights, levels, seed, p_valid):
    total = sum(weights)
    fractions = (weights[0] / total, weights[1] / total, weights[2] / total)
    shape = (n_total,) if seed % 2 else (1, n_total)
    h_t, h_s = tied_entropies(shape, seed, levels), tied_entropies(shape, seed + 1, levels)
    mask = random_mask(shape, seed + 2, p_valid)
    zones = assign_zones(h_t, h_s, mask, fractions)

    assert_partition(zones, mask)
    n = int(mask.sum())
    n_b, n_c = expected_counts(n, fractions)
    counts = zone_counts(zones)
    assert counts == {"A": n - n_b - n_c, "B": n_b, "C": n_c}
    # The zone sizes are the fractions to within one token.
    assert abs(counts["C"] - fractions[2] * n) <= 0.5 + 1e-9
    if n_c + round(fractions[1] * n) <= n:
        assert abs(counts["B"] - fractions[1] * n) <= 0.5 + 1e-9
    # Ranking: every C has teacher entropy >= every non-C valid token; every B has student
    # entropy >= every A token.
    valid = mask.bool()
    is_c, is_b, is_a = zones == Zone.C, zones == Zone.B, zones == Zone.A
    if is_c.any() and (valid & ~is_c).any():
        assert h_t[is_c].min() >= h_t[valid & ~is_c].max()
    if is_b.any() and is_a.any():
        assert h_s[is_b].min() >= h_s[is_a].max()
    assert torch.equal(zones, ref.assign_zones(h_t, h_s, mask, fractions))


def test_ties_break_by_lower_flat_position():
    h_t = torch.ones(2, 3)  # all tied
    h_s = torch.ones(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 0] = False
    zones = assign_zones(h_t, h_s, mask, (0.4, 0.4, 0.2))  # N = 5: 1 C, 2 B, 2 A
    assert zones.tolist() == [[MASKED, Zone.C, Zone.B], [Zone.B, Zone.A, Zone.A]]


def test_zones_do_not_depend_on_batch_layout():
    """The split is over the flattened global batch: reshaping the batch reshapes the zones."""
    g = torch.Generator().manual_seed(3)
    h_t, h_s = torch.rand(4, 9, generator=g), torch.rand(4, 9, generator=g)
    mask = torch.rand(4, 9, generator=g) < 0.8
    zones = assign_zones(h_t, h_s, mask)
    flat = assign_zones(h_t.reshape(-1), h_s.reshape(-1), mask.reshape(-1))
    assert torch.equal(zones.reshape(-1), flat)
    wide = assign_zones(h_t.reshape(2, 18), h_s.reshape(2, 18), mask.reshape(2, 18))
    assert torch.equal(zones.reshape(2, 18), wide)


def test_masked_positions_are_ignored_whatever_their_entropy():
    g = torch.Generator().manual_seed(4)
    h_t, h_s = torch.rand(3, 8, generator=g), torch.rand(3, 8, generator=g)
    mask = torch.rand(3, 8, generator=g) < 0.6
    zones = assign_zones(h_t, h_s, mask)
    # Huge entropies on masked positions change nothing.
    zones2 = assign_zones(h_t.masked_fill(~mask, 1e9), h_s.masked_fill(~mask, 1e9), mask)
    assert torch.equal(zones, zones2)


def test_accepts_differentiable_and_bf16_entropies():
    g = torch.Generator().manual_seed(5)
    h_t = (torch.rand(3, 7, generator=g) * 4).requires_grad_(True)
    h_s = (torch.rand(3, 7, generator=g) * 4).to(torch.bfloat16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    zones = assign_zones(h_t, h_s, mask)
    assert not zones.requires_grad
    assert torch.equal(zones, ref.assign_zones(h_t.detach(), h_s.float(), mask))


def test_int_mask_is_accepted():
    g = torch.Generator().manual_seed(6)
    h_t, h_s = torch.rand(2, 5, generator=g), torch.rand(2, 5, generator=g)
    mask = (torch.rand(2, 5, generator=g) < 0.7).long()
    assert torch.equal(assign_zones(h_t, h_s, mask), assign_zones(h_t, h_s, mask.bool()))


@pytest.mark.parametrize(
    "fractions,match",
    [((0.5, 0.5), "3 values"), ((0.5, 0.6, -0.1), ">= 0"), ((0.5, 0.4, 0.2), "sum to 1")],
)
def test_bad_fractions_are_rejected(fractions, match):
    with pytest.raises(ValueError, match=match):
        check_fractions(fractions)
    h = torch.zeros(2, 2)
    with pytest.raises(ValueError):
        assign_zones(h, h, torch.ones(2, 2, dtype=torch.bool), fractions)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="must match mask"):
        assign_zones(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# Threshold variant
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("student_threshold", [None, 0.75, 1.6])
@pytest.mark.parametrize("teacher_threshold", [0.0, 0.75, 1.6, 100.0])
def test_threshold_matches_reference(teacher_threshold, student_threshold):
    shape = (3, 7)
    h_t, h_s = tied_entropies(shape, 7), tied_entropies(shape, 8)  # values hit the thresholds exactly
    mask = random_mask(shape, 9)
    zones = assign_zones_threshold(h_t, h_s, mask, teacher_threshold, student_threshold)
    assert_partition(zones, mask)
    assert torch.equal(zones, ref.assign_zones_threshold(h_t, h_s, mask, teacher_threshold, student_threshold))


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_total=st.integers(1, 40),
    # float32 thresholds: the library compares float32 entropies with the threshold in float32, so a
    # threshold within float32 rounding of an entropy (0.0 vs -1e-300) is not a meaningful case.
    teacher_threshold=st.floats(-1.0, 3.0, width=32),
    student_threshold=st.one_of(st.none(), st.floats(-1.0, 3.0, width=32)),
)
def test_threshold_properties(seed, n_total, teacher_threshold, student_threshold):
    h_t, h_s = tied_entropies((n_total,), seed), tied_entropies((n_total,), seed + 1)
    mask = random_mask((n_total,), seed + 2)
    zones = assign_zones_threshold(h_t, h_s, mask, teacher_threshold, student_threshold)
    assert_partition(zones, mask)
    valid = mask.bool()
    assert bool(((zones == Zone.C) == (valid & (h_t > teacher_threshold))).all())
    if student_threshold is None:
        assert not bool((zones == Zone.A).any())
    assert torch.equal(zones, ref.assign_zones_threshold(h_t, h_s, mask, teacher_threshold, student_threshold))


def test_zone_counts():
    zones = torch.tensor([[MASKED, 0, 1, 2], [2, 2, 0, MASKED]])
    assert zone_counts(zones) == {"A": 2, "B": 1, "C": 3}
