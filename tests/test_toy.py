"""The embedded demo task, tokenizer and shipped models (``sead.toy``)."""

from __future__ import annotations

import re

import pytest

from sead import toy, toy_models
from sead.jsonio import read_jsonl


def _value(expression: str) -> int:
    """Plain left-to-right evaluation of ``a+b-c`` (reference for the solver)."""
    parts = re.findall(r"[+-]?\d+", expression)
    return sum(int(p) for p in parts)


def test_make_task_is_deterministic_and_spans_levels():
    a = toy.make_task(60, seed=5)
    assert a == toy.make_task(60, seed=5)
    assert [it["question"] for it in a] != [it["question"] for it in toy.make_task(60, seed=6)]
    assert {it["level"] for it in a} == set(toy.LEVELS)
    assert len({it["question"] for it in a}) == len(a)
    assert set(a[0]) == {"id", "question", "answer", "solution", "level"}
    only = toy.make_task(10, seed=5, levels=(2, 4))
    assert [it["level"] for it in only] == [2, 4] * 5


def test_items_match_their_level_and_answers_are_correct():
    for it in toy.make_task(100, seed=0):
        terms, digits = toy.LEVELS[it["level"]]
        expr = it["question"][:-1]
        numbers = re.split(r"[+-]", expr)
        assert it["question"].endswith("=") and len(numbers) == terms
        assert all(len(n) == digits for n in numbers)
        assert int(it["answer"]) == _value(expr)
        steps, final = it["solution"].split(".A:")
        assert final == it["answer"]
        assert len(steps.split(",")) == terms - 1
        for step in steps.split(","):  # every step is itself correct
            lhs, rhs = step.rsplit("=", 1)
            assert _value(lhs) == int(rhs)


def test_exclude_and_solve():
    held = toy.make_task(20, seed=1)
    train = toy.make_task(200, seed=1, exclude={it["question"] for it in held})
    assert not {it["question"] for it in held} & {it["question"] for it in train}
    assert toy.solve("98+93-77") == ("98+93=191,191-77=114.A:114", 114)
    assert toy.solve("3-9") == ("3-9=-6.A:-6", -6)
    with pytest.raises(toy.DataError):
        toy.solve("12")


def test_worked_solutions_fork_only_where_the_order_is_free():
    import random

    rng = random.Random(0)
    seen = {toy.worked_solution("3+4-2+5", rng) for _ in range(40)}
    # "+" steps may swap their operands, the "-" step may not ("5+5" reads the same either way).
    assert seen == {"3+4=7,7-2=5,5+5=10.A:10", "4+3=7,7-2=5,5+5=10.A:10"}
    assert {toy.worked_solution("8-1-2", rng) for _ in range(20)} == {toy.solve("8-1-2")[0]}
    for expr in ("12+3-4+5", "9+9+9", "1-2-3-4"):
        for _ in range(10):
            assert toy.verify(toy.worked_solution(expr, rng), toy.solve(expr)[1])


def _right_nested(expression: str) -> int:
    """a op1 (b op2 (c ...)): the reference for the student's wrong strategy."""
    terms = [int(t) for t in re.findall(r"\d+", expression)]
    ops = re.findall(r"(?<=\d)[+-]", expression)
    value = terms[-1]
    for op, term in zip(reversed(ops), reversed(terms[:-1])):
        value = term + value if op == "+" else term - value
    return value


def test_right_to_left_is_wrong_when_a_minus_comes_early():
    early_minus = wrong = 0
    for it in toy.make_task(200, seed=4):
        expr = it["question"][:-1]
        solution = toy.right_to_left_solution(expr)
        assert toy.verify(solution, _right_nested(expr))
        if all(op == "+" for op in re.findall(r"(?<=\d)[+-]", expr)[:-1]):
            assert toy.verify(solution, it["answer"])  # right nesting is harmless without an early minus
        else:
            early_minus += 1
            wrong += not toy.verify(solution, it["answer"])
    assert early_minus > 100 and wrong > 0.8 * early_minus
    assert toy.direct_solution("4-9+8") == "A:3"


def test_extract_answer_and_verify():
    assert toy.extract_answer("98+93=191,191-77=114.A:114") == "114"
    assert toy.extract_answer("A:1 A: -7 ") == "-7"
    assert toy.extract_answer("no answer") is None
    assert toy.extract_answer("1+2=3.A:") is None
    assert toy.verify("1+2=3.A:3", "3") and toy.verify("A:-5", -5) and toy.verify("A:007", "7")
    assert not toy.verify("1+2=3.A:4", "3")
    assert not toy.verify("1+2=3", "3")
    assert not toy.verify("A:3x", "3")


def test_tokenizer_round_trip_and_specials():
    tok = toy_models.build_tokenizer()
    assert tok.get_vocab() == toy_models.build_tokenizer().get_vocab()
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1) and tok.bos_token_id is None
    assert tok.chat_template is None
    for it in toy.make_task(50, seed=2):
        text = it["question"] + it["solution"]
        ids = tok(text)["input_ids"]
        assert len(ids) == len(text)  # one token per character, nothing added
        assert tok.decode(ids) == text
        assert tok.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text
    assert tok.decode(tok("1 x")["input_ids"], skip_special_tokens=True) == "1"  # unknown chars -> <unk>


