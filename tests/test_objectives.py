"""sead.objectives against the float64 loop references (tests/reference.py): SEAD, EOPD, the
full-divergence baselines and the OPD clipped policy gradient; values and gradients, exact zero
gradients where the method skips tokens, and normalisation that does not depend on the batch split.
"""

from __future__ import annotations

import pytest
import reference as ref
import torch
from test_divergence import DTYPES, assert_grads_close, assert_values_close, logit_scale, make_logits, vocab_mask_for

from sead import objectives as O
from sead.zones import MASKED, Zone

SHAPES = [(1, 1, 2), (3, 7, 33), (1, 2, 151_936)]
TOP_K = {2: 1, 33: 5, 151_936: 64}


def shape_id(shape):
    return "x".join(map(str, shape))


def random_zones(shape, seed, p=(0.15, 0.35, 0.3, 0.2)):
    """Zones (-1, A, B, C) drawn independently of any entropy, with at least one B and one C
    whenever there are two positions or more."""
    g = torch.Generator().manual_seed(seed)
    zones = torch.multinomial(torch.tensor(p), int(torch.Size(shape).numel()), replacement=True, generator=g) - 1
    zones = zones.reshape(shape)
    flat = zones.view(-1)
    if flat.numel() >= 2:
        flat[0], flat[-1] = Zone.B, Zone.C
    else:
        flat[0] = Zone.C
    return zones


def inputs(shape, kind, dtype, seed, top_k=None):
    vmask = vocab_mask_for(shape[-1], seed=seed) if kind == "masked" else None
    student = make_logits(shape, kind, dtype, seed, vocab_mask=vmask)
    teacher = make_logits(shape, kind, dtype, seed + 1, vocab_mask=vmask, boost_k=top_k)
    return student, teacher


def lib_and_ref(lib_fn, ref_fn, student):
    """Library value and grad (w.r.t. student) next to the float64 reference value and grad."""
    s = student.clone().requires_grad_(True)
    out = lib_fn(s)
    out.backward()
    expected, expected_grad = ref.value_and_grad(ref_fn, student)
    return out.detach(), s.grad, expected, expected_grad


def check(lib_fn, ref_fn, student, teacher, dtype, what):
    out, grad, expected, expected_grad = lib_and_ref(lib_fn, ref_fn, student)
    assert out.shape == ()
    scale = logit_scale(student, teacher)
    assert_values_close(out, expected, scale, what)
    assert_grads_close(grad, expected_grad, dtype, scale, f"{what} grad")
    return grad


# ---------------------------------------------------------------------------------------------
# SEAD
# ---------------------------------------------------------------------------------------------


def _sead_cases():
    for shape in SHAPES:
        # The 151,936-wide rows: every dtype / mix / top-k but one kind (the divergence tests
        # cover the kinds at that width).
        for kind in ["normal"] if shape[-1] > 1000 else ["normal", "peaked", "masked"]:
            for dtype in DTYPES:
                for mix in ("eq4", "interpolate"):
                    for topk in (False, True):
                        yield pytest.param(
                            shape,
                            kind,
                            dtype,
                            mix,
                            topk,
                            id=f"{shape_id(shape)}-{kind}-{str(dtype)[6:]}-{mix}-{'topk' if topk else 'full'}",
                        )


def _check_sead(shape, kind, dtype, mix, topk, normalizer):
    k = TOP_K[shape[-1]] if topk else None
    seed = 100 + len(shape) + shape[-1] % 97 + (7 if dtype == torch.bfloat16 else 0)
    student, teacher = inputs(shape, kind, dtype, seed, top_k=k)
    zones = random_zones(shape[:-1], seed)
    alpha, lam = 0.6, 1.5
    grad = check(
        lambda s: O.sead_loss(s, teacher, zones, alpha, lam=lam, zone_c_mix=mix, normalizer=normalizer, top_k=k),
        lambda s: ref.sead_loss(s, teacher, zones, alpha, lam=lam, zone_c_mix=mix, normalizer=normalizer, top_k=k),
        student,
        teacher,
        dtype,
        f"sead {mix}",
    )
    skipped = (zones == Zone.A) | (zones == MASKED)
    assert bool((grad[skipped] == 0).all()), "Zone A and masked positions must get exactly zero gradient"


