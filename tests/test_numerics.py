"""Numerical safety (issue 8).

1. A step whose teacher or student outputs, loss or gradients are not finite is skipped: weights,
   optimiser state and LR schedule untouched, ``health/skipped_step`` and ``health/bad_streak``
   logged, and ``train.max_bad_steps`` bad steps in a row stop the run with a checkpoint and one line.
2. Hypothesis fuzzing of the objectives on extreme logits, ``-inf`` entries and vocabularies of 1..3
   tokens: never NaN; finite values and gradients wherever the quantity is mathematically finite.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kill_resume import assert_same_objects

import sead.divergence as D
from sead.methods import sampled_logprobs
from sead.objectives import divergence_token_losses, eopd_token_losses, opd_token_losses, sead_token_losses
from sead.zones import Zone, assign_zones, assign_zones_threshold

NAN, INF = float("nan"), float("inf")


# =============================================================== 1. skipped steps in the trainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tiny import save_tiny_pair

    root = tmp_path_factory.mktemp("numerics")
    paths = save_tiny_pair(root)
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(5) for b in range(4)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**paths, "data": str(data)}


def overrides(assets, out, **extra) -> list[str]:
    base = {
        "model.student": assets["student"],
        "model.teacher": assets["teacher"],
        "data.path": assets["data"],
        "data.prompt_field": "question",
        "data.template": "{problem}",
        "verifier.kind": "exact",
        "objective.method": "sead",
        "train.steps": 3,
        "train.batch_size": 2,
        "train.micro_batch_size": 2,
        "train.save_every": 100,
        "rollout.max_new_tokens": 4,
        "train.output_dir": str(out),
        "logging.progress": False,
        "logging.samples_every": 1,
        "optim.lr": 1e-2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _poison_first_token(x: torch.Tensor, value: float) -> torch.Tensor:
    """``x`` (B, R, ...) with position (0, 0) set to ``value`` everywhere along the last axis, graph kept."""
    where = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    where[0, 0] = True
    return torch.where(where.unsqueeze(-1), torch.full_like(x, value), x)


class _Proxy:
    """Forwards everything to ``inner`` except the attributes set on the proxy itself."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _poisoned_kwargs(kind: str, kw: dict) -> dict:
    """The ``distill_step`` keyword arguments with one source of non-finite numbers injected."""
    kw = dict(kw)
    backend = _Proxy(kw["backend"])
    inner = kw["backend"]
    if kind in ("teacher_nan", "teacher_inf"):
        value = NAN if kind == "teacher_nan" else INF
        backend.teacher = lambda *a: _poison_first_token(inner.teacher(*a), value)
    elif kind == "student_nan":
        backend.student = lambda *a: _poison_first_token(inner.student(*a), NAN)
    elif kind == "loss_inf":  # an infinite loss whose gradients stay finite

        def losses(*a):
            loss, tl = inner.losses(*a)
            return loss + INF, _poison_first_token(tl.unsqueeze(-1), INF).squeeze(-1)

        backend.losses = losses
    elif kind == "grad_nan":  # loss finite, one gradient entry NaN after backward
        real_acc, student = kw["accelerator"], kw["student"]
        acc = _Proxy(real_acc)

        def backward(loss):
            real_acc.backward(loss)
            param = next(p for p in student.parameters() if p.grad is not None)
            param.grad.view(-1)[0] = NAN

        acc.backward = backward
        kw["accelerator"] = acc
    kw["backend"] = backend
    return kw


