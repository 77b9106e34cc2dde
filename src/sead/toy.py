"""The embedded demo task: chained integer sums with worked solutions, their files, verifier and token categories.

The task (``chain_sum`` from ``reasoning-gym``, rewritten compactly) asks for ``98+93-77=`` and the
worked solution reads ``98+93=191,191-77=114.A:114``: one step per operator, then ``A:`` and the
answer. Difficulty levels differ in the number of terms and digits (see ``LEVELS``).

The character tokenizer and the tiny Llamas that learn it are in `sead.toy_models`. Nothing here
runs at import time; ``reasoning_gym`` is imported when training data is generated.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sead import jsonio
from sead.errors import DataError

# level -> (number of terms, digits per term); ordered from easy to hard for a small model.
LEVELS: dict[int, tuple[int, int]] = {1: (3, 1), 2: (4, 1), 3: (5, 1), 4: (6, 1)}
DEFAULT_LEVELS: tuple[int, ...] = tuple(LEVELS)

# Characters of the task; everything else maps to <unk>.
CHARS = "0123456789+-=,.A:"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

# The privileged context of the demo's OPSD recipe (`configs/opsd.yaml`, objective.opsd_template): the
# reference answer before the question. The shipped student saw it in part of its training data.
HINT_TEMPLATE = "A:{answer},{prompt}"

MAX_NEW_TOKENS = 56  # the longest worked solution plus eos is 52 tokens

# Seeds of the shipped data files (assets/demo/data); the train file excludes every heldout question.
DEMO_TRAIN_SEED, DEMO_HELDOUT_SEED = 1, 2
DEMO_TRAIN_SIZE, DEMO_HELDOUT_SIZE = 3000, 200


# ----------------------------------------------------------------------------------------- task
def solve(expression: str) -> tuple[str, int]:
    """Canonical worked solution (left to right, operands in question order) and value of ``expression``.

    >>> solve("98+93-77")
    ('98+93=191,191-77=114.A:114', 114)
    """
    text = worked_solution(expression)
    return text, int(text.rsplit("A:", 1)[1])


def _terms(expression: str) -> tuple[list[int], list[str]]:
    """``"98+93-77"`` -> ([98, 93, 77], ["+", "-"])."""
    if not re.fullmatch(r"-?\d+(?:[+-]\d+)+", expression):
        raise DataError(f"cannot parse {expression!r}: expected two or more integers joined by + or -")
    first, *rest = re.findall(r"-?\d+|[+-]\d+", expression)
    return [int(first)] + [int(t[1:]) for t in rest], [t[0] for t in rest]


def worked_solution(expression: str, rng: random.Random | None = None) -> str:
    """A worked solution of ``expression``, one step per operator, left to right.

    With ``rng`` every ``+`` step writes its two operands in a random order (``191+77`` or ``77+191``):
    two equally valid paths, so a model trained on such solutions is genuinely uncertain at the first
    token of each ``+`` step (a reasoning fork) and near-certain on the arithmetic that follows.

    >>> worked_solution("98+93-77")
    '98+93=191,191-77=114.A:114'
    """
    terms, ops = _terms(expression)
    value, steps = terms[0], []
    for op, term in zip(ops, terms[1:]):
        new = value + term if op == "+" else value - term
        left, right = (term, value) if op == "+" and rng is not None and rng.random() < 0.5 else (value, term)
        steps.append(f"{left}{op}{right}={new}")
        value = new
    return ",".join(steps) + f".A:{value}"


def right_to_left_solution(expression: str) -> str:
    """A *wrong* worked solution: the chain evaluated from the right, ``a-b+c`` as ``a-(b+c)``.

    The demo's student learned from a weaker solver that often works this way; it agrees with the
    left-to-right value only when no ``-`` comes before a later operator (``1+2-3``, not ``1-2+3``).

    >>> right_to_left_solution("4-9+8")
    '9+8=17,4-17=-13.A:-13'
    """
    terms, ops = _terms(expression)
    value, steps = terms[-1], []
    for op, term in zip(reversed(ops), reversed(terms[:-1])):
        new = term + value if op == "+" else term - value
        steps.append(f"{term}{op}{value}={new}")
        value = new
    return ",".join(steps) + f".A:{value}"


def direct_solution(expression: str) -> str:
    """The answer with no working (``A:114``); ``build_demo_models.py --student-direct`` measures a student
    trained on it (it sums one-digit chains in one go, so it leaves no gap: see the assets README)."""
    return f"A:{solve(expression)[1]}"


def _level_items(level: int, seed: int) -> Iterable[tuple[str, str]]:
    """Endless (question, answer) pairs of one level, from ``reasoning-gym``'s seeded ``chain_sum``."""
    try:
        import reasoning_gym
    except ImportError as err:  # pragma: no cover - reasoning-gym is in the `demo` extra
        raise DataError("generating the toy task needs reasoning-gym: pip install 'sead[demo]'") from err
    terms, digits = LEVELS[level]
    # Spaced base seeds: reasoning-gym seeds item i with (seed + i), so streams must not overlap.
    base = seed * 1_000_000_000 + level * 10_000_000
    chunk, start = 4096, 0
    while True:
        ds = reasoning_gym.create_dataset(
            "chain_sum",
            size=chunk,
            seed=base + start,
            min_terms=terms,
            max_terms=terms,
            min_digits=digits,
            max_digits=digits,
        )
        for i in range(chunk):
            item = ds[i]
            yield item["metadata"]["expression"].replace(" ", ""), str(item["answer"])
        start += chunk