@pytest.mark.parametrize("shape,kind,dtype,mix,topk", list(_sead_cases()))
def test_sead_loss_matches_reference(shape, kind, dtype, mix, topk):
    _check_sead(shape, kind, dtype, mix, topk, normalizer=None)


@pytest.mark.parametrize("topk", [False, True], ids=["full", "topk"])
@pytest.mark.parametrize("mix", ["eq4", "interpolate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_sead_loss_with_normalizer_matches_reference(dtype, mix, topk):
    _check_sead((3, 7, 33), "normal", dtype, mix, topk, normalizer=37)


def test_sead_token_losses_are_zero_off_zone_and_float32():
    student, teacher = inputs((3, 7, 33), "normal", torch.bfloat16, 200)
    zones = random_zones((3, 7), 200)
    tokens = O.sead_token_losses(student, teacher, zones, alpha=0.5)
    assert tokens.dtype == torch.float32 and tokens.shape == (3, 7)
    assert bool((tokens[(zones == Zone.A) | (zones == MASKED)] == 0).all())
    assert bool((tokens[(zones == Zone.B) | (zones == Zone.C)] > 0).all())
    count = int(((zones == Zone.B) | (zones == Zone.C)).sum())
    torch.testing.assert_close(O.sead_loss(student, teacher, zones, alpha=0.5), tokens.sum() / count)


def test_sead_zone_a_and_masked_get_exactly_zero_gradient():
    student, teacher = inputs((4, 9, 33), "normal", torch.float32, 201)
    # Real zones from entropies, as the trainer builds them.
    from sead.divergence import entropy
    from sead.zones import assign_zones

    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(3)) < 0.7
    zones = assign_zones(entropy(teacher), entropy(student), mask)
    assert (zones == Zone.A).any() and (zones == MASKED).any()
    for mix in ("eq4", "interpolate"):
        s = student.clone().requires_grad_(True)
        O.sead_loss(s, teacher, zones, alpha=0.7, zone_c_mix=mix).backward()
        off = (zones == Zone.A) | (zones == MASKED)
        assert torch.equal(s.grad[off], torch.zeros_like(s.grad[off]))
        assert bool((s.grad[~off].abs().sum(-1) > 0).all()), "B and C positions must get a gradient"


@pytest.mark.parametrize("fill", [Zone.A, MASKED], ids=["all-A", "all-masked"])
@pytest.mark.parametrize("normalizer", [None, 0, 12])
def test_sead_loss_is_zero_when_b_and_c_are_empty(fill, normalizer):
    student, teacher = inputs((2, 5, 33), "normal", torch.float32, 202)
    zones = torch.full((2, 5), int(fill))
    s = student.clone().requires_grad_(True)
    loss = O.sead_loss(s, teacher, zones, alpha=0.8, normalizer=normalizer)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s.grad))


def test_sead_interpolate_limits():
    """interpolate at alpha = 1 is eq4 at alpha = 1; at alpha = 0 Zone C gets lam * RKL."""
    student, teacher = inputs((3, 7, 33), "normal", torch.float32, 203)
    zones = random_zones((3, 7), 203)
    torch.testing.assert_close(
        O.sead_loss(student, teacher, zones, 1.0, lam=2.0, zone_c_mix="interpolate"),
        O.sead_loss(student, teacher, zones, 1.0, lam=2.0, zone_c_mix="eq4"),
    )
    rkl_all = O.divergence_token_losses(student, teacher, (zones == Zone.C), "rkl")
    c_tokens = O.sead_token_losses(student, teacher, zones, 0.0, lam=2.0, zone_c_mix="interpolate")
    torch.testing.assert_close(c_tokens[zones == Zone.C], 2.0 * rkl_all[zones == Zone.C])
    eq4_tokens = O.sead_token_losses(student, teacher, zones, 0.0, zone_c_mix="eq4")
    assert bool((eq4_tokens[zones == Zone.C] == 0).all())  # alpha = 0: Zone C only counts in |B u C|