def _state(trainer) -> dict:
    unwrapped = trainer.accelerator.unwrap_model(trainer.student)
    return {
        "weights": {k: v.detach().clone() for k, v in unwrapped.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": copy.deepcopy(trainer.scheduler.state_dict()),
    }


KINDS = ["teacher_nan", "teacher_inf", "student_nan", "loss_inf", "grad_nan"]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "logits"])
@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_step_is_skipped_and_counted(assets, tmp_path, monkeypatch, kind, fused):
    import sead.step
    from sead.config import load_config
    from sead.metrics import read_metrics
    from sead.trainer import Trainer

    trainer = Trainer(load_config(None, overrides(assets, tmp_path / "run", **{"objective.fused": fused}))).setup()
    real = sead.step.distill_step
    snapshots, results = [], []

    def step(**kw):
        before = _state(trainer)
        result = real(**(_poisoned_kwargs(kind, kw) if len(snapshots) == 1 else kw))  # the 2nd step is poisoned
        snapshots.append((before, _state(trainer)))
        results.append(result.finite)
        return result

    monkeypatch.setattr(sead.step, "distill_step", step)
    trainer.train()
    assert trainer.backend.name == ("fused" if fused else "logits")
    assert results == [True, False, True]
    before, after = snapshots[1]
    assert_same_objects(before, after)  # weights, AdamW moments and step counts, LR schedule: all untouched
    for i in (0, 2):  # the good steps did move the weights
        assert not all(
            torch.equal(snapshots[i][0]["weights"][k], snapshots[i][1]["weights"][k])
            for k in snapshots[i][0]["weights"]
        )
    for name, value in _state(trainer)["weights"].items():
        assert bool(torch.isfinite(value).all()), name
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["health/skipped_step"] for r in records] == [0.0, 1.0, 0.0]
    assert [r["health/bad_streak"] for r in records] == [0.0, 1.0, 0.0]
    assert records[2]["optim/lr"] == records[1]["optim/lr"] < records[0]["optim/lr"]  # the skip did not advance the LR
    for name in ("metrics.jsonl", "samples.jsonl"):  # strict JSON: NaN and inf are written as null
        for line in (tmp_path / "run" / name).read_text().splitlines():
            json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {name}"))


