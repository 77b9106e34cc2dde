"""Verifiers: judge a response against a reference answer, ``verifier(response, answer) -> bool``.

Kinds (``VerifierConfig.kind``):
- ``math``: the final answer of the response (see `extract_final_answer`) is compared with the gold
  answer for mathematical equivalence by `math-verify` (1/2 == 0.5 == \\frac{1}{2}); an equal
  normalised string also passes (for answers math-verify cannot parse).
- ``exact``: normalised string equality (`normalize_answer`) of the extracted final answer.
- ``regex``: ``pattern`` has one group; its last match in the response is the answer, then as exact.
- ``module:function``: a user function ``f(response, answer)`` returning a bool or a number in
  [0, 1] (a number passes when >= 0.5); it must be importable.

Final-answer extraction **[choice]**: the content of the last ``\\boxed{...}`` (or ``\\fbox``);
with no box, the last number in the response (so ``...=114.A:114`` gives ``114``); with neither,
no answer (fails). A missing gold answer (None) always fails.

Time bound of ``math``: math-verify's own timeouts use SIGALRM and only work on the main thread, so
they are switched off and each check is bounded by ``timeout_s`` here: with a SIGALRM timer on the
main thread, and on any other thread by running the check in a daemon thread that is abandoned
(and counted as a fail) when it overruns; an abandoned check keeps its CPU until sympy returns.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sead.errors import ConfigError
from sead.settings import setting

__all__ = [
    "VerifierConfig",
    "Verifier",
    "build_verifier",
    "extract_final_answer",
    "normalize_answer",
    "math_equal",
    "unmatchable_answers",
    "unmatchable_note",
]

Verifier = Callable[[str, "str | None"], bool]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_KINDS = ("math", "exact", "regex")


@dataclass
class VerifierConfig:
    """Which verifier judges responses (see module doc)."""

    kind: str = setting("math", "math | exact | regex | module:function (a function f(response, answer))")
    pattern: str | None = setting(None, "regex kind: a pattern with one capture group holding the answer")
    timeout_s: float = setting(5.0, "math kind: time bound of one check, seconds")

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not (self.kind in _KINDS or ":" in self.kind):
            raise ConfigError(f"verifier.kind must be math, exact, regex or module:function, got {self.kind!r}")
        if self.kind == "regex":
            if not self.pattern:
                raise ConfigError("verifier.kind=regex needs verifier.pattern, e.g. verifier.pattern='Answer: (\\S+)'")
            try:
                groups = re.compile(self.pattern).groups
            except re.error as err:
                raise ConfigError(f"verifier.pattern is not a valid regex ({err}); fix the pattern") from None
            if groups != 1:
                raise ConfigError(
                    f"verifier.pattern must have exactly one (...) group, got {groups}; use (?:...) for the others"
                )
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError(f"verifier.timeout_s must be a positive number of seconds, got {self.timeout_s!r}")


def _last_boxed(text: str) -> str | None:
    found = None
    for m in _BOX.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i]
                    break
    return found


def extract_final_answer(response: str) -> str | None:
    """The last ``\\boxed{}`` content, else the last number, else None (see module doc)."""
    if not isinstance(response, str):
        return None
    boxed = _last_boxed(response)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1].rstrip(",") if numbers else None


def normalize_answer(text: str) -> str:
    """Canonical string form: no spaces, ``$``, ``\\text{}``, trailing dot or thousands commas;
    lower case; numbers in a canonical decimal form (``2.0`` -> ``2``, ``0.50`` -> ``0.5``)."""
    s = text.replace("\\$", "").replace("$", "").strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[,;:! ]|\s+", "", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = s.rstrip(".").lower()
    if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", s):
        s = f"{float(s):.10g}" if abs(float(s)) < 1e15 else s
    return s


# ---------------------------------------------------------------- math-verify


class _Timeout(BaseException):  # not an Exception, so sympy's broad `except Exception` lets it through
    pass


@functools.cache
def _quiet_math_verify() -> None:
    """Drop math-verify's once-per-process warning that its timeouts are off (we bound time here)."""
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(lambda rec: "Timeout is disabled" not in rec.getMessage())


def _parse(text: str) -> list:
    from math_verify import parse

    if "\\boxed" not in text and "$" not in text:
        text = "\\boxed{" + text + "}"
    return parse(text, parsing_timeout=None)


@functools.lru_cache(maxsize=65536)
def _parse_gold(answer: str) -> tuple:
    return tuple(_parse(answer))


def _math_check(pred: str, answer: str) -> bool:
    from math_verify import verify

    gold = list(_parse_gold(answer))
    target = _parse(pred)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=None))