def test_sead_zero_weight_term_is_skipped_not_multiplied():
    """alpha = 0 (end of annealing): an infinite forward KL on a Zone C token (student puts 0 mass
    where the teacher has some) must not turn the loss into 0 * inf = NaN."""
    vmask = vocab_mask_for(33, seed=9)
    student = make_logits((2, 4, 33), "masked", torch.float32, 204, vocab_mask=vmask)
    teacher = make_logits((2, 4, 33), "normal", torch.float32, 205)
    zones = torch.tensor([[Zone.B, Zone.C, Zone.A, MASKED], [Zone.C, Zone.B, Zone.C, Zone.A]])
    s = student.clone().requires_grad_(True)
    loss = O.sead_loss(s, teacher, zones, alpha=0.0)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(s.grad).all())
    expected = ref.sead_loss(student, teacher, torch.where(zones == Zone.C, Zone.A, zones), 0.0, normalizer=5)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_sead_rejects_unknown_zone_c_mix():
    student, teacher = inputs((1, 2, 5), "normal", torch.float32, 206)
    with pytest.raises(ValueError, match="zone_c_mix"):
        O.sead_loss(student, teacher, torch.tensor([[1, 2]]), 0.5, zone_c_mix="average")


# ---------------------------------------------------------------------------------------------
# The normaliser: splitting the batch must not change the update
# ---------------------------------------------------------------------------------------------


def _split_check(loss_fn, student, count):
    """loss_fn(student_part, rows, normalizer) on the full batch vs the sum over two halves."""
    s_full = student.clone().requires_grad_(True)
    full = loss_fn(s_full, slice(None), None)
    full.backward()
    s_parts = student.clone().requires_grad_(True)
    halves = [slice(0, 1), slice(1, None)]
    total = sum(loss_fn(s_parts[h], h, count) for h in halves)
    total.backward()
    torch.testing.assert_close(total, full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s_parts.grad, s_full.grad, rtol=1e-6, atol=1e-9)


def test_global_normalizer_makes_the_split_irrelevant():
    student, teacher = inputs((4, 6, 33), "normal", torch.float32, 300)
    zones = random_zones((4, 6), 300)
    # Make the halves unequal in their B u C counts, so a per-half mean would differ.
    zones[0] = torch.tensor([Zone.B, Zone.A, Zone.A, MASKED, MASKED, Zone.A])
    mask = zones != MASKED
    n_bc = int(((zones == Zone.B) | (zones == Zone.C)).sum())
    n_valid = int(mask.sum())
    for mix in ("eq4", "interpolate"):
        _split_check(
            lambda s, h, n: O.sead_loss(s, teacher[h], zones[h], 0.4, zone_c_mix=mix, normalizer=n), student, n_bc
        )
    _split_check(lambda s, h, n: O.rkl_loss(s, teacher[h], mask[h], normalizer=n), student, n_valid)
    _split_check(lambda s, h, n: O.fkl_loss(s, teacher[h], mask[h], normalizer=n), student, n_valid)
    _split_check(lambda s, h, n: O.jsd_loss(s, teacher[h], mask[h], beta=0.3, normalizer=n), student, n_valid)
    _split_check(lambda s, h, n: O.eopd_loss(s, teacher[h], mask[h], tau=2.5, normalizer=n), student, n_valid)
    # ...and the per-half mean would not be the same (the test above could fail).
    halves = O.sead_loss(student[:1], teacher[:1], zones[:1], 0.4) + O.sead_loss(
        student[1:], teacher[1:], zones[1:], 0.4
    )
    assert not torch.allclose(halves, O.sead_loss(student, teacher, zones, 0.4))