def test_too_many_bad_steps_stop_the_run_with_a_checkpoint(assets, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    import sead.step
    from sead.cli import main
    from sead.metrics import read_metrics

    real = sead.step.distill_step
    monkeypatch.setattr(sead.step, "distill_step", lambda **kw: real(**_poisoned_kwargs("teacher_nan", kw)))
    run = tmp_path / "run"
    code = main(["train", *overrides(assets, run, **{"train.steps": 6, "train.max_bad_steps": 2})])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(
        "sead train: error: 2 consecutive steps had non-finite loss or gradients"
    )
    assert "(last at step 2)" in err[0] and "train.max_bad_steps" in err[0] and "optim.lr" in err[0]
    records = read_metrics(run / "metrics.jsonl")
    assert [(r["step"], r["health/skipped_step"], r["health/bad_streak"]) for r in records] == [
        (1, 1.0, 1.0),
        (2, 1.0, 2.0),
    ]
    ckpt = run / "checkpoints" / "step-2"
    assert (ckpt / "COMPLETE").exists()
    saved, initial = load_file(ckpt / "model.safetensors"), load_file(f"{assets['student']}/model.safetensors")
    for key, value in saved.items():  # nothing was ever applied
        assert torch.equal(value, initial[key]), key
    assert json.loads((ckpt / "trainer_state.json").read_text())["bad_streak"] == 2


# =============================================================== 2. zones on non-finite entropies


def test_assign_zones_tolerates_nan_and_inf_entropies():
    t = torch.tensor([0.5, NAN, 2.0, INF, 1.0, 0.1, -INF, NAN, 0.3, 0.2])
    s = torch.tensor([NAN, 0.1, 0.2, 0.3, INF, 0.5, 0.6, 0.7, NAN, 0.9])
    mask = torch.ones(10, dtype=torch.bool)
    zones = assign_zones(t, s, mask, (0.5, 0.3, 0.2))
    assert sorted(zones.tolist()) == sorted([0] * 5 + [1] * 3 + [2] * 2)
    again = assign_zones(t, s, mask, (0.5, 0.3, 0.2))
    assert torch.equal(zones, again)  # deterministic
    zt = assign_zones_threshold(t, s, mask, 1.0, 0.4)
    assert set(zt.tolist()) <= {0, 1, 2}


# =============================================================== 3. fuzzing the objectives

FUZZ = settings(max_examples=100, deadline=None)
SPECIAL = [-INF, -1e30, -1e4, -30.0, 0.0, 30.0, 1e4, 1e30]


@st.composite
def logits(draw, rows: int, vocab: int):
    """(rows, vocab) float32 logits: extreme values and -inf entries, at least one finite entry per row."""
    value = st.one_of(st.floats(-1e4, 1e4, allow_nan=False, width=32), st.sampled_from(SPECIAL))
    data = [[draw(value) for _ in range(vocab)] for _ in range(rows)]
    for row in data:
        if all(x == -INF for x in row):
            row[draw(st.integers(0, vocab - 1))] = draw(st.floats(-1e4, 1e4, width=32))
    return torch.tensor(data, dtype=torch.float32)


@st.composite
def pair(draw):
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    return draw(logits(rows, vocab)), draw(logits(rows, vocab))


def _value_and_grad(fn, s: torch.Tensor, t: torch.Tensor):
    s = s.clone().requires_grad_(True)
    value = fn(s, t)
    grad = torch.autograd.grad(value.sum(), s, allow_unused=True)[0] if value.requires_grad else None
    return value.detach(), grad


def _support(x: torch.Tensor) -> torch.Tensor:
    """Where the softmax of ``x`` is not exactly 0 in float32 (what the code sees)."""
    return torch.softmax(x.float(), dim=-1) > 0


def _contains(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: support(b) within support(a), i.e. KL(b || a) is finite."""
    return (~_support(b) | _support(a)).all(-1)


def _check(value, grad, finite_rows):
    """Never NaN; finite value and gradient on ``finite_rows`` (an infinite KL has no gradient to check)."""
    assert not bool(torch.isnan(value).any()), value
    assert bool(torch.isfinite(value[finite_rows]).all()), (value, finite_rows)
    if grad is not None:
        assert bool(torch.isfinite(grad[finite_rows]).all()), grad


@FUZZ
@given(
    st.integers(1, 4).flatmap(lambda r: st.integers(1, 3).flatmap(lambda v: logits(r, v))),
    st.sampled_from([None, 1, 2]),
)
def test_fuzz_entropy_finite_with_finite_gradient(x, top_k):
    value, grad = _value_and_grad(lambda s, _: D.entropy(s, top_k=top_k), x, None)
    _check(value, grad, torch.ones(x.shape[0], dtype=torch.bool))
    assert bool((value >= -1e-5).all()) and bool((value <= math.log(x.shape[-1]) + 1e-4).all()), value


@FUZZ
@given(pair())
def test_fuzz_kl_finite_where_supports_allow(st_pair):
    s, t = st_pair
    value, grad = _value_and_grad(D.reverse_kl, s, t)  # KL(p_s || p_t)
    _check(value, grad, _contains(t, s))
    assert bool((value >= -1e-3).all()), value
    value, grad = _value_and_grad(D.forward_kl, s, t)  # KL(p_t || p_s)
    _check(value, grad, _contains(s, t))
    assert bool((value >= -1e-3).all()), value


@FUZZ
@given(pair(), st.sampled_from([0.1, 0.5, 0.9]), st.sampled_from([None, 1, 2]))
def test_fuzz_jsd_always_finite(st_pair, beta, top_k):
    s, t = st_pair
    value, grad = _value_and_grad(lambda a, b: D.generalized_jsd(a, b, beta=beta, top_k=top_k), s, t)
    _check(value, grad, torch.ones(s.shape[0], dtype=torch.bool))  # the mixture covers both supports


@FUZZ
@given(pair(), st.sampled_from([None, 1, 2]))
def test_fuzz_topk_kl_never_nan(st_pair, top_k):
    s, t = st_pair
    for fn in (D.reverse_kl, D.forward_kl):
        value, grad = _value_and_grad(lambda a, b: fn(a, b, top_k=top_k), s, t)
        _check(value, grad, torch.isfinite(value))


@FUZZ
@given(pair(), st.data(), st.floats(0.0, 1.0), st.sampled_from(["eq4", "interpolate"]))
def test_fuzz_sead_token_losses(st_pair, data, alpha, mix):
    s, t = st_pair
    zones = torch.tensor(data.draw(st.lists(st.sampled_from([-1, 0, 1, 2]), min_size=s.shape[0], max_size=s.shape[0])))
    value, grad = _value_and_grad(lambda a, b: sead_token_losses(a, b, zones, alpha, 1.0, mix), s, t)
    # Zone B needs KL(p_s||p_t) finite; Zone C needs KL(p_t||p_s) (and KL(p_s||p_t) when interpolating).
    rkl_ok, fkl_ok = _contains(t, s), _contains(s, t)
    needs_rkl = (zones == Zone.B) | ((zones == Zone.C) & (mix == "interpolate") & (alpha < 1))
    needs_fkl = (zones == Zone.C) & (alpha > 0)
    finite_rows = (~needs_rkl | rkl_ok) & (~needs_fkl | fkl_ok)
    _check(value, grad, finite_rows)
    skipped = (zones == Zone.A) | (zones == -1)
    assert bool((value[skipped] == 0).all())
    if grad is not None:
        assert bool((grad[skipped] == 0).all())  # Zone A and masked rows get exactly zero gradient


@FUZZ
@given(pair(), st.data(), st.sampled_from(["rkl", "fkl", "jsd"]))
def test_fuzz_divergence_and_eopd_token_losses(st_pair, data, kind):
    s, t = st_pair
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=s.shape[0], max_size=s.shape[0])))
    value, grad = _value_and_grad(lambda a, b: divergence_token_losses(a, b, mask, kind), s, t)
    ok = {"rkl": _contains(t, s), "fkl": _contains(s, t), "jsd": torch.ones_like(mask)}[kind]
    _check(value, grad, ~mask | ok)
    tau = data.draw(st.sampled_from([0.0, 0.5, 10.0]))
    value, grad = _value_and_grad(lambda a, b: eopd_token_losses(a, b, mask, tau), s, t)
    gated = D.entropy(t) > tau
    _check(value, grad, ~mask | (_contains(t, s) & (~gated | _contains(s, t))))


@FUZZ
@given(pair(), st.data())
def test_fuzz_opd_token_losses(st_pair, data):
    s, t = st_pair
    # The sampled token always has student probability > 0 (it was sampled from the student).
    support = _support(s)
    targets = torch.tensor([data.draw(st.sampled_from(row.nonzero().squeeze(-1).tolist())) for row in support])
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=s.shape[0], max_size=s.shape[0])))

    def fn(a, b):
        lp = sampled_logprobs(a.unsqueeze(0), targets.unsqueeze(0))
        return opd_token_losses(
            lp, lp.detach(), sampled_logprobs(b.unsqueeze(0), targets.unsqueeze(0)), mask.unsqueeze(0)
        ).squeeze(0)

    value, grad = _value_and_grad(fn, s, t)
    teacher_ok = _support(t).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # -log p_t(x) finite
    _check(value, grad, ~mask | teacher_ok)


def test_sead_weight_that_underflows_in_float32_is_not_nan():
    """alpha = 1e-96 is 0 in float32: 0 * an infinite forward KL must not turn into NaN (found by the fuzzer)."""
    s, t = torch.tensor([[0.0, -INF]]), torch.tensor([[0.0, 0.0]])
    for alpha, mix in ((1e-96, "eq4"), (1.0 - 1e-17, "interpolate")):
        value = sead_token_losses(s, t, torch.tensor([int(Zone.C)]), alpha, 1.0, mix)
        assert not bool(torch.isnan(value).any()), (alpha, mix, value)