def test_shipped_data_files():
    train_path, heldout_path = toy_models.demo_data_paths()
    train, heldout = read_jsonl(train_path), read_jsonl(heldout_path)
    assert len(train) == toy.DEMO_TRAIN_SIZE and len(heldout) == toy.DEMO_HELDOUT_SIZE
    assert {"id", "question", "answer", "level"} <= set(train[0])
    assert {it["level"] for it in heldout} == set(toy.LEVELS)
    assert not {it["question"] for it in train} & {it["question"] for it in heldout}
    assert heldout == toy.make_task(toy.DEMO_HELDOUT_SIZE, toy.DEMO_HELDOUT_SEED)  # reproducible
    assert all(toy.verify(it["solution"], it["answer"]) for it in train[:200])


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = toy_models.demo_asset_dir()
    out = {}
    for name in ("teacher", "student"):
        out[name] = AutoModelForCausalLM.from_pretrained(root / name).eval()
        out[name + "_tok"] = AutoTokenizer.from_pretrained(root / name)
    return out


def test_shipped_models_load_and_share_the_vocabulary(shipped):
    tok = shipped["student_tok"]
    assert shipped["teacher_tok"].get_vocab() == tok.get_vocab() == toy_models.build_tokenizer().get_vocab()
    for name in ("teacher", "student"):
        model = shipped[name]
        assert type(model).__name__ == "LlamaForCausalLM"
        assert model.config.vocab_size == len(tok) and model.config.tie_word_embeddings
        assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    n_teacher = sum(p.numel() for p in shipped["teacher"].parameters())
    n_student = sum(p.numel() for p in shipped["student"].parameters())
    assert n_student < n_teacher
    teacher, student, tokenizer = toy_models.load_demo_models()
    assert tokenizer.get_vocab() == tok.get_vocab() and not teacher.training


def test_shipped_teacher_beats_student(shipped):
    heldout = read_jsonl(toy_models.demo_data_paths()[1])[:50]
    tok = shipped["student_tok"]
    side = tok.padding_side
    teacher = toy_models.greedy_accuracy(shipped["teacher"], tok, heldout)
    student = toy_models.greedy_accuracy(shipped["student"], tok, heldout)
    assert tok.padding_side == side  # restored
    assert teacher >= 0.9 and teacher > student + 0.3, (teacher, student)
    responses = toy_models.greedy_responses(shipped["teacher"], tok, [it["question"] for it in heldout[:5]])
    assert all("A:" in r for r in responses)


def test_shipped_student_reads_the_reference_answer_of_the_opsd_recipe(shipped):
    """OPSD's self-teacher is the student with the answer in its prompt: it must solve far more that way."""
    from sead.config import load_config
    from sead.config_files import find_config

    template = load_config(find_config("opsd")).objective.opsd_template
    assert template == toy.HINT_TEMPLATE  # the recipe's context is the one the student was built to read
    heldout = read_jsonl(toy_models.demo_data_paths()[1])[:50]
    hinted = [dict(it, question=template.format(answer=it["answer"], prompt=it["question"])) for it in heldout]
    tok, student = shipped["student_tok"], shipped["student"]
    plain, with_answer = (toy_models.greedy_accuracy(student, tok, items) for items in (heldout, hinted))
    assert with_answer >= 0.9 and with_answer > plain + 0.3, (with_answer, plain)


def test_shipped_teacher_is_uncertain_at_forks_and_sure_elsewhere(shipped):
    """The designed entropy structure: a "+" first step can start with either operand, a "-" one cannot."""
    import torch

    from sead.divergence import entropy

    tok, teacher = shipped["student_tok"], shipped["teacher"]

    def first_token_entropy(question):
        ids = torch.tensor([tok(question)["input_ids"]])
        with torch.no_grad():
            return float(entropy(teacher(ids).logits[0, -1]))

    fork = [first_token_entropy(q) for q in ("3+5-2=", "1+8+4-6=", "7+2-9+1+4=")]
    sure = [first_token_entropy(q) for q in ("3-5+2=", "8-1+4-6=", "7-2-9+1+4=")]
    assert min(fork) > 0.4 and max(sure) < 0.1, (fork, sure)


def test_shipped_student_mostly_works_right_to_left(shipped):
    """The student's designed weakness: its greedy solutions often start from the right end of the chain."""
    heldout = read_jsonl(toy_models.demo_data_paths()[1])[:60]
    responses = toy_models.greedy_responses(
        shipped["student"], shipped["student_tok"], [it["question"] for it in heldout]
    )
    rtl = sum(r == toy.right_to_left_solution(it["question"][:-1]) for r, it in zip(responses, heldout))
    assert rtl >= len(heldout) // 3, rtl
