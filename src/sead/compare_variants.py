"""The variants of ``sead compare``: plan and resolve them, then train and evaluate each one.

A variant is the base config with some ``objective.*`` settings changed (`plan_variants`,
`resolve_variants`). Each row of the comparison (the initial student, or one variant) knows its
state on disk (`_Row.state`): untrained, trained but not evaluated with the current eval
settings, or done; `train_variant` and `evaluate_row` move it along, resuming where they can.
"""

from __future__ import annotations

import copy
import gc
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sead.errors import ConfigError, DataError

__all__ = ["Variant", "plan_variants", "resolve_variants", "train_variant", "evaluate_row"]

ABLATIONS = ("tac",)
# Keys that never change what a run trains: the trainer's resume-free keys, where the run lives,
# and the whole eval section (evaluation settings are checked separately, per eval file).
_TRAINING_FREE = {("train", "resume"), ("train", "force_resume"), ("logging", "progress"), ("train", "torch_threads"),
                  ("train", "output_dir")}
_TRAINER_FREE = {("train", "resume"), ("train", "force_resume"), ("logging", "progress"), ("train", "torch_threads")}


@dataclass
class Variant:
    """One row of the comparison: a name and the ``objective`` settings it puts on the base config."""

    name: str
    method: str
    objective: dict[str, Any] = field(default_factory=dict)  # objective.KEY -> value


def _describe(cfg) -> str:
    o = cfg.objective
    if o.method != "sead":
        return o.method + (" + curriculum" if o.curriculum else "")
    return "sead: " + ", ".join(f"{x} {'on' if on else 'off'}" for x, on in
                                (("T", o.zones), ("A", o.anneal), ("C", o.curriculum)))


def _ablation_name(t: bool, a: bool, c: bool) -> str:
    parts = [x for x, on in (("T", t), ("A", a), ("C", c)) if on]
    return "sead-" + ("-".join(parts) if parts else "none")


def plan_variants(methods: Sequence[str], ablation: str | None = None) -> list[Variant]:
    """The variants of ``--methods`` (and ``--ablation``), in table order.

    With ``ablation="tac"`` the 8 T/A/C combinations of ``sead`` (paper order: none, T, A, C,
    T-A, T-C, A-C, T-A-C) take the place of ``sead`` in ``methods``, or come last without it.
    """
    from sead.config import METHODS

    methods = [m.strip() for m in methods if m.strip()]
    if not methods and not ablation:
        raise ConfigError("--methods is empty; e.g. --methods opd,eopd,sead")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: {m!r} is not a method; use some of {', '.join(METHODS)}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ConfigError(f"--methods names {repeated[0]!r} twice; list each method once")
    if ablation is not None and ablation not in ABLATIONS:
        raise ConfigError(f"--ablation {ablation!r} is unknown; use --ablation tac (T/A/C of sead)")
    combos = []
    if ablation == "tac":
        order = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
        combos = [Variant(_ablation_name(*map(bool, tac)), "sead",
                          {"method": "sead", "zones": bool(tac[0]), "anneal": bool(tac[1]), "curriculum": bool(tac[2])})
                  for tac in order]
    variants: list[Variant] = []
    for m in methods:
        if m == "sead" and combos:
            variants += combos
        elif m == "sead":
            variants.append(Variant("sead", "sead", {"method": "sead"}))
        else:
            variants.append(Variant(m, m, {"method": m, "curriculum": False}))
    if combos and "sead" not in methods:
        variants += combos
    return variants


def resolve_variants(base_cfg, variants: Sequence[Variant], out_dir: str | Path) -> dict[str, Any]:
    """One validated RunConfig per variant: the base config plus the variant's objective settings,
    ``name=<variant>`` and ``train.output_dir=OUT/runs/<variant>``. Checks what would only fail later
    (curriculum inputs, evaluation sets) before anything is trained."""
    from sead.config import config_from_dict, config_to_dict

    if not base_cfg.eval.data:
        raise ConfigError("sead compare needs evaluation sets; set eval.data=[name=path,...] in the base config "
                          "or as an override")
    base = config_to_dict(base_cfg)
    resolved = {}
    for v in variants:
        data = copy.deepcopy(base)
        data["name"] = v.name
        data["objective"].update(v.objective)
        data["train"]["output_dir"] = str(Path(out_dir) / "runs" / v.name)
        data["train"]["resume"] = False
        data["train"]["force_resume"] = False
        cfg = config_from_dict(data)
        if cfg.objective.curriculum:
            cur = cfg.curriculum
            if cur.sampler == "uniform" or not cur.difficulty_path:
                what = "C (objective.curriculum)" if v.name.startswith("sead-") else "objective.curriculum=true"
                raise ConfigError(
                    f"variant {v.name}: {what} needs curriculum.sampler=sorted|competence|refreshing and "
                    "curriculum.difficulty_path=PATH in the base config (write the file with `sead difficulty`)")
            if not Path(cur.difficulty_path).is_file():
                raise ConfigError(f"variant {v.name}: curriculum.difficulty_path={cur.difficulty_path!r} does not exist; "
                                  "write it with `sead difficulty --config BASE.yaml` first")
        resolved[v.name] = cfg
    return resolved


# ------------------------------------------------------------------ state of a variant on disk
def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path} is unreadable ({err}); delete its run directory to retrain that variant") from None
    return data if isinstance(data, dict) else {}