def make_task(
    n: int, seed: int, levels: Sequence[int] = DEFAULT_LEVELS, *, unique: bool = True, exclude: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """``n`` seeded task items, the levels taking turns (item i has level ``levels[i % len(levels)]``).

    Each item is ``{"id", "question", "answer", "solution", "level"}``, e.g. ``question="98+93-77="``,
    ``answer="114"``, ``solution="98+93=191,191-77=114.A:114"``. With ``unique`` no question repeats;
    questions in ``exclude`` (e.g. a heldout set) never appear. Same arguments, same items.
    """
    if n < 0 or not levels or any(lv not in LEVELS for lv in levels):
        raise DataError(f"make_task(n={n}, levels={list(levels)}): need n >= 0 and levels from {list(LEVELS)}")
    streams = {lv: iter(_level_items(lv, seed)) for lv in dict.fromkeys(levels)}
    seen, items = set(exclude), []
    for i in range(n):
        level = levels[i % len(levels)]
        for _ in range(100_000):
            expr, answer = next(streams[level])
            question = expr + "="
            if question not in seen:
                break
        else:
            raise DataError(f"level {level} ran out of distinct questions at item {i}; ask for fewer or unique=False")
        if unique:
            seen.add(question)
        solution, value = solve(expr)
        if str(value) != answer:  # the generator and our solver must agree
            raise DataError(f"answer mismatch for {question}: reasoning-gym says {answer}, solver says {value}")
        items.append(
            {"id": f"s{seed}-{i}", "question": question, "answer": answer, "solution": solution, "level": level}
        )
    return items


def write_jsonl(
    path: str | Path,
    items: Iterable[dict[str, Any]],
    fields: Sequence[str] = ("id", "question", "answer", "level", "solution"),
) -> Path:
    """Write ``items`` (only ``fields``) to a JSONL file atomically, one object per line; returns the path."""
    return jsonio.write_jsonl(path, ({k: item[k] for k in fields} for item in items))


def write_task_files(
    out_dir: str | Path,
    n_train: int = DEMO_TRAIN_SIZE,
    n_heldout: int = DEMO_HELDOUT_SIZE,
    train_seed: int = DEMO_TRAIN_SEED,
    heldout_seed: int = DEMO_HELDOUT_SEED,
    levels: Sequence[int] = DEFAULT_LEVELS,
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``heldout.jsonl`` under ``out_dir`` (no heldout question in train).

    Fields: ``id``, ``question``, ``answer``, ``level``, ``solution``. Returns (train path, heldout path).
    """
    heldout = make_task(n_heldout, heldout_seed, levels)
    train = make_task(n_train, train_seed, levels, exclude={it["question"] for it in heldout})
    out = Path(out_dir)
    return write_jsonl(out / "train.jsonl", train), write_jsonl(out / "heldout.jsonl", heldout)


def extract_answer(response: str) -> str | None:
    """The text after the last ``A:`` in ``response``, stripped; None when there is none or it is empty."""
    pos = response.rfind("A:")
    if pos < 0:
        return None
    answer = response[pos + 2 :].strip()
    return answer or None


def verify(response: str, answer: str | int) -> bool:
    """True when the response's final answer (after the last ``A:``) equals ``answer`` as an integer.

    This is the demo's verifier (``sead.toy:verify``). Non-integer text never matches an integer answer.
    """
    got = extract_answer(response)
    if got is None:
        return False
    try:
        return int(got) == int(str(answer).strip())
    except ValueError:
        return got == str(answer).strip()


TOKEN_CATEGORIES = ("step start", "operand", "computation", "syntax")


def token_categories(response: str) -> list[str]:
    """One category per character of a response (the paper's Table 3 split, for this task).

    ``step start``: the first character of each step, where the path is chosen (which operand comes
    first, or from which end of the chain to start): the reasoning forks. ``operand``: the rest of
    the operands being copied. ``computation``: each step's result and the final answer.
    ``syntax``: ``+ - = , . A :`` between them. A ``-`` that signs a number belongs to that number.
    """
    out, state = [], "start"  # start | operand | result | answer
    for i, ch in enumerate(response):
        prev = response[i - 1] if i else ""
        signs_number = ch == "-" and (i == 0 or prev in "=,:+-") and i + 1 < len(response) and response[i + 1].isdigit()
        if ch.isdigit() or signs_number:
            if state == "start":
                out.append("step start")
                state = "operand"
            else:
                out.append("computation" if state in ("result", "answer") else "operand")
            continue
        out.append("syntax")
        if ch == ",":
            state = "start"
        elif ch == "=":
            state = "result"
        elif ch == ":":
            state = "answer"
    return out


def is_question(text: str) -> bool:
    """Whether ``text`` is a question of this task, as the demo prompts it (``98+93-77=``)."""
    return re.fullmatch(r"-?\d+(?:[+-]\d+)+=", text) is not None


def response_token_categories(tokens: Sequence[str]) -> list[str] | None:
    """``token_categories`` of a response given as the character tokenizer's tokens, one per token.

    ``<eos>``, ``<pad>`` and ``<unk>`` read as "." (syntax, no change of state). None when a token is
    not one of that tokenizer's (another tokenizer's pieces span several characters: no such split).
    """
    if not set(tokens) <= {*CHARS, PAD, EOS, UNK}:
        return None
    return token_categories("".join(t if len(t) == 1 else "." for t in tokens))


def zones_by_category(
    categories: Sequence[str], zones: Sequence[int], teacher_entropy: Sequence[float], zone_names: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """P(zone | token category), the paper's Table 3 on this task, from per-token lists of equal length.

    Per category that occurs (in ``TOKEN_CATEGORIES`` order): ``tokens``, ``share`` (of all counted
    tokens), ``teacher_entropy`` (mean, nats) and ``p_zone`` ({zone name: share of the category's
    tokens in that zone}, over ``zone_names``, e.g. ``{0: "A", 1: "B", 2: "C"}``). Tokens whose zone
    is not in ``zone_names`` (masked, -1) are not counted.
    """
    kept = [(c, z, h) for c, z, h in zip(categories, zones, teacher_entropy, strict=True) if z in zone_names]
    out = {}
    for cat in TOKEN_CATEGORIES:
        rows = [(z, h) for c, z, h in kept if c == cat]
        if rows:
            zs = [z for z, _ in rows]
            out[cat] = {
                "tokens": len(rows),
                "share": len(rows) / len(kept),
                "teacher_entropy": math.fsum(h for _, h in rows) / len(rows),
                "p_zone": {name: zs.count(z) / len(zs) for z, name in zone_names.items()},
            }
    return out
