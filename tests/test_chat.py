"""Chat data: messages datasets, a system prompt and chat-template arguments, through the tokenizer's
chat template in training, evaluation and difficulty estimation; bad input gets one-line errors."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from tiny import char_tokenizer, chat_tokenizer, tiny_llama

from sead.chat import ChatPrompt, chat_messages, with_text
from sead.config import load_config
from sead.data import DataConfig, load_prompts, rows_to_items
from sead.errors import ConfigError, DataError
from sead.evaluate import EvalConfig, load_benchmarks
from sead.prompt_length import fit_prompts
from sead.rollout import RolloutConfig, format_prompts, generate_rollouts
from sead.trainer import Trainer

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "1+1="},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2="},
    {"role": "assistant", "content": "4"},  # a reference reply after the last user turn: not part of the prompt
]


def items(rows, **kw):
    return rows_to_items(
        [(f"row {i}", r) for i, r in enumerate(rows, 1)], "question", "answer", None, "{problem}", **kw
    )


def test_messages_rows_give_the_turns_up_to_the_last_user_turn():
    (item,) = items([{"messages": CONVERSATION, "answer": "4"}], messages_field="messages")
    assert item.question == item.prompt == "2+2=" and isinstance(item.prompt, ChatPrompt)
    assert chat_messages(item.prompt) == CONVERSATION[:4]
    (item,) = rows_to_items(
        [("r", {"messages": CONVERSATION[1:2], "answer": "2"})],
        "question",
        "answer",
        None,
        "Q: {problem}",
        messages_field="messages",
    )
    assert item.prompt == "Q: 1+1=" and not isinstance(item.prompt, ChatPrompt)  # one turn, no system: plain


def test_a_system_prompt_for_prompts_without_one():
    plain, chat = (
        items(
            [{"question": "3+3=", "answer": "6"}, {"question": "x", "messages": CONVERSATION, "answer": "4"}],
            system_prompt="think",
        )[0],
        items([{"messages": CONVERSATION, "answer": "4"}], messages_field="messages", system_prompt="think")[0],
    )
    assert chat_messages(plain.prompt) == [{"role": "system", "content": "think"}, {"role": "user", "content": "3+3="}]
    assert chat_messages(chat.prompt)[0] == {"role": "system", "content": "be brief"}  # the row's own wins


def test_dotted_fields_read_nested_columns():
    row = {"prompt": [{"role": "user", "content": "5+5="}], "reward_model": {"ground_truth": "10", "style": "rule"}}
    (item,) = rows_to_items([("r", row)], "prompt", "reward_model.ground_truth", None, "{problem}", "data", "prompt")
    assert (item.prompt, item.answer) == ("5+5=", "10")
    with pytest.raises(DataError, match="no field 'reward_model.truth'"):
        rows_to_items([("r", row)], "prompt", "reward_model.truth", None, "{problem}", "data", "prompt")


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("2+2=", "field 'messages' is a str, not a list of turns"),
        ([], "field 'messages' is a list, not a list of turns"),
        ([{"role": "user"}], "turn 0 of field 'messages' is not a {role, content} mapping"),
        ([{"role": "user", "content": ["img"]}], "turn 0 of field 'messages' is not a {role, content}"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "has no user turn"),
        (None, "field 'messages' is null"),
    ],
)
def test_bad_conversations_are_one_line_errors(value, fragment):
    with pytest.raises(DataError, match=None) as err:
        items([{"messages": value, "answer": "1"}], messages_field="messages")
    assert fragment in str(err.value) and "\n" not in str(err.value) and "row 1" in str(err.value)


def test_chat_prompts_keep_their_turns_through_copies_and_rewrites():
    prompt = ChatPrompt("q", [{"role": "system", "content": "s"}])
    for copied in (copy.deepcopy(prompt), pickle.loads(pickle.dumps(prompt))):
        assert copied == "q" and copied.context == prompt.context
    assert with_text(prompt, "new").context == prompt.context and with_text("plain", "new") == "new"
    assert json.dumps({"prompt": prompt}) == '{"prompt": "q"}'  # samples and eval records stay text


def test_the_chat_template_renders_turns_and_its_arguments():
    tok = chat_tokenizer()
    prompt = ChatPrompt("2+2=", [{"role": "system", "content": "be brief"}])
    (text,), templated = format_prompts(tok, [prompt], "auto", {"enable_thinking": False})
    assert templated and text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    (text,), _ = format_prompts(tok, ["2+2="], "auto")
    assert "<think>" not in text and "system" not in text


def test_rollouts_use_the_chat_template_arguments():
    tok = chat_tokenizer()
    model = tiny_llama(len(tok))
    cfg = RolloutConfig(max_new_tokens=2, chat_template_kwargs={"enable_thinking": False})
    rollout = generate_rollouts(model, tok, [ChatPrompt("1+1=", [{"role": "system", "content": "s"}])], cfg)
    prompt_ids = rollout.input_ids[0, : rollout.prompt_len].tolist()
    assert tok.convert_tokens_to_ids("<think>") in prompt_ids
    assert tok.decode(prompt_ids, skip_special_tokens=False).count("<|im_start|>") == 3  # system, user, assistant


def test_chat_prompts_without_a_chat_template_are_refused():
    prompt = ChatPrompt("q", [{"role": "system", "content": "s"}])
    with pytest.raises(ConfigError, match="the tokenizer has no chat template") as err:
        format_prompts(char_tokenizer(), [prompt], "auto")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="chat_template=off is set"):
        format_prompts(chat_tokenizer(), [prompt], "off")
    with pytest.raises(ConfigError, match="rollout.chat_template=on but the tokenizer has no chat template"):
        format_prompts(char_tokenizer(), ["q"], "on")


def test_a_failing_chat_template_is_a_one_line_error():
    tok = chat_tokenizer()
    tok.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    with pytest.raises(ConfigError, match="chat template failed on a prompt.*no system role") as err:
        format_prompts(tok, [ChatPrompt("q", [{"role": "system", "content": "s"}])])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["rollout.chat_template_kwargs=[1,2]"], "rollout.chat_template_kwargs must be a mapping"),
        (["rollout.chat_template_kwargs={enable_thinking: false}", "rollout.chat_template=off"], "uses no chat"),
        (["eval.chat_template_kwargs=3"], "eval.chat_template_kwargs must be a mapping"),
        (["data.system_prompt="], "data.system_prompt must be a non-empty string or null"),
        (["eval.messages_field="], "eval.messages_field must be a non-empty string or null"),
    ],
)
def test_bad_chat_settings(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_data_and_eval_load_chat_prompts(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION, "answer": "4"}) + "\n")
    cfg = DataConfig(path=str(path), messages_field="messages", template="{problem}", system_prompt="x")
    (item,) = load_prompts(cfg)
    assert chat_messages(item.prompt) == CONVERSATION[:4]
    ev = EvalConfig(data=[f"chat={path}"], messages_field="messages", system_prompt="solve", template="{problem}")
    (bench,) = load_benchmarks(ev)["chat"]
    assert chat_messages(bench.prompt)[0]["content"] == "be brief"


def test_truncation_keeps_the_earlier_turns():
    tok = chat_tokenizer()
    prompt = ChatPrompt("1+2+3+4+5+6+7+8+9=" * 3, [{"role": "system", "content": "s"}])
    (item,) = items([{"question": "q", "answer": "1"}])
    item.prompt = prompt
    cfg = RolloutConfig(max_prompt_tokens=40, max_new_tokens=2)
    (cut,), notes = fit_prompts([item], tok, cfg, "truncate", "data", {"student": None})
    assert isinstance(cut.prompt, ChatPrompt) and cut.prompt.context == prompt.context and len(cut.prompt) < 54
    assert notes and "truncate" in notes[0]


@pytest.fixture(scope="module")
def chat_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_assets")
    tok = chat_tokenizer()
    paths = {}
    for name, hidden, seed in (("teacher", 48, 1), ("student", 32, 2)):
        tiny_llama(len(tok), hidden=hidden, seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    rows = [{"messages": [{"role": "user", "content": f"{a}+{a}="}], "answer": str(2 * a)} for a in range(6)]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**paths, "data": str(root / "chat.jsonl")}


@pytest.mark.parametrize("method", ["sead", "opsd"])
def test_training_on_chat_data_with_a_system_prompt(chat_assets, tmp_path, method, monkeypatch):
    seen = []
    real = type(chat_tokenizer()).apply_chat_template

    def recording(self, conversation, *args, **kwargs):
        seen.append((conversation, kwargs.get("enable_thinking")))
        return real(self, conversation, *args, **kwargs)

    monkeypatch.setattr(type(chat_tokenizer()), "apply_chat_template", recording)
    overrides = {
        "model.student": chat_assets["student"],
        "model.teacher": chat_assets["teacher"],
        "data.path": chat_assets["data"],
        "data.messages_field": "messages",
        "data.system_prompt": "answer with a number",
        "data.template": "{problem}",
        "rollout.chat_template_kwargs": "{enable_thinking: false}",
        "rollout.max_new_tokens": 3,
        "rollout.max_prompt_tokens": 200,
        "objective.method": method,
        "objective.opsd_template": "A:{answer},{prompt}",
        "verifier.kind": "exact",
        "train.steps": 1,
        "train.batch_size": 2,
        "train.micro_batch_size": 2,
        "logging.progress": "false",
        "train.output_dir": str(tmp_path / "run"),
    }
    Trainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()])).setup().train()
    system = {"role": "system", "content": "answer with a number"}
    assert seen and all(conv[0] == system and thinking is False for conv, thinking in seen)
    if method == "opsd":  # the teacher's privileged prompt keeps the system turn too
        assert any(conv[-1]["content"].startswith("A:") for conv, _ in seen)
