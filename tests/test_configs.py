"""Config loading: the shipped recipes validate, overrides coerce to field types, bad values name the key;
recipes are a base plus overlays, found by name, with paths relative to their file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from sead.cli import main
from sead.config import RunConfig, config_from_dict, config_to_dict, load_config, save_config, section_types
from sead.config_files import PATH_KEYS, recipe_dir, recipe_names
from sead.data import PromptRows
from sead.demo import PRESETS, demo_config
from sead.errors import ConfigError
from sead.evaluate import EvalConfig
from sead.rollout import RolloutConfig
from sead.settings import help_texts
from sead.toy_models import demo_asset_dir

CONFIGS = [recipe_dir() / f"{name}.yaml" for name in recipe_names()]


def test_there_is_a_recipe_per_method():
    from sead.config import METHODS

    assert {p.stem for p in CONFIGS} >= set(METHODS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_recipes_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    assert cfg.objective.method == path.stem
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_overrides_coerce_to_field_types():
    cfg = load_config(
        None,
        [
            "optim.lr=1e-6",
            "train.steps=7",
            "objective.fractions=[0.6,0.3,0.1]",
            "data.template={problem}!",
            "objective.top_k=null",
            "objective.zones=false",
        ],
    )
    assert cfg.optim.lr == 1e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7
    assert cfg.objective.fractions == [0.6, 0.3, 0.1]
    assert cfg.data.template == "{problem}!"
    assert cfg.objective.top_k is None and cfg.objective.zones is False


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=1", "did you mean optim.lr"),
        ("objective.method=sed", "did you mean 'sead'"),
        ("train.steps=abc", "train.steps must be an integer"),
        ("objective.fractions=[0.5,0.5,0.5]", "sum to 1"),
        ("objective.fractions=[1.2,-0.3,0.1]", ">= 0"),
        ("optimm.lr=1", "unknown config section"),
        ("objective.zones=maybe", "true or false"),
        ("no_equals_sign", "key=value"),
    ],
)
def test_bad_overrides_name_the_key_and_fix(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_bad_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(bad)


def _flat(cfg: dict) -> dict:
    """``{(section, key): value}`` of a config dict (``(key, None)`` for a top-level value)."""
    return {
        (name, key): value
        for name, part in cfg.items()
        for key, value in (part.items() if isinstance(part, dict) else [(None, part)])
    }


def test_the_demo_trains_each_shipped_recipe(tmp_path):
    """sead demo reads the recipes: its config is the recipe with only the demo's own keys changed."""
    demo_keys = {
        ("name", None),
        ("data", "max_prompts"),
        ("curriculum", "difficulty_path"),
        ("curriculum", "seed"),
        ("train", "steps"),
        ("train", "seed"),
        ("train", "save_every"),
        ("train", "keep_checkpoints"),
        ("train", "output_dir"),
        ("logging", "samples_every"),
        ("eval", "k"),
        ("eval", "every"),
    }
    for path in CONFIGS:
        recipe = _flat(config_to_dict(load_config(path)))
        demo = _flat(config_to_dict(config_from_dict(demo_config(tmp_path, path.stem, 7, 2, 64, tmp_path / "d.jsonl"))))
        assert {key for key, value in demo.items() if recipe[key] != value} <= demo_keys, path.stem
        assert demo["train", "steps"] == 7 and demo["train", "output_dir"] == str(tmp_path / "runs" / f"{path.stem}-s2")
        assert recipe["optim", "lr"] == 1e-4 and recipe["train", "steps"] == PRESETS["tiny"][0]  # one budget for all


