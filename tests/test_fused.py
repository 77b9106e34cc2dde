"""Fused losses from hidden states vs the materialised-logits reference (sead.objectives).

Each test builds both logits as ``transform(hidden @ head.T)``, runs the reference objective with
autograd, and compares the fused value and the gradients w.r.t. the student hidden states and head.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sead import fused, fused_kernels, fused_losses, fused_single_pass
from sead.divergence import entropy, forward_kl, reverse_kl
from sead.objectives import eopd_loss, fkl_loss, rkl_loss, sead_loss, sead_token_losses
from sead.zones import MASKED, Zone, assign_zones, assign_zones_threshold

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=5e-2, atol=2e-3)}


@pytest.fixture(autouse=True, params=[None, 3], ids=["scratch-default", "scratch3"])
def scratch_rows(request, monkeypatch):
    """Every test twice: with the kernels' default scratch blocks (one block per chunk at these
    small vocabularies) and with 3-row blocks, so chunks span several blocks and end on a partial one."""
    if request.param is not None:
        monkeypatch.setattr(fused_kernels, "_SCRATCH_ROWS", request.param)
        monkeypatch.setattr(fused_kernels, "_SCRATCH_ELEMENTS", 0)
    return request.param


def make(n=37, h=16, h_t=12, v=33, v_t=None, dtype=torch.float32, masked=0.2, seed=0, lead=()):
    """Random student/teacher hidden states and heads; logits with spread-out entropies."""
    g = torch.Generator().manual_seed(seed)
    scale_N = torch.rand(*lead, n, 1, generator=g) * 2.0 + 0.2  # per-token sharpness
    s_hidden = (torch.randn(*lead, n, h, generator=g) * scale_N).to(dtype).requires_grad_()
    s_head = (torch.randn(v, h, generator=g) * 0.6).to(dtype).requires_grad_()
    t_hidden = (torch.randn(*lead, n, h_t, generator=g) * scale_N).to(dtype)
    t_head = (torch.randn(v_t or v, h_t, generator=g) * 0.6).to(dtype)
    mask = torch.rand(*lead, n, generator=g) >= masked
    return s_hidden, s_head, t_hidden, t_head, mask


def logits(s_hidden, s_head, t_hidden, t_head, logit_scale=1.0, softcap=None):
    v = s_head.shape[0]
    s = fused.transform_logits(s_hidden @ s_head.T, logit_scale, softcap)
    t = fused.transform_logits(t_hidden @ t_head[:v].T, logit_scale, softcap)
    return s, t


def grads(loss, s_hidden, s_head):
    return torch.autograd.grad(loss, (s_hidden, s_head))


def assert_close(fused_loss, ref_loss, fused_grads, ref_grads, dtype=torch.float32):
    tol = TOL[dtype]
    torch.testing.assert_close(fused_loss.float(), ref_loss.float(), **tol)
    for got, want in zip(fused_grads, ref_grads):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), **tol)


def reference_sead(inputs, alpha, lam=1.0, zone_c_mix="eq4", normalizer=None, zones=None, **transform):
    s_hidden, s_head, t_hidden, t_head, mask = inputs
    s, t = logits(s_hidden, s_head, t_hidden, t_head, **transform)
    if zones is None:
        zones = assign_zones(entropy(t.detach()), entropy(s.detach()), mask)
    loss = sead_loss(s, t, zones, alpha, lam, zone_c_mix=zone_c_mix, normalizer=normalizer)
    return loss, zones, grads(loss, s_hidden, s_head)


@pytest.mark.parametrize("zone_c_mix", ["eq4", "interpolate"])
@pytest.mark.parametrize("n,chunk_size", [(37, 1), (37, 7), (64, 16), (50, 1024)])
def test_sead_matches_reference_fp32(zone_c_mix, chunk_size, n):
    inputs = make(n=n, seed=n + chunk_size)
    ref_loss, ref_zones, ref_grads = reference_sead(inputs, alpha=0.6, lam=1.3, zone_c_mix=zone_c_mix)
    loss, zones = fused_losses.sead_loss_from_hidden(
        *inputs, alpha=0.6, lam=1.3, chunk_size=chunk_size, zone_c_mix=zone_c_mix
    )
    assert torch.equal(zones, ref_zones)
    assert_close(loss, ref_loss, grads(loss, *inputs[:2]), ref_grads)


def test_sead_bfloat16_loose():
    inputs = make(n=45, h=32, h_t=24, v=65, dtype=torch.bfloat16, seed=3)
    ref_loss, ref_zones, ref_grads = reference_sead(inputs, alpha=0.5)
    loss, zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.5, chunk_size=8)
    assert loss.dtype == torch.float32
    assert (zones != ref_zones).sum() <= 2  # bf16 projections may reorder near-equal entropies
    loss_z, _ = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.5, chunk_size=8, zones=ref_zones)
    assert_close(loss_z, ref_loss, grads(loss_z, *inputs[:2]), ref_grads, torch.bfloat16)


def test_zones_identical_to_assign_zones_and_entropies_match():
    s_hidden, s_head, t_hidden, t_head, mask = inputs = make(n=101, v=57, v_t=64, seed=5)
    s, t = logits(*inputs[:4])
    h_s = fused_losses.token_entropies_from_hidden(s_hidden, s_head, mask, chunk_size=10)
    h_t = fused_losses.token_entropies_from_hidden(t_hidden, t_head, mask, chunk_size=10, vocab_size=57)
    torch.testing.assert_close(h_s, torch.where(mask, entropy(s.detach()), 0.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_t, torch.where(mask, entropy(t), 0.0), rtol=1e-5, atol=1e-6)
    for fractions in [(0.5, 0.4, 0.1), (0.2, 0.3, 0.5), (1.0, 0.0, 0.0)]:
        want = assign_zones(entropy(t), entropy(s.detach()), mask, fractions)
        got = fused_losses.zones_from_hidden(*inputs, fractions=fractions, chunk_size=13)
        assert torch.equal(got, want)
        assert torch.equal(got, assign_zones(h_t, h_s, mask, fractions))


def test_teacher_padding_rows_are_ignored():
    inputs = make(n=29, v=33, v_t=48, seed=7)
    ref_loss, _, ref_grads = reference_sead(inputs, alpha=0.3)
    loss, _ = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.3, chunk_size=6)
    assert_close(loss, ref_loss, grads(loss, *inputs[:2]), ref_grads)
    s_hidden, s_head, t_hidden, t_head, mask = inputs
    with pytest.raises(ValueError, match="cover the student vocabulary"):
        fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head[:20], mask, alpha=0.3)


def test_all_masked_gives_zero_loss_and_zero_grads():
    s_hidden, s_head, t_hidden, t_head, mask = make(n=9, seed=1)
    mask = torch.zeros_like(mask)
    loss, zones = fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask, alpha=0.5)
    assert loss.item() == 0.0 and (zones == MASKED).all()
    loss.backward()
    assert s_hidden.grad is not None and not s_hidden.grad.any()
    assert s_head.grad is not None and not s_head.grad.any()


def test_zone_a_and_masked_rows_get_exactly_zero_grad():
    inputs = make(n=40, seed=2)
    loss, zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.5, chunk_size=7)
    grad_h, _ = grads(loss, *inputs[:2])
    skipped = (zones == Zone.A) | (zones == MASKED)
    assert not grad_h[skipped].any() and grad_h[~skipped].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("normalizer", [50, torch.tensor(123.0)])
def test_explicit_normalizer_and_given_zones(normalizer):
    inputs = make(n=33, seed=11)
    mask = inputs[-1]
    g = torch.Generator().manual_seed(0)
    zones = torch.where(mask, torch.randint(0, 3, mask.shape, generator=g), MASKED)
    ref_loss, _, ref_grads = reference_sead(inputs, alpha=0.7, normalizer=normalizer, zones=zones)
    loss, used = fused_losses.sead_loss_from_hidden(
        *inputs, alpha=0.7, zones=zones, normalizer=normalizer, chunk_size=5
    )
    assert torch.equal(used, zones)
    assert_close(loss, ref_loss, grads(loss, *inputs[:2]), ref_grads)


def test_micro_batches_with_global_zones_reproduce_the_big_batch():
    """The trainer's recipe: zones and |B u C| over the global batch, one fused call per micro-batch."""
    s_hidden, s_head, t_hidden, t_head, mask = make(n=60, seed=13)
    big, zones = fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask, alpha=0.4)
    want = grads(big, s_hidden, s_head)
    count = int(((zones == Zone.B) | (zones == Zone.C)).sum())
    total = 0.0
    for part in (slice(0, 25), slice(25, 60)):
        loss, _ = fused_losses.sead_loss_from_hidden(
            s_hidden[part], s_head, t_hidden[part], t_head, mask[part], alpha=0.4, zones=zones[part], normalizer=count
        )
        total = total + loss
    assert_close(total, big, grads(total, s_hidden, s_head), want)