def _run_bounded(fn: Callable[[], bool], timeout_s: float) -> bool:
    """``fn()`` bounded by ``timeout_s`` seconds; False on overrun or any exception."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def on_alarm(signum, frame):
            raise _Timeout

        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        old_timer = signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn()
        except (Exception, _Timeout):  # overrun, or sympy/math-verify failing on odd input
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if old_timer[0] > 0:  # someone else's timer was running: give it back (roughly)
                signal.setitimer(signal.ITIMER_REAL, max(old_timer[0] - timeout_s, 1e-3), old_timer[1])
    result: list[bool] = []

    def target() -> None:
        try:
            result.append(fn())
        except Exception:
            result.append(False)

    worker = threading.Thread(target=target, daemon=True, name="sead-verify")
    worker.start()
    worker.join(timeout_s)
    return bool(result and result[0])


def math_equal(pred: str, answer: str, timeout_s: float = 5.0) -> bool:
    """Whether two answer strings are mathematically equivalent (math-verify, bounded in time)."""
    if normalize_answer(pred) == normalize_answer(answer):
        return True
    _quiet_math_verify()
    return _run_bounded(lambda: _math_check(pred, answer), timeout_s)


# ---------------------------------------------------------------- builders


def _user_verifier(spec: str) -> Verifier:
    module_name, _, func_name = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"verifier.kind={spec!r} cannot be imported ({err}); give an importable module:function"
        ) from None
    if not callable(func):
        raise ConfigError(f"verifier.kind={spec!r} is not callable; give a function f(response, answer)")

    def verify_user(response: str, answer: str | None) -> bool:
        result = func(response, answer)
        return bool(result) if isinstance(result, bool) else float(result) >= 0.5

    return verify_user


def build_verifier(cfg: VerifierConfig) -> Verifier:
    """The function ``verifier(response, answer) -> bool`` described by ``cfg``."""
    if cfg.kind not in _KINDS:
        return _user_verifier(cfg.kind)
    pattern = re.compile(cfg.pattern) if cfg.kind == "regex" else None

    def verify(response: str, answer: str | None) -> bool:
        if answer is None or not isinstance(response, str):
            return False
        if pattern is not None:
            matches = pattern.findall(response)
            return bool(matches) and normalize_answer(matches[-1]) == normalize_answer(answer)
        pred = extract_final_answer(response)
        if pred is None:
            return False
        if cfg.kind == "exact":
            return normalize_answer(pred) == normalize_answer(answer)
        return math_equal(pred, answer, cfg.timeout_s)

    return verify


# How a response may state its final answer; a reference the verifier rejects in all of them cannot be matched.
_ANSWER_FORMS = ("\\boxed{{{}}}", "{}", "A:{}", "Answer: {}", "#### {}")


def unmatchable_answers(verifier: Verifier, answers: list[str | None]) -> list[int]:
    """Indices of reference answers that no response can match: ``verifier`` rejects the answer itself
    written as a final answer in every usual form (``\\boxed{}``, bare, ``A:``, ``Answer:``, ``####``).

    Such a benchmark scores 0 whatever the model says (e.g. ``answer_field`` names a worked solution,
    or the verifier expects integers); ``None`` and blank answers count as unmatchable.
    """
    verdict: dict[str, bool] = {}

    def matchable(answer: str) -> bool:
        for form in _ANSWER_FORMS:
            try:
                if verifier(form.format(answer), answer):
                    return True
            except Exception:  # a user verifier failing on an odd form: try the next one
                continue
        return False

    bad = []
    for i, answer in enumerate(answers):
        if answer is None or not str(answer).strip():
            bad.append(i)
            continue
        if answer not in verdict:
            verdict[answer] = matchable(answer)
        if not verdict[answer]:
            bad.append(i)
    return bad


def unmatchable_note(verifier: Verifier, items: list, where: str, key: str, effect: str) -> str | None:
    """One line naming how many reference answers of ``items`` (each with ``.id`` and ``.answer``) ``where``
    the verifier cannot match (None: it can match all); ``key`` is the config section of the answer field
    (``data``, ``eval``), ``effect`` what the mismatch means."""
    bad = unmatchable_answers(verifier, [it.answer for it in items])
    if not bad:
        return None
    first = items[bad[0]]
    example = str(first.answer) if len(str(first.answer)) <= 60 else str(first.answer)[:57] + "..."
    return (
        f"the verifier cannot match {len(bad)} of {len(items)} reference answers {where} (e.g. {example!r} of "
        f"prompt {first.id!r}): {effect}; point {key}.answer_field at the final answers or choose a "
        "verifier.kind that reads them"
    )
