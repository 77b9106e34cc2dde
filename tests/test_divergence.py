"""sead.divergence against the float64 loop references in tests/reference.py.

Values and gradients (w.r.t. the student logits, or the input of ``entropy``) on odd shapes,
peaked logits, masked (-inf) vocabulary entries, float32 and bfloat16 inputs.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib

import pytest
import reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sead import divergence as D

SHAPES = [(1, 1, 2), (3, 7, 33), (1, 1, 151_936)]
TOP_K = {2: 1, 33: 5, 151_936: 64}  # top-k used per vocabulary size
DTYPES = [torch.float32, torch.bfloat16]
KINDS = ["normal", "peaked", "masked"]
EPS32 = torch.finfo(torch.float32).eps
PEAK = 1e4
BOOST = 20.0  # added to the k chosen teacher logits so the top-k set is unambiguous


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def vocab_mask_for(vocab: int, seed: int) -> torch.Tensor:
    """A masked vocabulary (True = -inf): a quarter of the entries, at least one, never all."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n_masked = max(1, vocab // 4)
    out = torch.zeros(vocab, dtype=torch.bool)
    out[torch.randperm(vocab, generator=g)[:n_masked]] = True
    return out


def make_logits(shape, kind, dtype, seed, *, vocab_mask=None, boost_k=None) -> torch.Tensor:
    """Random logits ``shape`` in ``dtype``.

    kind: ``normal`` (N(0, 2^2)), ``peaked`` (one entry per row at +1e4, a quarter at -1e4) or
    ``masked`` (``vocab_mask`` entries are -inf). ``boost_k``: raise k finite entries per row by 20
    (the +1e4 spike first) so the row's top-k set has a clear gap below it, even in bf16.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = shape[-1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2.0).reshape(-1, vocab)
    for row in range(x.shape[0]):
        perm = torch.randperm(vocab, generator=g)
        preferred = []
        if kind == "peaked":
            x[row, perm[0]] += PEAK
            x[row, perm[1 : 1 + max(1, vocab // 4)]] -= PEAK
            preferred = [int(perm[0])]
            candidates = perm[1 + max(1, vocab // 4) :].tolist()
        elif kind == "masked":
            x[row, vocab_mask] = float("-inf")
            masked = vocab_mask.tolist()
            candidates = [i for i in perm.tolist() if not masked[i]]
        else:
            candidates = perm.tolist()
        if boost_k is not None:
            chosen = (preferred + candidates)[:boost_k]
            assert len(chosen) == min(boost_k, vocab), "test setup: not enough finite entries to boost"
            x[row, chosen] += BOOST
    out = x.reshape(shape).to(dtype)
    if boost_k is not None and boost_k < vocab:  # the set of the k largest is unique
        top = out.double().reshape(-1, vocab).sort(dim=-1, descending=True).values
        assert bool((top[:, boost_k - 1] > top[:, boost_k]).all())
    return out


def logit_scale(*tensors) -> float:
    """Largest finite |logit|: float32 log-probs carry an absolute error of about eps * this."""
    vals = [t.double()[torch.isfinite(t.double())].abs().max().item() for t in tensors]
    return max(vals + [1.0])


# ---------------------------------------------------------------------------------------------
# Tolerances (both dtypes compute in float32; a bf16 input only changes the gradient dtype).
# ---------------------------------------------------------------------------------------------


def assert_values_close(actual, expected, scale, what):
    assert actual.dtype == torch.float32, f"{what}: result dtype {actual.dtype}, expected float32"
    assert actual.shape == expected.shape, what
    atol = 1e-5 + 16 * EPS32 * scale
    torch.testing.assert_close(actual.double(), expected, rtol=2e-5, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_grads_close(actual, expected, dtype, scale, what):
    assert actual is not None, f"{what}: no gradient"
    assert actual.dtype == dtype, f"{what}: grad dtype {actual.dtype}"
    assert bool(torch.isfinite(actual).all()), f"{what}: non-finite gradient"
    gmax = expected.abs().max().item()
    if dtype == torch.bfloat16:  # the gradient itself is rounded to bf16 (8 significant bits)
        rtol, atol = 8e-3, 1e-6 + 2e-3 * gmax
    else:
        rtol, atol = 1e-4, 1e-7 + 16 * EPS32 * scale * gmax
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# Library vs reference: the main matrix
# ---------------------------------------------------------------------------------------------

# name -> (library fn, reference fn); entropy is differentiated w.r.t. its input (the "student").
FUNCS = {
    "entropy": (lambda s, t, k: D.entropy(s, top_k=k), lambda s, t, k: ref.entropy(s, top_k=k)),
    "forward_kl": (lambda s, t, k: D.forward_kl(s, t, top_k=k), lambda s, t, k: ref.forward_kl(s, t, top_k=k)),
    "reverse_kl": (lambda s, t, k: D.reverse_kl(s, t, top_k=k), lambda s, t, k: ref.reverse_kl(s, t, top_k=k)),
    "jsd_0.3": (
        lambda s, t, k: D.generalized_jsd(s, t, beta=0.3, top_k=k),
        lambda s, t, k: ref.generalized_jsd(s, t, beta=0.3, top_k=k),
    ),
}


def shape_id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("topk", [False, True], ids=["full", "topk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("name", list(FUNCS))
def test_matches_reference(name, shape, kind, dtype, topk):
    lib_fn, ref_fn = FUNCS[name]
    vocab = shape[-1]
    k = TOP_K[vocab] if topk else None
    vmask = vocab_mask_for(vocab, seed=1) if kind == "masked" else None
    seed = zlib.crc32(repr((name, shape, kind, str(dtype), topk)).encode()) % 10_000
    # The distribution whose top-k is taken (teacher; the input itself for entropy) gets a clean
    # top-k boundary so that library and reference agree on the set.
    student = make_logits(shape, kind, dtype, seed, vocab_mask=vmask, boost_k=k if name == "entropy" else None)
    teacher = make_logits(shape, kind, dtype, seed + 1, vocab_mask=vmask, boost_k=k)
    weights = torch.rand(shape[:-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5

    s = student.clone().requires_grad_(True)
    out = lib_fn(s, teacher, k)
    (out.double() * weights).sum().backward()

    expected, expected_grad = ref.value_and_grad(ref_fn, student, teacher, k, weights=weights)
    assert bool(torch.isfinite(expected).all()), "test setup: reference should be finite here"
    scale = logit_scale(student, teacher)
    assert_values_close(out.detach(), expected, scale, name)
    assert_grads_close(s.grad, expected_grad, dtype, scale, f"{name} grad")


# ---------------------------------------------------------------------------------------------
# Generalised JSD: TRL's convention at the limits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta,ref_fn", [(0.0, ref.forward_kl), (1.0, ref.reverse_kl)], ids=["beta0", "beta1"])
def test_jsd_limits_are_forward_and_reverse_kl(beta, ref_fn, dtype):
    student = make_logits((3, 7, 33), "normal", dtype, 5)
    teacher = make_logits((3, 7, 33), "normal", dtype, 6)
    s = student.clone().requires_grad_(True)
    out = D.generalized_jsd(s, teacher, beta=beta)
    out.sum().backward()
    expected, expected_grad = ref.value_and_grad(lambda x, t: ref_fn(x, t), student, teacher)
    scale = logit_scale(student, teacher)
    assert_values_close(out.detach(), expected, scale, f"jsd beta={beta}")
    assert_grads_close(s.grad, expected_grad, dtype, scale, f"jsd beta={beta} grad")


def test_jsd_intermediate_beta_is_bounded_by_log_of_mixture_weights():
    # JSD_beta <= -beta log beta - (1 - beta) log(1 - beta) (equality for disjoint supports).
    student = make_logits((3, 7, 33), "peaked", torch.float32, 7)
    teacher = make_logits((3, 7, 33), "peaked", torch.float32, 8)
    for beta in (0.1, 0.5, 0.9):
        bound = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
        out = D.generalized_jsd(student, teacher, beta=beta)
        assert bool((out >= -1e-6).all()) and bool((out <= bound + 1e-5).all())


def test_jsd_rejects_beta_outside_unit_interval():
    x = torch.zeros(1, 3)
    for beta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            D.generalized_jsd(x, x, beta=beta)


# ---------------------------------------------------------------------------------------------
# Masked vocabulary on one side only
# ---------------------------------------------------------------------------------------------


# masked side -> (mask seed, student and teacher logit seeds, the KL that stays finite, the KL that is +inf)
ONE_SIDE_MASKED = {
    "teacher": (2, (11, 12), "forward_kl", "reverse_kl"),
    "student": (3, (13, 14), "reverse_kl", "forward_kl"),
}


@pytest.mark.parametrize("shape", [(3, 7, 33), (1, 1, 151_936)], ids=shape_id)
@pytest.mark.parametrize("masked", list(ONE_SIDE_MASKED))
def test_one_side_masked_vocab(masked, shape):
    """p_t = 0 where p_s > 0: forward KL and JSD stay finite (with finite grads); reverse KL is +inf.
    p_s = 0 where p_t > 0: reverse KL and JSD stay finite (with finite grads); forward KL is +inf."""
    mask_seed, (student_seed, teacher_seed), finite, infinite = ONE_SIDE_MASKED[masked]
    vmask = vocab_mask_for(shape[-1], seed=mask_seed)
    kind = {side: "masked" if side == masked else "normal" for side in ("student", "teacher")}
    student = make_logits(shape, kind["student"], torch.float32, student_seed, vocab_mask=vmask)
    teacher = make_logits(shape, kind["teacher"], torch.float32, teacher_seed, vocab_mask=vmask)
    scale = logit_scale(student, teacher)
    for name, lib_fn, ref_fn in [
        (finite, getattr(D, finite), getattr(ref, finite)),
        ("jsd_0.5", lambda s, t: D.generalized_jsd(s, t, 0.5), lambda s, t: ref.generalized_jsd(s, t, 0.5)),
    ]:
        s = student.clone().requires_grad_(True)
        out = lib_fn(s, teacher)
        out.sum().backward()
        expected, expected_grad = ref.value_and_grad(ref_fn, student, teacher)
        assert_values_close(out.detach(), expected, scale, name)
        assert_grads_close(s.grad, expected_grad, torch.float32, scale, f"{name} grad")
        if masked == "student":
            assert bool((s.grad[..., vmask] == 0).all()), "masked student entries must get zero gradient"
    assert bool(torch.isposinf(getattr(D, infinite)(student, teacher)).all())


def test_topk_beyond_the_support_has_finite_grads():
    """k larger than the teacher's support: the tail bucket is empty for both when the masks agree."""
    vmask = vocab_mask_for(33, seed=4)
    student = make_logits((3, 7, 33), "masked", torch.float32, 15, vocab_mask=vmask)
    teacher = make_logits((3, 7, 33), "masked", torch.float32, 16, vocab_mask=vmask)
    n_finite = int((~vmask).sum())
    for fn in (D.forward_kl, D.reverse_kl, lambda s, t, top_k: D.generalized_jsd(s, t, 0.5, top_k=top_k)):
        s = student.clone().requires_grad_(True)
        full = fn(s, teacher, top_k=None)
        top = fn(s, teacher, top_k=n_finite + 3)
        torch.testing.assert_close(top, full, rtol=1e-6, atol=1e-6)
        top.sum().backward()
        assert bool(torch.isfinite(s.grad).all())