# Today's recipes before the base + overlay split (configs/<method>.yaml, paths relative to the repository).
BEFORE_SPLIT = {
    "model": {"student": "src/sead/assets/demo/student", "teacher": "src/sead/assets/demo/teacher"},
    "data": {
        "path": "src/sead/assets/demo/data/train.jsonl",
        "max_prompts": 1024,
        "shuffle_seed": 0,
        "prompt_field": "question",
        "answer_field": "answer",
        "id_field": "id",
        "template": "{problem}",
    },
    "verifier": {"kind": "sead.toy:verify"},
    "rollout": {"temperature": 0.7, "top_p": 1.0, "batch_size": 64, "max_new_tokens": 56, "chat_template": "off"},
    "curriculum": {
        "sampler": "uniform",
        "difficulty_path": "runs/tiny-difficulty.jsonl",
        "seed": 0,
        "c0": 0.25,
        "p": 2.0,
        "estimate_k": 4,
    },
    "optim": {"max_grad_norm": 1.0, "lr": 0.0001, "warmup_steps": 5, "schedule": "cosine"},
    "train": {
        "steps": 40,
        "batch_size": 32,
        "micro_batch_size": 32,
        "seed": 0,
        "save_every": 20,
        "keep_checkpoints": 2,
    },
    "logging": {"samples_every": 8, "num_samples": 4},
    "eval": {
        "data": ["heldout=src/sead/assets/demo/data/heldout.jsonl"],
        "k": 0,
        "greedy": True,
        "temperature": 0.7,
        "max_prompts": None,
        "batch_size": 100,
        "split": "train",
        "max_new_tokens": 56,
        "chat_template": "off",
        "prompt_field": "question",
        "answer_field": "answer",
        "id_field": "id",
        "template": "{problem}",
        "every": 20,
    },
}
BEFORE_SPLIT_OBJECTIVE = {
    "opd": {"clip_eps": 0.2},
    "rkl": {},
    "fkl": {},
    "jsd": {"beta": 0.5},
    "eopd": {"tau": 0.5},
    "sead": {
        "zones": True,
        "anneal": True,
        "curriculum": True,
        "fractions": [0.5, 0.4, 0.1],
        "alpha_start": 0.8,
        "alpha_end": 0.0,
        "lam": 1.0,
        "zone_c_mix": "eq4",
    },
    "grpo": {"group_size": 4, "kl_coef": 0.0},
    "opsd": {"opsd_teacher": "initial", "opsd_divergence": "rkl", "opsd_template": "A:{answer},{prompt}"},
}


@pytest.mark.parametrize("method", sorted(BEFORE_SPLIT_OBJECTIVE))
def test_resolved_recipes_equal_the_recipes_before_the_split(method):
    old = yaml.safe_load(yaml.safe_dump(BEFORE_SPLIT))  # a deep copy
    assets = demo_asset_dir()
    for key in ("student", "teacher"):
        old["model"][key] = str(assets / key)
    old["data"]["path"] = str(assets / "data" / "train.jsonl")
    old["eval"]["data"] = [f"heldout={assets / 'data' / 'heldout.jsonl'}"]
    old["name"] = f"tiny-{method}"
    old["objective"] = {"method": method, **BEFORE_SPLIT_OBJECTIVE[method]}
    old["train"]["output_dir"] = f"runs/tiny-{method}"
    if method == "sead":
        old["curriculum"]["sampler"] = "competence"
    if method == "grpo":
        old["train"]["batch_size"] = 8
    assert config_to_dict(load_config(method)) == config_to_dict(config_from_dict(old))


def test_a_recipe_by_name_or_path_loads_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    by_name, by_path = load_config("sead"), load_config(recipe_dir() / "sead.yaml")
    assert by_name == by_path and Path(by_name.model.student).is_dir() and Path(by_name.data.path).is_file()
    assert by_name.train.output_dir == "runs/tiny-sead"  # outputs go under the current directory
    assert by_name.curriculum.difficulty_path == "runs/tiny-difficulty.jsonl"  # not written yet: left as written
    assert main(["config", "show", "--config", "sead"]) == 0 and str(demo_asset_dir()) in capsys.readouterr().out


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_chain_merges_deep_and_each_file_resolves_its_own_paths(tmp_path, monkeypatch):
    (tmp_path / "shared" / "student").mkdir(parents=True)
    (tmp_path / "shared" / "held.jsonl").write_text("")
    _write(
        tmp_path / "shared" / "base.yaml",
        {
            "model": {"student": "student", "teacher": "./teacher", "tokenizer": "Qwen/Qwen3-1.7B"},
            "data": {"path": "openai/gsm8k", "template": "Q: {problem}"},
            "eval": {"data": ["held=held.jsonl", "openai/gsm8k"], "max_new_tokens": 3},
            "objective": {"fractions": [0.6, 0.3, 0.1]},
            "train": {"output_dir": "runs/x", "steps": 5},
        },
    )
    _write(
        tmp_path / "mid" / "mid.yaml",
        {"base": "../shared/base.yaml", "train": {"steps": 6}, "model": {"teacher": "~/teacher"}},
    )
    top = _write(
        tmp_path / "top" / "run.yaml",
        {
            "base": "../mid/mid.yaml",
            "description": "mine",
            "objective": {"fractions": [0.5, 0.4, 0.1]},
            "data": {"prompt_field": "question"},
        },
    )
    monkeypatch.chdir(tmp_path / "top")
    cfg = load_config(top, ["curriculum.difficulty_path=./d.jsonl"])
    assert cfg.model.student == str(tmp_path / "shared" / "student")  # exists next to base.yaml
    assert cfg.model.teacher == os.path.expanduser("~/teacher")  # the overlay's value, its own rule
    assert cfg.model.tokenizer == "Qwen/Qwen3-1.7B" and cfg.data.path == "openai/gsm8k"  # hub names stay
    assert cfg.eval.data == [f"held={tmp_path / 'shared' / 'held.jsonl'}", "openai/gsm8k"]
    assert cfg.data.template == "Q: {problem}" and cfg.data.prompt_field == "question"  # merged key by key
    assert cfg.objective.fractions == [0.5, 0.4, 0.1] and cfg.train.steps == 6  # lists and values replace
    assert cfg.train.output_dir == "runs/x" and cfg.eval.max_new_tokens == 3
    assert cfg.curriculum.difficulty_path == "./d.jsonl"  # an override is relative to the current directory


