"""The rows of ``sead compare`` and their state on disk: the initial student (``base``) or one
run of a variant (one per training seed with ``--seeds``), where its run and eval files live,
and how far it got. A table row is a variant: the tables group its runs by name.

A `Row` is ``untrained`` (a variant without ``final/``), ``missing`` (trained, no complete eval
files), ``stale`` (evaluated with other eval settings) or ``done``. Its saved ``config.yaml``
must train what the row's config trains (`Row.saved_config`); the resume-free keys are the
trainer's own (`sead.run_dir.resume_changes`), and the eval section never changes training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sead.compare_plan import Variant, describe_variant
from sead.config import RunConfig, config_to_dict
from sead.errors import ConfigError, DataError
from sead.run_dir import resume_changes

__all__ = ["BASE", "Row", "base_row", "variant_row", "eval_fingerprint", "eval_state"]

BASE = "base"  # the row of the initial student


def eval_fingerprint(cfg: RunConfig, model: dict | None = None) -> dict:
    """What an eval file depends on besides the model weights: eval and verifier settings (+ base model)."""
    plain = config_to_dict(cfg)  # plain str, lists for tuples: equal to what the eval JSON read back holds
    out = {"eval": plain["eval"], "verifier": plain["verifier"]}
    out["eval"].pop("every", None)  # the in-training hook's schedule does not change a final evaluation
    if model is not None:
        out["model"] = model
    return out


def eval_state(json_path: Path, fingerprint: dict) -> str:
    """``done`` (JSON + samples, same settings), ``stale`` (other settings) or ``missing``."""
    samples = json_path.with_name(json_path.stem + ".samples.jsonl")
    if not json_path.is_file() or not samples.is_file():
        return "missing"
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "missing"
    return "done" if isinstance(data, dict) and data.get("compare") == fingerprint else "stale"


@dataclass
class Row:
    """The base student (``run_dir`` None) or one run of a variant; with ``--seeds`` a variant has
    one Row per seed, all with the variant's ``name`` (`sead.compare_tables` averages them)."""

    name: str
    method: str | None
    description: str
    cfg: Any  # RunConfig (tables read only cfg.eval and cfg.train)
    run_dir: Path | None  # None for the base row
    eval_json: Path
    fingerprint: dict  # stored in the eval JSON under "compare" (`eval_fingerprint`)
    seed: int | None = None  # the training seed of ``--seeds``; None: the config's train.seed, one run

    @property
    def label(self) -> str:
        """How messages name this run: the variant, plus its seed with ``--seeds``."""
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"

    @property
    def samples(self) -> Path:
        return self.eval_json.with_name(self.eval_json.stem + ".samples.jsonl")

    def trained(self) -> bool:
        return self.run_dir is None or (self.run_dir / "final").is_dir()

    def state(self) -> str:
        if not self.trained():
            return "untrained"
        return eval_state(self.eval_json, self.fingerprint)

    def saved_config(self) -> dict:
        """The saved config of an existing run dir (``{}`` when none), after checking it trains what
        ``cfg`` trains; a difference is an error naming the keys."""
        saved_path = self.run_dir / "config.yaml"
        if not saved_path.is_file():
            return {}
        saved = _read_yaml(saved_path)
        changed = resume_changes(saved, self.cfg, also_free={("eval", key) for key in vars(self.cfg.eval)})
        if changed:
            raise ConfigError(
                f"{self.run_dir} was trained with a different config ({', '.join(changed[:4])}); restore those "
                f"values, use another --out, or delete {self.run_dir} to retrain {self.label}"
            )
        return saved


def base_row(base_cfg: RunConfig, out_dir: Path) -> Row:
    """The initial student's row: evaluated once into ``OUT/base/eval/base.json``."""
    m = base_cfg.model
    student = {"student": m.student, "tokenizer": m.tokenizer, "gguf_file": m.gguf_file, "dtype": m.dtype}
    return Row(
        name=BASE,
        method=None,
        description="initial student",
        cfg=base_cfg,
        run_dir=None,
        eval_json=out_dir / BASE / "eval" / f"{BASE}.json",
        fingerprint=eval_fingerprint(base_cfg, student),
    )


def variant_row(variant: Variant, cfg: RunConfig, seed: int | None = None) -> Row:
    """A variant's run, from its resolved config (for ``seed``, `resolve_variants` with that seed):
    its run dir is ``train.output_dir``."""
    run_dir = Path(cfg.train.output_dir)
    return Row(
        name=variant.name,
        method=variant.method,
        description=describe_variant(cfg),
        cfg=cfg,
        run_dir=run_dir,
        eval_json=run_dir / "eval" / "final.json",
        fingerprint=eval_fingerprint(cfg),
        seed=seed,
    )


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path} is unreadable ({err}); delete its run directory to retrain that variant") from None
    return data if isinstance(data, dict) else {}
