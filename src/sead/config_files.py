"""Config files on disk: shipped recipes found by name, ``base:`` chains, paths relative to the file.

``--config`` takes a YAML file or the bare name of a shipped recipe (``sead`` is
``src/sead/configs/sead.yaml``; an existing file of that name wins). The recipes for real model
pairs (hub models and data, GPUs) live in ``configs/real/`` and are found by name the same way
(``olmo3-sead``); `recipe_names` lists the tiny per-method ones, `real_recipe_names` those. A file is a mapping of
sections (`sead.config.RunConfig`) plus two keys about the file itself, not the run:

- ``description``: one line, listed by ``sead configs``;
- ``base``: a file this one is laid over, relative to this file's folder (or a shipped recipe's
  name); bases may have bases, a cycle is refused. The overlay merges deep over its base: mappings
  merge key by key, any other value (a list too) replaces the base's.

Local paths **[choice]**: a path-valued key (`PATH_KEYS`, and the path of each ``eval.data``
entry) whose value starts with ``./``, ``../``, ``/`` or ``~``, or names something that exists
next to the file, becomes an absolute path against the file's folder, each file of a chain against
its own. Anything else is left as written: hub names (``Qwen/Qwen3-1.7B``, ``openai/gsm8k``) and
files not written yet (a difficulty file) then resolve against the current directory, as do
``train.output_dir`` and every command-line override.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from sead.errors import ConfigError
from sead.settings import help_texts

__all__ = [
    "PATH_KEYS",
    "recipe_dir",
    "recipe_names",
    "real_recipe_names",
    "recipe_path",
    "recipe_description",
    "find_config",
    "read_config_file",
    "merge_configs",
    "commented_yaml",
]

PATH_KEYS = {"model": ("student", "teacher", "tokenizer"), "data": ("path",), "curriculum": ("difficulty_path",)}
BASE_NAME = "base"  # src/sead/configs/base.yaml: the settings every shipped recipe shares, not a recipe itself
REAL_DIR = "real"  # src/sead/configs/real/: recipes for real model pairs, with their own base.yaml
_LOCAL_PREFIXES = ("./", "../", "/", "~")


def recipe_dir() -> Path:
    """The folder of the shipped recipes (inside the installed package)."""
    return Path(str(files("sead") / "configs"))


def recipe_names() -> list[str]:
    """The shipped tiny recipes' names (``--config NAME``), sorted; the shared ``base.yaml`` is not one."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml") if p.stem != BASE_NAME)


def real_recipe_names() -> list[str]:
    """The shipped recipes for real model pairs (``configs/real/``), sorted; its ``base.yaml`` is not one."""
    return sorted(p.stem for p in (recipe_dir() / REAL_DIR).glob("*.yaml") if p.stem != BASE_NAME)


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe (tiny or real) by name; ConfigError when there is none."""
    path = _shipped(name)
    if path is None:
        raise ConfigError(f"no shipped recipe {name!r}; sead configs lists them")
    return path


def recipe_description(path: str | Path) -> str:
    """The ``description:`` line of one config file (not inherited from its base); empty without one."""
    return str(_read_yaml(Path(path)).get("description") or "")


def _is_bare_name(text: str) -> bool:
    return "/" not in text and os.sep not in text and not text.endswith((".yaml", ".yml"))


def _shipped(name: str) -> Path | None:
    for folder in (recipe_dir(), recipe_dir() / REAL_DIR):
        path = folder / f"{name}.yaml"
        if path.is_file() and not (folder != recipe_dir() and name == BASE_NAME):
            return path
    return None


def find_config(name_or_path: str | Path) -> Path:
    """The file ``--config`` names: an existing file, else the shipped recipe of that bare name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if _is_bare_name(text):
        shipped = _shipped(text)
        if shipped is not None:
            return shipped
        names = recipe_names() + real_recipe_names()
        close = difflib.get_close_matches(text, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"--config {text!r} is no file and no shipped recipe; {hint}"
            f"recipes: {', '.join(names)} (sead configs), or pass a YAML file"
        )
    what = "is a folder, not a file" if path.exists() else "does not exist"
    raise ConfigError(
        f"config file {text!r} {what}; pass --config a YAML file or a shipped recipe name (sead configs lists them)"
    )


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}; fix the YAML syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save the config as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); check the path") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must be a mapping of sections (train:, optim:, ...), got a YAML {type(data).__name__}; "
            "see `sead config show --config sead` for an example"
        )
    return data