@pytest.mark.parametrize("logit_scale,softcap", [(0.7, None), (1.0, 2.5), (1.6, 3.0)])
def test_logit_scale_and_softcap(logit_scale, softcap):
    inputs = make(n=31, seed=17)
    kw = dict(logit_scale=logit_scale, softcap=softcap)
    ref_loss, ref_zones, ref_grads = reference_sead(inputs, alpha=0.6, zone_c_mix="interpolate", **kw)
    loss, zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.6, zone_c_mix="interpolate", chunk_size=4, **kw)
    assert torch.equal(zones, ref_zones)
    assert_close(loss, ref_loss, grads(loss, *inputs[:2]), ref_grads)
    s, t = logits(*inputs[:4], **kw)
    ref = rkl_loss(s, t, inputs[-1])
    got = fused_losses.rkl_loss_from_hidden(*inputs, chunk_size=9, **kw)
    assert_close(got, ref, grads(got, *inputs[:2]), grads(ref, *inputs[:2]))


def test_teacher_transform_differs_from_student():
    inputs = make(n=27, seed=47)
    s_hidden, s_head, t_hidden, t_head, mask = inputs
    s = fused.transform_logits(s_hidden @ s_head.T, 0.9)
    t = fused.transform_logits(t_hidden @ t_head.T, 1.3, 2.0)
    zones = assign_zones(entropy(t), entropy(s.detach()), mask)
    ref = sead_loss(s, t, zones, 0.5)
    loss, got = fused_losses.sead_loss_from_hidden(
        *inputs, alpha=0.5, chunk_size=4, logit_scale=0.9, teacher_transform=(1.3, 2.0)
    )
    assert torch.equal(got, zones)
    assert_close(loss, ref, grads(loss, s_hidden, s_head), grads(ref, s_hidden, s_head))


