"""The embedded demo task: chained integer sums with worked solutions, a character tokenizer and tiny Llamas.

The task (``chain_sum`` from ``reasoning-gym``, rewritten compactly) asks for ``98+93-77=`` and the
worked solution reads ``98+93=191,191-77=114.A:114``: one step per operator, then ``A:`` and the
answer. Difficulty levels differ in the number of terms and digits (see ``LEVELS``).

The models (a teacher and a weaker student, both ``LlamaForCausalLM`` over the same character
vocabulary) are pre-built by ``tools/build_demo_models.py`` and shipped under ``sead/assets/demo``
so that ``sead demo`` runs a real on-policy distillation on a laptop CPU in minutes.

Nothing here runs at import time. ``transformers``, ``tokenizers`` and ``reasoning_gym`` are imported
by the functions that build or load models and data: ``sead report`` reads the task's text functions
(token categories) without loading them.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sead import jsonio
from sead.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

# level -> (number of terms, digits per term); ordered from easy to hard for a small model.
LEVELS: dict[int, tuple[int, int]] = {1: (3, 1), 2: (4, 1), 3: (5, 1), 4: (6, 1)}
DEFAULT_LEVELS: tuple[int, ...] = tuple(LEVELS)

# Characters of the task; everything else maps to <unk>.
CHARS = "0123456789+-=,.A:"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

# Model shapes (LlamaForCausalLM, tied embeddings). The student is 4x smaller and briefly trained; it
# keeps 4 layers because a 2-layer student learns multi-digit carries too slowly to improve in a demo.
TEACHER_SHAPE: dict[str, int] = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 512,
}
STUDENT_SHAPE: dict[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 256,
}
MAX_POSITIONS = 128  # the longest item (question, worked solution, eos) is 64 tokens
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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts."""
    return jsonio.read_jsonl(path)


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


# ------------------------------------------------------------------------------------ tokenizer
def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer: ``<pad>``=0, ``<eos>``=1, ``<unk>``=2, then one token per task character.

    No bos token and no chat template: a prompt is the question's characters, as is.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # see the module doc
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # join pieces with no separator
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


# --------------------------------------------------------------------------------------- models
def build_model(tokenizer: PreTrainedTokenizerFast, shape: dict[str, int], seed: int) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` (tied embeddings) of ``shape`` over ``tokenizer``'s vocabulary."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # see the module doc

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        num_key_value_heads=shape["num_attention_heads"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **shape,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, max_new_tokens=MAX_NEW_TOKENS
    )
    return model


def demo_asset_dir() -> Path:
    """The folder of the shipped demo assets (``teacher/``, ``student/``, ``data/``, ``README.md``)."""
    return Path(str(files("sead") / "assets" / "demo"))


def demo_data_paths() -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl) of the shipped demo data."""
    data = demo_asset_dir() / "data"
    return data / "train.jsonl", data / "heldout.jsonl"


def load_demo_models(device: str = "cpu", dtype: Any = None):
    """Load the shipped (teacher, student, tokenizer) in eval mode; ``dtype`` defaults to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # see the module doc

    root = demo_asset_dir()
    if not (root / "teacher" / "config.json").exists():
        raise DataError(f"demo models not found under {root}; build them: python tools/build_demo_models.py")
    dtype = dtype or torch.float32
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=dtype).to(device).eval()
    student = AutoModelForCausalLM.from_pretrained(root / "student", dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "student")
    return teacher, student, tokenizer


# ------------------------------------------------------------------------------------- evaluate
def greedy_responses(
    model, tokenizer, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 256
) -> list[str]:
    """Greedy completions of ``questions`` (batched, left-padded), decoded without special tokens."""
    side, out = tokenizer.padding_side, []
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for i in range(0, len(questions), batch_size):
            enc = tokenizer(list(questions[i : i + batch_size]), return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def greedy_accuracy(
    model,
    tokenizer,
    items: Sequence[dict[str, Any]],
    max_new_tokens: int = MAX_NEW_TOKENS,
    by_level: bool = False,
    batch_size: int = 256,
):
    """Share of ``items`` whose greedy response ``verify``-matches the answer.

    With ``by_level`` returns ``(overall, {level: accuracy})``.
    """
    responses = greedy_responses(model, tokenizer, [it["question"] for it in items], max_new_tokens, batch_size)
    ok = [verify(r, it["answer"]) for r, it in zip(responses, items)]
    overall = sum(ok) / max(1, len(ok))
    if not by_level:
        return overall
    levels: dict[int, list[bool]] = {}
    for it, good in zip(items, ok):
        levels.setdefault(int(it["level"]), []).append(good)
    return overall, {lv: sum(v) / len(v) for lv, v in sorted(levels.items())}