# ---------------------------------------------------------------------------------------------
# top_k = None is top_k = V
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 7, 33), (1, 1, 151_936)], ids=shape_id)
def test_topk_equal_to_vocab_is_exact(shape, kind):
    vocab = shape[-1]
    vmask = vocab_mask_for(vocab, seed=5) if kind == "masked" else None
    student = make_logits(shape, kind, torch.float32, 21, vocab_mask=vmask)
    teacher = make_logits(shape, kind, torch.float32, 22, vocab_mask=vmask)
    fns = {
        "entropy": lambda s, k: D.entropy(s, top_k=k),
        "forward_kl": lambda s, k: D.forward_kl(s, teacher, top_k=k),
        "reverse_kl": lambda s, k: D.reverse_kl(s, teacher, top_k=k),
        "jsd_0.5": lambda s, k: D.generalized_jsd(s, teacher, beta=0.5, top_k=k),
    }
    scale = logit_scale(student, teacher)
    for name, fn in fns.items():
        grads = []
        outs = []
        for k in (None, vocab, vocab + 7):  # k >= V means the whole vocabulary
            s = student.clone().requires_grad_(True)
            out = fn(s, k)
            out.sum().backward()
            assert bool(torch.isfinite(s.grad).all()), f"{name} top_k={k}: non-finite gradient"
            outs.append(out.detach())
            grads.append(s.grad)
        for out, grad in zip(outs[1:], grads[1:]):
            # Same math, only the summation order differs (top-k returns the entries permuted).
            torch.testing.assert_close(out, outs[0], rtol=1e-6, atol=1e-6 + 4 * EPS32 * scale)
            torch.testing.assert_close(grad, grads[0], rtol=1e-5, atol=1e-7 + 4 * EPS32 * scale)