@pytest.mark.parametrize("name", ["rkl", "fkl", "eopd"])
@pytest.mark.parametrize("normalizer", [None, 77])
def test_full_vocab_objectives_match(name, normalizer):
    inputs = make(n=43, v=41, v_t=50, seed=19)
    s, t = logits(*inputs[:4])
    mask = inputs[-1]
    if name == "eopd":
        tau = float(entropy(t)[mask].median())  # about half the tokens gated on
        ref = eopd_loss(s, t, mask, tau, normalizer=normalizer)
        got = fused_losses.eopd_loss_from_hidden(*inputs, tau=tau, normalizer=normalizer, chunk_size=6)
    else:
        ref = {"rkl": rkl_loss, "fkl": fkl_loss}[name](s, t, mask, normalizer=normalizer)
        got = getattr(fused_losses, f"{name}_loss_from_hidden")(*inputs, normalizer=normalizer, chunk_size=6)
    assert_close(got, ref, grads(got, *inputs[:2]), grads(ref, *inputs[:2]))


def test_token_losses_match_reference_and_grad_output_scales():
    inputs = make(n=35, seed=23)
    s, t = logits(*inputs[:4])
    zones = assign_zones(entropy(t), entropy(s.detach()), inputs[-1])
    w_rkl, w_fkl = fused.sead_weights(zones, alpha=0.6, lam=1.2, zone_c_mix="interpolate")
    loss, tokens = fused.fused_divergence(*inputs[:4], w_rkl, w_fkl, normalizer=10.0, chunk_size=8)
    want = sead_token_losses(s, t, zones, 0.6, 1.2, zone_c_mix="interpolate")
    torch.testing.assert_close(tokens, want.detach(), rtol=1e-5, atol=1e-6)
    ref = 3.0 * sead_loss(s, t, zones, 0.6, 1.2, zone_c_mix="interpolate", normalizer=10.0)
    assert_close(3.0 * loss, ref, grads(3.0 * loss, *inputs[:2]), grads(ref, *inputs[:2]))