def test_normalizer_divides_the_sum():
    student, teacher = inputs((3, 7, 33), "normal", torch.float32, 301)
    zones = random_zones((3, 7), 301)
    tokens = O.sead_token_losses(student, teacher, zones, 0.5)
    for n in (1, 7, 100.0, torch.tensor(55)):
        torch.testing.assert_close(O.sead_loss(student, teacher, zones, 0.5, normalizer=n), tokens.sum() / float(n))


# ---------------------------------------------------------------------------------------------
# Baselines: full divergences, EOPD, OPD
# ---------------------------------------------------------------------------------------------


def random_mask(shape, seed, p=0.7):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p
    mask.view(-1)[0] = True
    return mask


@pytest.mark.parametrize("normalizer", [None, 50], ids=["own-count", "normalizer"])
@pytest.mark.parametrize("topk", [False, True], ids=["full", "topk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
def test_divergence_losses_match_reference(kind, dtype, topk, normalizer):
    k = 5 if topk else None
    student, teacher = inputs((3, 7, 33), "normal", dtype, 400, top_k=k)
    mask = random_mask((3, 7), 400)
    lib = {
        "rkl": lambda s: O.rkl_loss(s, teacher, mask, normalizer=normalizer, top_k=k),
        "fkl": lambda s: O.fkl_loss(s, teacher, mask, normalizer=normalizer, top_k=k),
        "jsd": lambda s: O.jsd_loss(s, teacher, mask, beta=0.3, normalizer=normalizer, top_k=k),
    }[kind]
    grad = check(
        lib,
        lambda s: ref.divergence_loss(s, teacher, mask, kind, beta=0.3, normalizer=normalizer, top_k=k),
        student,
        teacher,
        dtype,
        kind,
    )
    assert bool((grad[~mask] == 0).all())


def test_divergence_token_losses_rejects_unknown_kind():
    student, teacher = inputs((1, 2, 5), "normal", torch.float32, 401)
    with pytest.raises(ValueError, match="unknown divergence"):
        O.divergence_token_losses(student, teacher, torch.ones(1, 2, dtype=torch.bool), kind="tvd")


def gap_tau(teacher, mask):
    """A threshold halfway between two well-separated teacher entropies of valid positions, so the
    gate does not depend on float32 vs float64 rounding."""
    h = ref.entropy(teacher)[mask].sort().values
    gaps = h[1:] - h[:-1]
    i = int(gaps[len(gaps) // 4 :].argmax()) + len(gaps) // 4
    assert gaps[i] > 1e-3
    return float((h[i] + h[i + 1]) / 2)


@pytest.mark.parametrize("normalizer", [None, 40], ids=["own-count", "normalizer"])
@pytest.mark.parametrize("topk", [False, True], ids=["full", "topk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_eopd_loss_matches_reference(dtype, topk, normalizer):
    k = 5 if topk else None
    student, teacher = inputs((3, 7, 33), "normal", dtype, 500, top_k=k)
    mask = random_mask((3, 7), 500)
    tau = gap_tau(teacher, mask)
    grad = check(
        lambda s: O.eopd_loss(s, teacher, mask, tau, normalizer=normalizer, top_k=k),
        lambda s: ref.eopd_loss(s, teacher, mask, tau, normalizer=normalizer, top_k=k),
        student,
        teacher,
        dtype,
        "eopd",
    )
    assert bool((grad[~mask] == 0).all())
    # The gate really splits the tokens: above tau the loss is RKL + FKL, below it RKL alone.
    tokens = O.eopd_token_losses(student, teacher, mask, tau, top_k=k)
    rkl = O.divergence_token_losses(student, teacher, mask, "rkl", top_k=k)
    gated = (ref.entropy(teacher) > tau) & mask
    assert gated.any() and (mask & ~gated).any()
    torch.testing.assert_close(tokens[mask & ~gated], rkl[mask & ~gated])
    assert bool((tokens[gated] > rkl[gated]).all())


def test_eopd_ungated_infinite_forward_kl_does_not_poison_the_loss():
    """Student puts 0 mass where the teacher has some: FKL = inf, but below tau it is not used."""
    vmask = vocab_mask_for(33, seed=11)
    student = make_logits((2, 4, 33), "masked", torch.float32, 502, vocab_mask=vmask)
    teacher = make_logits((2, 4, 33), "normal", torch.float32, 503)
    mask = torch.ones(2, 4, dtype=torch.bool)
    s = student.clone().requires_grad_(True)
    loss = O.eopd_loss(s, teacher, mask, tau=100.0)  # nothing is gated
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(s.grad).all())
    torch.testing.assert_close(loss, O.rkl_loss(student, teacher, mask))


def opd_inputs(dtype, seed, shape=(4, 9)):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 0.05
    # Current log-probs moved away from the old ones, far enough that both clip edges are crossed.
    logprobs = old + torch.randn(shape, generator=g, dtype=torch.float64) * 0.3
    teacher = -torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 0.05
    mask = random_mask(shape, seed)
    return logprobs.to(dtype), old.to(dtype), teacher.to(dtype), mask


@pytest.mark.parametrize("normalizer", [None, 30], ids=["own-count", "normalizer"])
@pytest.mark.parametrize("clip_eps", [0.2, 0.05])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_opd_loss_matches_reference(dtype, clip_eps, normalizer):
    logprobs, old, teacher, mask = opd_inputs(dtype, 600)
    ratio = (logprobs.double() - old.double()).exp()[mask]
    assert (ratio > 1 + clip_eps).any() and (ratio < 1 - clip_eps).any(), "test setup: both clip edges"
    lp = logprobs.clone().requires_grad_(True)
    loss = O.opd_loss(lp, old, teacher, mask, clip_eps=clip_eps, normalizer=normalizer)
    loss.backward()
    expected, expected_grad = ref.value_and_grad(
        lambda x: ref.opd_loss(x, old, teacher, mask, clip_eps=clip_eps, normalizer=normalizer), logprobs
    )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    rtol = 8e-3 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(lp.grad.double(), expected_grad, rtol=rtol, atol=1e-7)
    assert bool((lp.grad[~mask] == 0).all())
    # Clipped tokens get no gradient (it is the min of the two branches that is taken).
    assert bool((expected_grad[mask] == 0).any()) and bool((expected_grad[mask] != 0).any())


def test_opd_on_policy_gradient_is_minus_advantage():
    """One update per rollout (old = current): r = 1 and d loss / d logp = -A / N."""
    _, old, teacher, mask = opd_inputs(torch.float32, 601)
    lp = old.clone().requires_grad_(True)
    O.opd_loss(lp, old, teacher, mask).backward()
    advantage = teacher - old
    expected = torch.where(mask, -advantage / mask.sum(), torch.zeros_like(advantage))
    torch.testing.assert_close(lp.grad, expected, rtol=1e-6, atol=1e-8)


def test_opd_padding_values_do_not_leak():
    """-inf / NaN log-probs at padding must give a finite loss and exactly zero gradient there."""
    logprobs, old, teacher, mask = opd_inputs(torch.float32, 602)
    pad = ~mask
    lp = logprobs.masked_fill(pad, float("-inf")).requires_grad_(True)
    old_p = old.masked_fill(pad, float("nan"))
    teacher_p = teacher.masked_fill(pad, float("-inf"))
    loss = O.opd_loss(lp, old_p, teacher_p, mask)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert bool(torch.isfinite(lp.grad).all()) and bool((lp.grad[pad] == 0).all())
    torch.testing.assert_close(loss, O.opd_loss(logprobs, old, teacher, mask))
