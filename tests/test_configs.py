"""Config loading: the shipped recipes validate, overrides coerce to field types, bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sead.config import load_config, save_config
from sead.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


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
    cfg = load_config(None, ["optim.lr=1e-6", "train.steps=7", "objective.fractions=[0.6,0.3,0.1]",
                             "data.template={problem}!", "objective.top_k=null", "objective.zones=false"])
    assert cfg.optim.lr == 1e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7
    assert cfg.objective.fractions == [0.6, 0.3, 0.1]
    assert cfg.data.template == "{problem}!"
    assert cfg.objective.top_k is None and cfg.objective.zones is False


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=1", "did you mean optim.lr"),
    ("objective.method=sed", "did you mean 'sead'"),
    ("train.steps=abc", "train.steps must be an integer"),
    ("objective.fractions=[0.5,0.5,0.5]", "sum to 1"),
    ("objective.fractions=[1.2,-0.3,0.1]", ">= 0"),
    ("optimm.lr=1", "unknown config section"),
    ("objective.zones=maybe", "true or false"),
    ("no_equals_sign", "key=value"),
])
def test_bad_overrides_name_the_key_and_fix(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_bad_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(bad)


def test_recipes_are_written_from_the_demo_settings():
    """configs/*.yaml come from sead.demo.demo_config: a hand edit (or a demo change) without a rewrite fails."""
    import runpy

    script = Path(__file__).parent.parent / "recipes" / "write_configs.py"
    write_configs = runpy.run_path(str(script))
    assert write_configs["main"](["--check"]) == 0
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.optim.lr == write_configs["recipe"]("opd")["optim"]["lr"]  # one learning rate for every method
        assert cfg.train.steps == write_configs["PRESETS"]["tiny"][0]