def test_batched_leading_dims_and_tied_head():
    """(B, T, H) hidden states from an embedding tied to the student head: both grad paths add up."""
    g = torch.Generator().manual_seed(29)
    ids = torch.randint(0, 33, (3, 11), generator=g)
    head = (torch.randn(33, 16, generator=g) * 0.6).requires_grad_()
    proj = torch.randn(16, 16, generator=g) * 0.5
    t_hidden, t_head = torch.randn(3, 11, 12, generator=g), torch.randn(33, 12, generator=g)
    mask = torch.rand(3, 11, generator=g) > 0.2

    def run(use_fused):
        hidden = torch.tanh(head[ids] @ proj) * 3.0  # depends on the tied weight
        if use_fused:
            return fused_losses.sead_loss_from_hidden(hidden, head, t_hidden, t_head, mask, alpha=0.5, chunk_size=5)
        s, t = logits(hidden, head, t_hidden, t_head)
        zones = assign_zones(entropy(t), entropy(s.detach()), mask)
        return sead_loss(s, t, zones, 0.5), zones

    (ref, ref_zones), (got, zones) = run(False), run(True)
    assert zones.shape == (3, 11) and torch.equal(zones, ref_zones)
    assert_close(got, ref, torch.autograd.grad(got, head), torch.autograd.grad(ref, head))


def test_workspace_reuse_gives_identical_results():
    inputs = make(n=40, seed=53)
    want, want_zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.5, chunk_size=6)
    want_grads = grads(want, *inputs[:2])
    for workspace in (torch.empty(10**5), torch.empty(3)):  # large enough, and too small (allocates its own)
        for _ in range(2):  # reused across calls
            loss, zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.5, chunk_size=6, workspace=workspace)
            assert torch.equal(zones, want_zones) and torch.equal(loss, want)
            for got, ref in zip(grads(loss, *inputs[:2]), want_grads):
                assert torch.equal(got, ref)


def test_head_gradient_is_handed_to_autograd_without_a_copy():
    """The (V, H) head gradient is the largest buffer: .grad must be it, not a clone (peak memory)."""
    s_hidden, s_head, t_hidden, t_head, mask = make(n=20, v=33, v_t=40, seed=59)
    seen = {}
    backward = fused_kernels._FusedDivergence.backward

    def spy(ctx, *grads_out):
        out = backward(ctx, *grads_out)
        seen["ptr"] = out[1].data_ptr()
        return out

    fused_kernels._FusedDivergence.backward = staticmethod(spy)
    try:
        loss, _ = fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask, alpha=0.5)
        loss.backward()
    finally:
        fused_kernels._FusedDivergence.backward = staticmethod(backward)
    assert s_head.grad.data_ptr() == seen["ptr"]


def test_no_grad_and_frozen_head():
    s_hidden, s_head, t_hidden, t_head, mask = inputs = make(n=21, seed=31)
    ref_loss, _, ref_grads = reference_sead(inputs, alpha=0.5)
    with torch.no_grad():
        loss, _ = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.5)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, ref_loss.detach(), **TOL[torch.float32])
    frozen = s_head.detach()
    loss, _ = fused_losses.sead_loss_from_hidden(s_hidden, frozen, t_hidden, t_head, mask, alpha=0.5)
    (grad_h,) = torch.autograd.grad(loss, s_hidden)
    torch.testing.assert_close(grad_h, ref_grads[0], **TOL[torch.float32])


def test_bad_inputs_raise():
    s_hidden, s_head, t_hidden, t_head, mask = make(n=8)
    with pytest.raises(ValueError, match="mask shape"):
        fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask[:5], alpha=0.5)
    with pytest.raises(ValueError, match="zone_c_mix"):
        fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask, alpha=0.5, zone_c_mix="mix")
    with pytest.raises(ValueError, match="softcap"):
        fused_losses.rkl_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask, softcap=0.0)
    with pytest.raises(ValueError, match="zones"):
        fused_losses.sead_loss_from_hidden(s_hidden, s_head, t_hidden, t_head, mask, 0.5, zones=torch.zeros(3))