def test_a_config_can_extend_a_shipped_recipe_by_name(tmp_path):
    mine = _write(tmp_path / "mine.yaml", {"base": "sead", "train": {"steps": 3, "output_dir": "runs/mine"}})
    cfg, shipped = load_config(mine), load_config("sead")
    assert cfg.train.steps == 3 and cfg.objective == shipped.objective and cfg.model == shipped.model


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("unknown_recipe", "did you mean 'sead'"),
        ("missing_file", "does not exist; pass --config"),
        ("missing_base", "fix its base: line"),
        ("base_cycle", "config base cycle a.yaml -> b.yaml -> a.yaml"),
        ("self_base", "config base cycle a.yaml -> a.yaml"),
        ("bad_base", "base must name a file"),
    ],
)
def test_bad_config_files_are_one_line_errors_naming_the_fix(tmp_path, case, fragment):
    target = {
        "unknown_recipe": lambda: "sed",
        "missing_file": lambda: str(tmp_path / "nope.yaml"),
        "missing_base": lambda: _write(tmp_path / "a.yaml", {"base": "gone.yaml"}),
        "base_cycle": lambda: (
            _write(tmp_path / "b.yaml", {"base": "a.yaml"}),
            _write(tmp_path / "a.yaml", {"base": "b.yaml"}),
        )[1],
        "self_base": lambda: _write(tmp_path / "a.yaml", {"base": "a.yaml"}),
        "bad_base": lambda: _write(tmp_path / "a.yaml", {"base": ["x"]}),
    }[case]()
    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(target)
    assert "\n" not in str(err.value)


def test_every_config_key_has_help_and_the_path_keys_exist():
    for cls in [RunConfig, *section_types().values()]:
        missing = [name for name, text in help_texts(cls).items() if not text and name not in section_types()]
        assert not missing, f"{cls.__name__}: {missing}"
    for section, keys in PATH_KEYS.items():
        assert set(keys) <= set(help_texts(section_types()[section])), section


def test_config_show_prints_every_key_with_its_help_and_loads_back(tmp_path, capsys):
    assert main(["config", "show", "--config", "eopd", "optim.lr=3e-4", "eval.k=2"]) == 0
    shown = capsys.readouterr().out
    for name, cls in section_types().items():
        assert f"\n{name}:" in shown
        for key, text in help_texts(cls).items():
            assert any(
                line.lstrip().startswith(f"{key}:") and line.endswith(f"# {text}") for line in shown.splitlines()
            )
    (tmp_path / "shown.yaml").write_text(shown)
    assert load_config(tmp_path / "shown.yaml") == load_config("eopd", ["optim.lr=3e-4", "eval.k=2"])


def test_sead_configs_lists_every_recipe_with_method_and_description(capsys):
    assert main(["configs"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    for path in CONFIGS:
        assert rows[path.stem][1] == load_config(path).objective.method and len(rows[path.stem]) > 3
    assert "base" not in rows  # shared settings, not a recipe
    assert main(["train", "--config", "sedd"]) == 2  # an unknown name is a one-line error


def test_eval_config_is_made_of_the_rollout_and_row_settings():
    assert issubclass(EvalConfig, RolloutConfig) and issubclass(EvalConfig, PromptRows)
    shared = {f.name for f in dataclasses.fields(RolloutConfig)} | {f.name for f in dataclasses.fields(PromptRows)}
    assert shared <= {f.name for f in dataclasses.fields(EvalConfig)}
    cfg = load_config(None, ["eval.max_new_tokens=3", "eval.prompt_field=question", "eval.chat_template=off"])
    assert cfg.eval.rollout_config() == RolloutConfig(max_new_tokens=3, chat_template="off")
    assert cfg.eval.split == "test" and EvalConfig().max_new_tokens == 512  # eval's own defaults
    with pytest.raises(ConfigError, match="eval.max_prompt_tokens"):
        load_config(None, ["eval.max_prompt_tokens=0"])