def _localise(value: Any, folder: Path) -> Any:
    """``value`` as an absolute path against ``folder`` when it looks local (see module doc)."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(_LOCAL_PREFIXES) or (folder / value).exists():
        return os.path.abspath(folder / os.path.expanduser(value))
    return value


def _localise_paths(data: dict, folder: Path) -> dict:
    out = dict(data)
    for section, keys in PATH_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: _localise(v, folder) if k in keys else v for k, v in out[section].items()}
    evaluation = out.get("eval")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("data"), list):
        entries = []
        for entry in evaluation["data"]:
            name, sep, path = entry.partition("=") if isinstance(entry, str) else ("", "", entry)
            entries.append(f"{name}={_localise(path, folder)}" if sep else _localise(entry, folder))
        out["eval"] = {**evaluation, "data": entries}
    return out


def merge_configs(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``: mappings merge key by key, other values replace (inputs unchanged)."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge_configs(out[key], value)
        elif not (isinstance(out.get(key), dict) and value is None):  # an empty section (`eval:`) adds nothing
            out[key] = value
    return out


def _base_path(base: Any, path: Path) -> Path:
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must name a file, got {base!r}; e.g. base: base.yaml")
    candidate = path.parent / os.path.expanduser(base)
    if candidate.is_file():
        return candidate
    shipped = _shipped(base) if _is_bare_name(base) else None
    if shipped is not None:
        return shipped
    raise ConfigError(
        f"base {base!r} named in {path} does not exist (looked in {path.parent}); fix its base: line "
        "(a file relative to that config, or a shipped recipe name)"
    )


def read_config_file(path: str | Path) -> dict:
    """The nested dict of one config file: its ``base:`` chain merged under it, local paths absolute,
    ``base`` and ``description`` removed."""
    return _read_chain(Path(path).resolve(), ())


def _read_chain(path: Path, chain: tuple[Path, ...]) -> dict:
    if path in chain:
        loop = " -> ".join(p.name for p in (*chain[chain.index(path) :], path))
        raise ConfigError(f"config base cycle {loop}; remove one of these base: lines")
    data = _read_yaml(path)
    base = data.pop("base", None)
    data.pop("description", None)
    data = _localise_paths(data, path.parent)
    if base is None:
        return data
    return merge_configs(_read_chain(_base_path(base, path).resolve(), (*chain, path)), data)


def _scalar(value: Any) -> str:
    """One value as one line of YAML (strings with line breaks as double-quoted escapes)."""
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value, ensure_ascii=False)
    return yaml.safe_dump([value], default_flow_style=True, width=float("inf")).strip()[1:-1]


def commented_yaml(config: Any, head: str = "") -> str:
    """A config dataclass as YAML that loads back, each key followed by its help text (``sead config show``)."""
    lines = [f"# {line}" for line in head.splitlines()]

    def section(obj: Any, indent: str) -> None:
        helps = help_texts(type(obj))
        rows = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                doc = " ".join((type(value).__doc__ or "").strip().split("\n\n")[0].split())
                lines.extend(_aligned(rows))
                rows = []
                lines.append(f"{indent}{f.name}:  # {doc}" if doc else f"{indent}{f.name}:")
                section(value, indent + "  ")
            else:
                rows.append((f"{indent}{f.name}: {_scalar(value)}", helps[f.name]))
        lines.extend(_aligned(rows))

    section(config, "")
    return "\n".join(lines) + "\n"


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    width = min(max((len(text) for text, _ in rows), default=0), 48)
    return [f"{text.ljust(width)}  # {help}" if help else text for text, help in rows]