def test_larger_vocab_odd_chunks():
    inputs = make(n=70, h=32, h_t=24, v=4099, v_t=4111, seed=37)
    ref_loss, ref_zones, ref_grads = reference_sead(inputs, alpha=0.8)
    loss, zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=0.8, chunk_size=24)
    assert torch.equal(zones, ref_zones)
    assert_close(loss, ref_loss, grads(loss, *inputs[:2]), ref_grads)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 40),
    v=st.integers(2, 50),
    chunk_size=st.integers(1, 45),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_property_matches_reference(n, v, chunk_size, alpha, seed):
    inputs = make(n=n, h=8, h_t=6, v=v, v_t=v + seed % 3, masked=0.3, seed=seed)
    ref_loss, ref_zones, ref_grads = reference_sead(inputs, alpha=alpha, zone_c_mix="interpolate")
    loss, zones = fused_losses.sead_loss_from_hidden(
        *inputs, alpha=alpha, chunk_size=chunk_size, zones=ref_zones, zone_c_mix="interpolate"
    )
    assert_close(loss, ref_loss, grads(loss, *inputs[:2]), ref_grads)


@pytest.mark.parametrize("fractions", [(0.5, 0.4, 0.1), (0.3, 0.3, 0.4), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)])
def test_percentile_thresholds_reproduce_assign_zones(fractions):
    g = torch.Generator().manual_seed(41)
    h_t, h_s, mask = (
        torch.rand(6, 17, generator=g),
        torch.rand(6, 17, generator=g),
        torch.rand(6, 17, generator=g) > 0.3,
    )
    thresholds = fused_single_pass.percentile_thresholds(h_t, h_s, mask, fractions)
    want = assign_zones(h_t, h_s, mask, fractions)
    assert torch.equal(assign_zones_threshold(h_t, h_s, mask, *thresholds), want)


@pytest.mark.parametrize("zone_c_mix,alpha,chunk_size", [("eq4", 0.6, 7), ("interpolate", 0.3, 16), ("eq4", 0.0, 5)])
def test_single_pass_matches_reference_with_threshold_zones(zone_c_mix, alpha, chunk_size):
    inputs = make(n=53, seed=43)
    s, t = logits(*inputs[:4])
    mask = inputs[-1]
    h_t, h_s = entropy(t), entropy(s.detach())
    thresholds = (float(h_t[mask].quantile(0.8)), float(h_s[mask].quantile(0.45)))  # e.g. last step's
    zones = assign_zones_threshold(h_t, h_s, mask, *thresholds)
    ref = sead_loss(s, t, zones, alpha, zone_c_mix=zone_c_mix)
    loss, got_zones, ent_t, ent_s = fused_single_pass.sead_loss_single_pass(
        *inputs, alpha=alpha, thresholds=thresholds, zone_c_mix=zone_c_mix, chunk_size=chunk_size
    )
    assert torch.equal(got_zones, zones)
    torch.testing.assert_close(ent_t, torch.where(mask, h_t, 0.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent_s, torch.where(mask, h_s, 0.0), rtol=1e-5, atol=1e-6)
    assert_close(loss, ref, grads(loss, *inputs[:2]), grads(ref, *inputs[:2]))
    # Without thresholds (first step) it is the exact two-pass loss.
    first, first_zones, _, _ = fused_single_pass.sead_loss_single_pass(
        *inputs, alpha=alpha, thresholds=None, zone_c_mix=zone_c_mix
    )
    two_pass, two_pass_zones = fused_losses.sead_loss_from_hidden(*inputs, alpha=alpha, zone_c_mix=zone_c_mix)
    assert torch.equal(first_zones, two_pass_zones)
    torch.testing.assert_close(first, two_pass)


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_divergence_stats_match_reference(chunk_size):
    s_hidden, s_head, t_hidden, t_head, mask = make(n=41, v=29, v_t=35, seed=61)
    s = fused.transform_logits(s_hidden @ s_head.T, 0.8, 3.0)
    t = fused.transform_logits(t_hidden @ t_head[:29].T, 1.2)
    got = fused.divergence_stats_from_hidden(
        s_hidden,
        s_head,
        t_hidden,
        t_head,
        mask,
        chunk_size,
        logit_scale=0.8,
        softcap=3.0,
        teacher_transform=(1.2, None),
    )
    want = (entropy(t), entropy(s), forward_kl(s, t), reverse_kl(s, t))
    for g, w in zip(got, want):
        assert g.shape == mask.shape and g.grad_fn is None
        torch.testing.assert_close(g, torch.where(mask, w.detach(), 0.0), rtol=1e-5, atol=1e-6)
