"""Verifiers: math equivalence, exact and regex answers, user functions, time bounds."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest

from sead.errors import ConfigError
from sead.verifier import VerifierConfig, build_verifier, extract_final_answer, normalize_answer


@pytest.fixture(scope="module")
def math_verifier():
    return build_verifier(VerifierConfig(kind="math"))


@pytest.mark.parametrize(
    "response, answer",
    [
        ("so the answer is \\boxed{0.5}.", "1/2"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
        ("We get $x = 3$, so \\boxed{3}", "3"),
        ("\\boxed{3.0}", "3"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"),
        ("first \\boxed{7}, no wait: \\boxed{\\frac{3}{4}}", "0.75"),
        ("98+93=191,191-77=114.A:114", "114"),  # no box: the last number
        ("The total is 42 apples", "42"),
        ("\\boxed{\\text{(B)}}", "(B)"),
        ("\\boxed{-2}", "-2"),
        ("\\boxed{\\$5}", "5"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{50\\%}", "50"),
    ],
)
def test_math_accepts_equivalent(math_verifier, response, answer):
    assert math_verifier(response, answer)


@pytest.mark.parametrize(
    "response, answer",
    [
        ("\\boxed{0.51}", "1/2"),
        ("\\boxed{3}", "4"),
        ("the answer is 4 but \\boxed{5}", "4"),  # the box wins over earlier numbers
        ("I think it is 3 or 4, so 5", "4"),  # last number only
        ("", "1"),
        ("no numbers here at all", "1"),
        ("}}}{{{ \\boxed{ \\frac{", "1"),
        ("\\boxed{}", "0"),
        ("\\boxed{2}", None),
        ("\x00\x01 garbage \\\\ $$ \\frac", "3"),
    ],
)
def test_math_rejects_wrong_or_garbage(math_verifier, response, answer):
    assert not math_verifier(response, answer)


def test_extract_final_answer():
    assert extract_final_answer("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert extract_final_answer("\\boxed{1} then \\fbox{ {2} }") == "{2}"
    assert extract_final_answer("costs 1,234.5 dollars.") == "1,234.5"
    assert extract_final_answer("x = 3/4") == "3/4"
    assert extract_final_answer("nothing") is None
    assert extract_final_answer("\\boxed{unclosed") is None


def test_normalize_answer():
    assert normalize_answer(" $1,000$. ") == "1000"
    assert normalize_answer("2.50") == "2.5"
    assert normalize_answer("\\text{ Paris }") == "paris"
    assert normalize_answer("3.0") == normalize_answer("3")


def test_exact_and_regex():
    exact = build_verifier(VerifierConfig(kind="exact"))
    assert exact("\\boxed{ 12 }", "12") and exact("so 12.0", "12")
    assert not exact("\\boxed{1/2}", "0.5")  # exact does no maths
    regex = build_verifier(VerifierConfig(kind="regex", pattern=r"Answer:\s*(\w+)"))
    assert regex("Answer: x\nAnswer: Paris", "paris")
    assert not regex("Answer: Rome", "Paris") and not regex("no match", "Paris")


def test_user_verifier(monkeypatch):
    mod = types.ModuleType("sead_test_user_verifier")
    mod.check = lambda response, answer: 1.0 if answer in response else 0.0
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    verify = build_verifier(VerifierConfig(kind=f"{mod.__name__}:check"))
    assert verify("it is 5", "5") and not verify("it is 6", "5")
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_verifier(VerifierConfig(kind=f"{mod.__name__}:missing"))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(kind="fuzzy"), "verifier.kind"),
        (dict(kind="regex"), "verifier.pattern"),
        (dict(kind="regex", pattern="(a)(b)"), "one"),
        (dict(kind="regex", pattern="(a"), "valid regex"),
        (dict(timeout_s=0), "verifier.timeout_s"),
    ],
)
def test_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        VerifierConfig(**kwargs)


def _slow(*args, **kwargs):
    time.sleep(5)
    return True


def test_math_is_time_bounded_on_main_and_worker_threads(monkeypatch, math_verifier):
    import sead.verifier as v

    monkeypatch.setattr(v, "_math_check", _slow)
    verify = build_verifier(VerifierConfig(kind="math", timeout_s=0.2))
    start = time.perf_counter()
    assert not verify("\\boxed{2}", "1+1")  # would pass, but overruns
    assert time.perf_counter() - start < 2
    results = []
    worker = threading.Thread(target=lambda: results.append(verify("\\boxed{2}", "1+1")))
    start = time.perf_counter()
    worker.start()
    worker.join()
    assert results == [False] and time.perf_counter() - start < 2


def test_math_works_in_worker_threads(math_verifier):
    results = []
    worker = threading.Thread(
        target=lambda: results.append((math_verifier("\\boxed{0.5}", "1/2"), math_verifier("\\boxed{3}", "1/2")))
    )
    worker.start()
    worker.join()
    assert results == [(True, False)]