def _eval_fingerprint(cfg, model: dict | None = None) -> dict:
    """What an eval file depends on besides the model weights: eval and verifier settings (+ base model)."""
    from sead.config import config_to_dict

    plain = config_to_dict(cfg)  # plain str, lists for tuples: equal to what the eval JSON read back holds
    out = {"eval": plain["eval"], "verifier": plain["verifier"]}
    for key in ("every",):  # the in-training hook's schedule does not change a final evaluation
        out["eval"].pop(key, None)
    if model is not None:
        out["model"] = model
    return out


def _eval_state(json_path: Path, fingerprint: dict) -> str:
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
class _Row:
    name: str
    method: str | None
    description: str
    cfg: Any
    run_dir: Path | None  # None for the base row
    eval_json: Path
    fingerprint: dict

    @property
    def samples(self) -> Path:
        return self.eval_json.with_name(self.eval_json.stem + ".samples.jsonl")

    def trained(self) -> bool:
        return self.run_dir is None or (self.run_dir / "final").is_dir()

    def state(self) -> str:
        if not self.trained():
            return "untrained"
        return _eval_state(self.eval_json, self.fingerprint)


# ------------------------------------------------------------------ processes (accelerate launch)
def _state():
    from accelerate import PartialState

    return PartialState()


def _is_main() -> bool:
    return _state().is_main_process


def _say(text: str) -> None:
    if _is_main():
        print(f"compare: {text}", flush=True)


def _release_memory() -> None:
    """Hand a finished variant's GPU memory back before the next one loads (CPU memory frees itself)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ train and evaluate
def _check_saved_config(row: _Row) -> dict:
    """The saved config of an existing run dir, after checking it trains what ``row.cfg`` trains."""
    from sead.config import config_to_dict
    from sead.run_dir import config_diff

    saved_path = row.run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    saved = _read_yaml(saved_path)
    changed = config_diff(saved, config_to_dict(row.cfg), _TRAINING_FREE | {("eval", k) for k in vars(row.cfg.eval)})
    if changed:
        raise ConfigError(
            f"{row.run_dir} was trained with a different config ({', '.join(changed[:4])}); restore those values, "
            f"use another --out, or delete {row.run_dir} to retrain {row.name}")
    return saved


def train_variant(row: _Row) -> Path:
    """Train (or resume) one variant with its resolved config; returns ``final/``."""
    import dataclasses

    from sead.checkpoint import latest_checkpoint
    from sead.config import config_to_dict
    from sead.run_dir import config_diff
    from sead.trainer import Trainer

    saved = _check_saved_config(row)
    cfg = row.cfg
    if saved:
        # Same training config: resume. The trainer refuses any other change (an edited eval
        # section, a moved OUT), which changes nothing trained, so those are forced through.
        force = bool(config_diff(saved, config_to_dict(cfg), _TRAINER_FREE))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True, force_resume=force))
        if latest_checkpoint(row.run_dir) is None and _is_main():
            for stale in ("metrics.jsonl", "samples.jsonl"):  # an attempt that never checkpointed restarts at 0
                (row.run_dir / stale).unlink(missing_ok=True)
    _state().wait_for_everyone()
    trainer = Trainer(cfg).setup()
    start = trainer.step
    _say(f"{row.name}: training steps {start + 1}..{cfg.train.steps} in {row.run_dir}" if start < cfg.train.steps
         else f"{row.name}: all {cfg.train.steps} steps done, writing final/")
    final = trainer.train()
    trainer.accelerator.free_memory()
    del trainer
    _release_memory()
    return final


def evaluate_row(row: _Row, benchmarks: dict, progress: bool = True) -> dict:
    """Evaluate a row's model (the initial student, or ``final/``) and write its eval JSON + samples.

    The samples file is written first and the JSON last (atomically), so a present JSON means a
    complete evaluation. Runs on the main process only.
    """
    from sead.evaluate import evaluate_model, write_samples
    from sead.models import load_model, load_tokenizer
    from sead.verifier import build_verifier

    cfg, m = row.cfg, row.cfg.model
    if row.run_dir is None:
        model_path, tok_path, gguf = m.student, m.tokenizer or m.student, m.gguf_file
        key = "model.student"
    else:
        model_path = tok_path = str(row.run_dir / "final")
        gguf, key = None, f"{row.name}/final"
    tokenizer = load_tokenizer(tok_path, gguf if tok_path == model_path else None, key=key,
                               trust_remote_code=m.trust_remote_code)
    model = load_model(model_path, m.dtype, gguf, key, m.trust_remote_code).to(_state().device).eval()
    result, records = evaluate_model(model, tokenizer, benchmarks, build_verifier(cfg.verifier),
                                     cfg.eval.rollout_config(), cfg.eval.k, cfg.eval.greedy, model_path,
                                     cfg.eval.seed, progress)
    result["compare"] = row.fingerprint
    row.eval_json.parent.mkdir(parents=True, exist_ok=True)
    write_samples(records, row.samples)
    tmp = row.eval_json.with_name(row.eval_json.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, row.eval_json)
    del model
    _release_memory()
    avg = result["average"].get("pass@1")
    _say(f"{row.name}: evaluated, average pass@1 {100 * avg:.2f}%" if avg is not None else f"{row.name}: evaluated")
    return result