def test_topk_rejects_nonpositive_k():
    x = torch.zeros(2, 5)
    for fn in (
        lambda k: D.entropy(x, top_k=k),
        lambda k: D.forward_kl(x, x, top_k=k),
        lambda k: D.reverse_kl(x, x, top_k=k),
    ):
        with pytest.raises(ValueError, match="top_k"):
            fn(0)


def test_shape_mismatch_is_an_error_not_a_truncation():
    with pytest.raises(ValueError, match="vocabulary"):
        D.forward_kl(torch.zeros(2, 5), torch.zeros(2, 6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_mass_matches_reference(dtype):
    logits = make_logits((3, 7, 33), "normal", dtype, 31, boost_k=5)
    out = D.topk_mass(logits, 5)
    rows = logits.reshape(-1, 33)
    expected = []
    for row in rows:
        logp = ref.log_softmax_row(row)
        expected.append(sum(math.exp(logp[i].item()) for i in ref.topk_indices(logp, 5)))
    expected = torch.tensor(expected, dtype=torch.float64).reshape(3, 7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(D.topk_mass(logits, 33), torch.ones(3, 7), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_kl_matches_reference(dtype):
    g = torch.Generator().manual_seed(41)
    s = (-torch.rand(3, 7, generator=g) * 5).to(dtype)
    t = (-torch.rand(3, 7, generator=g) * 5).to(dtype)
    out = D.sampled_kl(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.sampled_kl(s, t), rtol=1e-6, atol=1e-6)


def test_log_probs_is_float32_and_normalised():
    logits = make_logits((3, 7, 33), "peaked", torch.bfloat16, 42)
    out = D.log_probs(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, 7), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# TRL cross-check
# ---------------------------------------------------------------------------------------------


def _trl_generalized_jsd_loss():
    pytest.importorskip("trl")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    return module.GKDTrainer.generalized_jsd_loss


def test_matches_trl_generalized_jsd_loss():
    trl_loss = _trl_generalized_jsd_loss()
    g = torch.Generator().manual_seed(51)
    student = make_logits((3, 7, 33), "normal", torch.float32, 52)
    teacher = make_logits((3, 7, 33), "normal", torch.float32, 53)
    labels = torch.randint(0, 33, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.3] = -100  # TRL's padding convention
    valid = labels != -100
    ours = {
        0.0: D.forward_kl,
        1.0: D.reverse_kl,
        0.3: lambda s, t: D.generalized_jsd(s, t, beta=0.3),
        0.5: lambda s, t: D.generalized_jsd(s, t, beta=0.5),
    }
    for beta, fn in ours.items():
        s_ours = student.clone().requires_grad_(True)
        s_trl = student.clone().requires_grad_(True)
        mine = fn(s_ours, teacher)[valid].mean()
        theirs = trl_loss(s_trl, teacher, labels=labels, beta=beta)
        mine.backward()
        theirs.backward()
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=lambda m: f"beta={beta}: {m}")
        torch.testing.assert_close(
            s_ours.grad, s_trl.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"beta={beta} grad: {m}"
        )


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@st.composite
def logit_rows(draw, count=1, max_vocab=24):
    """``count`` float32 logit tensors (rows, V), possibly peaked (scale up to 1e3), and one
    shared masked vocabulary (True = masked, never all)."""
    vocab = draw(st.integers(2, max_vocab))
    rows = draw(st.integers(1, 3))
    out = []
    for _ in range(count):
        scale = draw(st.sampled_from([1.0, 10.0, 1000.0]))
        values = draw(
            st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=rows * vocab, max_size=rows * vocab)
        )
        out.append(torch.tensor(values, dtype=torch.float32).reshape(rows, vocab) * scale)
    n_masked = draw(st.integers(0, vocab - 1))
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[draw(st.permutations(range(vocab)))[:n_masked]] = True
    return out, mask


PROPS = settings(max_examples=50, deadline=None)


@PROPS
@given(data=st.data(), top_k=st.sampled_from([None, 1, 3, 100]))
def test_kl_nonnegative_and_zero_on_itself(data, top_k):
    (a, b), mask = data.draw(logit_rows(count=2))
    a = a.masked_fill(mask, float("-inf"))
    b = b.masked_fill(mask, float("-inf"))  # shared support: both KLs are finite
    for fn in (D.forward_kl, D.reverse_kl):
        val = fn(a, b, top_k=top_k)
        assert bool(torch.isfinite(val).all())
        assert bool((val >= -1e-5).all()), val
        assert bool((fn(a, a, top_k=top_k).abs() <= 1e-6).all())
    for beta in (0.0, 0.25, 0.5, 1.0):
        val = D.generalized_jsd(a, b, beta=beta, top_k=top_k)
        assert bool((val >= -1e-5).all()), val
        assert bool((D.generalized_jsd(a, a, beta=beta, top_k=top_k).abs() <= 1e-6).all())


@PROPS
@given(data=st.data(), top_k=st.sampled_from([None, 1, 3, 100]))
def test_entropy_between_zero_and_log_support(data, top_k):
    (x,), mask = data.draw(logit_rows())
    x = x.masked_fill(mask, float("-inf"))
    support = int((~mask).sum())
    if top_k is not None:
        support = min(support, top_k)
    h = D.entropy(x, top_k=top_k)
    assert h.dtype == torch.float32
    assert bool((h >= -1e-6).all()), h
    assert bool((h <= math.log(support) + 1e-5).all()), (h, support)
    # Uniform over the support reaches the bound.
    uniform = torch.zeros_like(x).masked_fill(mask, float("-inf"))
    torch.testing.assert_close(
        D.entropy(uniform), torch.full(x.shape[:-1], math.log(int((~mask).sum()))), rtol=1e-6, atol=1e-6
    )
