"""The variants of ``sead compare``: which runs a ``--methods``/``--ablation`` pair asks for, and
the config of each (the base config with some ``objective.*`` settings changed).

`plan_variants` lists them in table order, `resolve_variants` turns each into a validated
RunConfig (seed, data, budget and evaluation sets shared; with ``--seeds``, once per training
seed), `run_name` names a variant's run folder, and `describe_variant` says in a few words what
a resolved variant trains.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sead.compare_options import ABLATIONS
from sead.config import METHODS, RunConfig, config_from_dict, config_to_dict
from sead.errors import ConfigError

__all__ = ["Variant", "plan_variants", "resolve_variants", "run_name", "describe_variant"]

# The paper's order of the T/A/C cells: none, T, A, C, T-A, T-C, A-C, T-A-C.
_TAC_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))


@dataclass
class Variant:
    """One row of the comparison: a name and the ``objective`` settings it puts on the base config."""

    name: str
    method: str
    objective: dict[str, Any] = field(default_factory=dict)  # objective.KEY -> value


def describe_variant(cfg: RunConfig) -> str:
    """The table's "what" column: the method, and for sead its T/A/C switches."""
    o = cfg.objective
    if o.method != "sead":
        return o.method + (" + curriculum" if o.curriculum else "")
    return "sead: " + ", ".join(
        f"{x} {'on' if on else 'off'}" for x, on in (("T", o.zones), ("A", o.anneal), ("C", o.curriculum))
    )


def _ablation_cell(zones: bool, anneal: bool, curriculum: bool) -> Variant:
    parts = [x for x, on in (("T", zones), ("A", anneal), ("C", curriculum)) if on]
    return Variant(
        name="sead-" + ("-".join(parts) if parts else "none"),
        method="sead",
        objective={"method": "sead", "zones": zones, "anneal": anneal, "curriculum": curriculum},
    )


def plan_variants(methods: Sequence[str], ablation: str | None = None) -> list[Variant]:
    """The variants of ``--methods`` (and ``--ablation``), in table order.

    With ``ablation="tac"`` the 8 T/A/C combinations of ``sead`` (paper order: none, T, A, C,
    T-A, T-C, A-C, T-A-C) take the place of ``sead`` in ``methods``, or come last without it.
    """
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
    cells = [_ablation_cell(*map(bool, tac)) for tac in _TAC_ORDER] if ablation == "tac" else []
    variants: list[Variant] = []
    for m in methods:
        if m == "sead" and cells:
            variants += cells
        elif m == "sead":
            variants.append(Variant(name="sead", method="sead", objective={"method": "sead"}))
        else:  # the paper's baselines train without a curriculum
            variants.append(Variant(name=m, method=m, objective={"method": m, "curriculum": False}))
    if cells and "sead" not in methods:
        variants += cells
    return variants


def run_name(variant: str, seed: int | None = None) -> str:
    """The folder of a variant's run under ``OUT/runs``: ``<variant>``, or ``<variant>-s<seed>``
    with ``--seeds`` (also for a single seed, so ``--seeds 1`` makes seed 1 of ``--seeds 0,1,2``)."""
    return variant if seed is None else f"{variant}-s{seed}"


def resolve_variants(
    base_cfg: RunConfig, variants: Sequence[Variant], out_dir: str | Path, seed: int | None = None
) -> dict[str, RunConfig]:
    """One validated RunConfig per variant: the base config plus the variant's objective settings,
    ``name`` and ``train.output_dir=OUT/runs/<name>`` from `run_name`. Checks what would only fail
    later (curriculum inputs, evaluation sets) before anything is trained.

    ``seed`` (one of ``--seeds``) sets ``train.seed`` and ``curriculum.seed``: the rollouts and the
    order of the prompts both move with it, as in ``sead demo``, so the seeds sample the training
    noise a user means by it; everything else stays the base config's."""
    if not base_cfg.eval.data:
        raise ConfigError(
            "sead compare needs evaluation sets; set eval.data=[name=path,...] in the base config or as an override"
        )
    base = config_to_dict(base_cfg)
    resolved = {}
    for v in variants:
        data = copy.deepcopy(base)
        data["name"] = run_name(v.name, seed)  # trackers and `sead report` tell the seeds apart
        data["objective"].update(v.objective)
        data["train"]["output_dir"] = str(Path(out_dir) / "runs" / run_name(v.name, seed))
        if seed is not None:
            data["train"]["seed"] = data["curriculum"]["seed"] = seed
        data["train"]["resume"] = False
        data["train"]["force_resume"] = False
        cfg = config_from_dict(data)
        if cfg.objective.curriculum:
            _check_curriculum_inputs(v, cfg)
        resolved[v.name] = cfg
    return resolved


def _check_curriculum_inputs(variant: Variant, cfg: RunConfig) -> None:
    cur = cfg.curriculum
    if cur.sampler == "uniform" or not cur.difficulty_path:
        what = "C (objective.curriculum)" if variant.name.startswith("sead-") else "objective.curriculum=true"
        raise ConfigError(
            f"variant {variant.name}: {what} needs curriculum.sampler=sorted|competence|refreshing and "
            "curriculum.difficulty_path=PATH in the base config (write the file with `sead difficulty`)"
        )
    if not Path(cur.difficulty_path).is_file():
        raise ConfigError(
            f"variant {variant.name}: curriculum.difficulty_path={cur.difficulty_path!r} does not exist; "
            "write it with `sead difficulty --config BASE.yaml` first"
        )
