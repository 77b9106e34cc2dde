"""``sead compare``: train several methods on one budget, evaluate them, tabulate with intervals.

Every variant starts from the same base config (seed, data, curriculum inputs, step budget,
evaluation sets); a variant only changes ``objective.*``::

    sead compare --config base.yaml --methods opd,eopd,sead --ablation tac --out runs/cmp

Layout of ``OUT`` (default ``runs/compare``):

- ``runs/<variant>/``: a normal trainer run directory (``sead report OUT/runs/*`` draws them),
  with ``eval/final.json`` and ``eval/final.samples.jsonl`` for its final model;
- ``base/eval/base.json`` (+ ``.samples.jsonl``): the initial student, evaluated once;
- ``comparison.md`` and ``comparison.json``: per benchmark and average, the score of every
  variant with a 95% percentile-bootstrap interval over problems, and the paired difference to
  the reference (``opd`` when compared, else the first method) with its interval (`sead.stats`).

Variants: a method name gives ``objective.method=<name>``; baselines (every method but ``sead``)
run with ``objective.curriculum=false``, ``sead`` takes the base config's T/A/C switches
(``objective.zones``, ``objective.anneal``, ``objective.curriculum``). ``--ablation tac``
replaces ``sead`` by the 8 combinations ``sead-none``, ``sead-T``, ..., ``sead-T-A-C``.

Resumable: a variant with ``final/`` and an eval JSON made with the current eval settings is
neither retrained nor re-evaluated; an unfinished one resumes from its latest checkpoint with
the same resolved config (``train.resume=true``). A variant whose saved config differs from the
one resolved now (in anything that changes training) is an error, never silently mixed.

Several machines: ``--only VARIANT`` runs one variant (or ``base``), and ``--tabulate-only``
gathers the tables once all are done (docs/compare.md).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sead.errors import ConfigError, DataError

__all__ = [
    "Variant",
    "plan_variants",
    "resolve_variants",
    "problem_scores",
    "tabulate",
    "run_compare",
    "add_compare_arguments",
    "compare_main",
]

ABLATIONS = ("tac",)
BASE = "base"
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
def _config_diff(saved: dict, new: dict, free: set) -> list[str]:
    """Keys whose saved value differs from the new one (keys the saved file lacks count as equal)."""
    return [
        f"{section}.{key}"
        for section, values in new.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if (section, key) not in free and (saved.get(section) or {}).get(key, value) != value
    ]


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path} is unreadable ({err}); delete its run directory to retrain that variant") from None
    return data if isinstance(data, dict) else {}


def _eval_fingerprint(cfg, model: dict | None = None) -> dict:
    """What an eval file depends on besides the model weights: eval and verifier settings (+ base model)."""
    import dataclasses

    out = {"eval": _plain(dataclasses.asdict(cfg.eval)), "verifier": _plain(dataclasses.asdict(cfg.verifier))}
    for key in ("every",):  # the in-training hook's schedule does not change a final evaluation
        out["eval"].pop(key, None)
    if model is not None:
        out["model"] = model
    return out


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


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

    saved_path = row.run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    saved = _read_yaml(saved_path)
    changed = _config_diff(saved, config_to_dict(row.cfg), _TRAINING_FREE | {("eval", k) for k in vars(row.cfg.eval)})
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
    from sead.trainer import Trainer

    saved = _check_saved_config(row)
    cfg = row.cfg
    if saved:
        # Same training config: resume. The trainer refuses any other change (an edited eval
        # section, a moved OUT), which changes nothing trained, so those are forced through.
        force = bool(_config_diff(saved, config_to_dict(cfg), _TRAINER_FREE))
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


# ------------------------------------------------------------------ tables
def problem_scores(samples_path: str | Path, metric: str = "pass@1") -> dict[str, dict[str, float]]:
    """Per-problem scores from an eval samples file: ``{benchmark: {problem id: score}}``.

    ``pass@1``: greedy correctness when the file has greedy records, else the mean over the k
    samples (the eval JSON's pass@1); ``avg@k``: the mean over the k samples.
    """
    if metric not in ("pass@1", "avg@k"):
        raise ConfigError(f"--metric {metric!r} is unknown; use pass@1 or avg@k")
    path = Path(samples_path)
    by_mode: dict[str, dict[str, dict[str, list[float]]]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}); re-evaluate by deleting its eval JSON") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            bench, pid, mode, ok = rec["benchmark"], str(rec["id"]), rec["mode"], rec["correct"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{number} is not an eval sample record (benchmark, id, mode, correct); "
                            "re-evaluate by deleting its eval JSON") from None
        by_mode.setdefault(bench, {}).setdefault(mode, {}).setdefault(pid, []).append(float(bool(ok)))
    out: dict[str, dict[str, float]] = {}
    for bench, modes in by_mode.items():
        mode = "greedy" if metric == "pass@1" and "greedy" in modes else "sample"
        if mode not in modes:
            raise DataError(f"{path}: benchmark {bench!r} has no sampled responses for avg@k; set eval.k >= 1 "
                            "or use --metric pass@1")
        out[bench] = {pid: sum(v) / len(v) for pid, v in modes[mode].items()}
    if not out:
        raise DataError(f"{path} holds no eval records; re-evaluate by deleting its eval JSON")
    return out


def _fmt(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _cell(iv: dict | None, signed: bool = False) -> str:
    if iv is None:
        return "–"
    star = " *" if signed and not iv["low"] <= 0 <= iv["high"] else ""
    return f"{_fmt(iv['mean'], signed)} [{_fmt(iv['low'], signed)}, {_fmt(iv['high'], signed)}]{star}"


def tabulate(rows: Sequence[_Row], out_dir: str | Path, reference: str, metric: str = "pass@1",
             n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Write ``comparison.json`` and ``comparison.md`` for the rows that are done; returns the JSON."""
    import numpy as np

    from sead.stats import compare_scores

    out_dir = Path(out_dir)
    states = {r.name: r.state() for r in rows}
    done = [r for r in rows if states[r.name] == "done"]
    if not done:
        raise DataError(f"no variant of {out_dir} is trained and evaluated yet; run sead compare without "
                        "--tabulate-only (or with --only VARIANT for each variant)")
    scores = {r.name: problem_scores(r.samples, metric) for r in done}
    first = done[0]
    benches = list(scores[first.name])
    ids = {b: list(scores[first.name][b]) for b in benches}
    for r in done[1:]:
        for b in benches:
            if b not in scores[r.name] or set(scores[r.name][b]) != set(ids[b]):
                raise DataError(f"{r.name} and {first.name} were evaluated on different problems of {b!r}; delete "
                                f"{r.eval_json} and run sead compare again to re-evaluate it")
        if set(scores[r.name]) - set(benches):
            extra = sorted(set(scores[r.name]) - set(benches))[0]
            raise DataError(f"{r.name} has benchmark {extra!r} that {first.name} lacks; delete {r.eval_json} to "
                            "re-evaluate it")
    arrays = {b: np.array([[scores[r.name][b][i] for i in ids[b]] for r in done]) for b in benches}
    names = [r.name for r in done]
    ref_index = names.index(reference) if reference in names else None
    stats = compare_scores(arrays, ref_index, n_resamples, confidence, seed)

    table_rows = []
    for r in rows:
        entry: dict[str, Any] = {"variant": r.name, "method": r.method, "description": r.description,
                                 "status": states[r.name],
                                 "run_dir": str(r.run_dir) if r.run_dir is not None else None,
                                 "eval": str(r.eval_json), "scores": None, "diff": None}
        if r.name in names:
            i = names.index(r.name)
            entry["scores"] = {b: stats[b]["score"][i].to_dict() for b in benches + ["average"]}
            if ref_index is not None and i != ref_index:
                entry["diff"] = {b: stats[b]["diff"][i].to_dict() for b in benches + ["average"]}
        table_rows.append(entry)
    result = {
        "metric": metric, "confidence": confidence, "resamples": n_resamples, "seed": seed,
        "reference": reference if ref_index is not None else None,
        "benchmarks": {b: {"n": len(ids[b])} for b in benches},
        "eval": {"k": first.cfg.eval.k, "greedy": first.cfg.eval.greedy},
        "train": {"steps": first.cfg.train.steps, "seed": first.cfg.train.seed,
                  "batch_size": first.cfg.train.batch_size},
        "rows": table_rows,
    }
    _write_atomic(out_dir / "comparison.json", json.dumps(result, indent=2) + "\n")
    _write_atomic(out_dir / "comparison.md", comparison_markdown(result))
    return result


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def comparison_markdown(result: dict) -> str:
    """``comparison.md`` from the ``comparison.json`` dict."""
    benches = list(result["benchmarks"])
    cols = [f"{b} (n={result['benchmarks'][b]['n']})" for b in benches] + ["average"]
    level = f"{100 * result['confidence']:g}%"
    what = ("greedy pass@1" if result["eval"]["greedy"] else f"mean over k={result['eval']['k']} samples") \
        if result["metric"] == "pass@1" else f"avg@k (mean over k={result['eval']['k']} samples)"
    tr = result["train"]
    lines = [
        "# Comparison",
        "",
        f"{what}, in %. Brackets: {level} percentile-bootstrap interval over problems ({result['resamples']} "
        f"resamples, seed {result['seed']}); average = mean of the benchmark scores, benchmarks resampled "
        f"independently. Every variant: {tr['steps']} steps of {tr['batch_size']} prompts, train.seed={tr['seed']}.",
        "",
        "## Scores",
        "",
        "| variant | what | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for row in result["rows"]:
        what_row = row["description"]
        if row["scores"] is None:
            lines.append(f"| {row['variant']} | {what_row} | " + " | ".join([row["status"]] * len(cols)) + " |")
        else:
            lines.append(f"| {row['variant']} | {what_row} | "
                         + " | ".join(_cell(row["scores"][b]) for b in benches + ["average"]) + " |")
    ref = result["reference"]
    lines += [""]
    if ref is None:
        lines += ["No paired differences: the reference variant is not trained and evaluated yet.", ""]
    else:
        lines += [
            f"## Paired difference to {ref} (percentage points)",
            "",
            f"Each variant minus {ref} on the same resampled problems. `*`: the interval excludes 0.",
            "",
            "| variant | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for row in result["rows"]:
            if row["diff"] is not None:
                lines.append(f"| {row['variant']} | " + " | ".join(_cell(row["diff"][b], True)
                                                                   for b in benches + ["average"]) + " |")
        lines.append("")
    missing = [r["variant"] for r in result["rows"] if r["scores"] is None]
    if missing:
        lines += [f"Not in the tables yet ({', '.join(missing)}): run `sead compare` again to finish them.", ""]
    lines += [
        "The intervals cover only the sampling of evaluation problems: each variant was trained once, so "
        "run-to-run training variance is not included. With few problems, read overlapping intervals as "
        "no measured difference.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ entry points
def _split(values: Sequence[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def run_compare(
    config: str | None,
    overrides: Sequence[str] = (),
    methods: Sequence[str] = ("opd", "sead"),
    ablation: str | None = None,
    out: str | Path = "runs/compare",
    only: Sequence[str] = (),
    tabulate_only: bool = False,
    reference: str | None = None,
    metric: str = "pass@1",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict | None:
    """Train, evaluate and tabulate (see the module doc); returns the comparison JSON, or None
    when ``only`` restricted the run to some variants (tables come with ``tabulate_only``)."""
    from sead.config import load_config
    from sead.evaluate import load_benchmarks

    if only and tabulate_only:
        raise ConfigError("--only and --tabulate-only exclude each other; run --only per variant, then --tabulate-only")
    if metric not in ("pass@1", "avg@k"):
        raise ConfigError(f"--metric {metric!r} is unknown; use pass@1 or avg@k")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise ConfigError(f"--resamples must be an integer >= 100, got {n_resamples!r}; the default is 2000")
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {confidence!r}; e.g. 0.95")
    base_cfg = load_config(config, list(overrides))
    variants = plan_variants(list(methods), ablation)
    out = Path(out)
    cfgs = resolve_variants(base_cfg, variants, out)
    names = [BASE] + [v.name for v in variants]
    if reference is None:
        reference = "opd" if "opd" in names else variants[0].name
    elif reference not in names:
        raise ConfigError(f"--reference {reference!r} is not a compared variant; use one of {', '.join(names)}")
    for name in only:
        if name not in names:
            raise ConfigError(f"--only {name!r} is not a variant of this comparison; use one of {', '.join(names)}")

    student = {"student": base_cfg.model.student, "tokenizer": base_cfg.model.tokenizer,
               "gguf_file": base_cfg.model.gguf_file, "dtype": base_cfg.model.dtype}
    rows = [_Row(BASE, None, "initial student", base_cfg, None, out / BASE / "eval" / f"{BASE}.json",
                 _eval_fingerprint(base_cfg, student))]
    for v in variants:
        cfg = cfgs[v.name]
        run_dir = Path(cfg.train.output_dir)
        rows.append(_Row(v.name, v.method, _describe(cfg), cfg, run_dir, run_dir / "eval" / "final.json",
                         _eval_fingerprint(cfg)))
    selected = [r for r in rows if not only or r.name in only]
    for r in selected:  # a changed config fails here, before any hour of training is spent or tabulated
        if r.run_dir is not None:
            _check_saved_config(r)

    if not tabulate_only:
        from sead.progress import quiet_libraries

        quiet_libraries()
        benchmarks = None
        for i, r in enumerate(selected, 1):
            state = r.state()
            tag = f"[{i}/{len(selected)}] {r.name}"
            if state == "done":
                _say(f"{tag}: trained and evaluated already, skipped")
                continue
            if not r.trained():
                _say(f"{tag}: {r.description}")
                train_variant(r)
            if _is_main():
                benchmarks = benchmarks if benchmarks is not None else load_benchmarks(base_cfg.eval)
                if state == "stale":
                    _say(f"{tag}: eval settings changed since its evaluation; evaluating again")
                evaluate_row(r, benchmarks, progress=base_cfg.logging.progress)
            _state().wait_for_everyone()
        if only:
            _say(f"finished {', '.join(r.name for r in selected)}; when every variant is done, gather the tables "
                 "with the same command and --tabulate-only (without --only)")
            return None
    result = None
    if _is_main():
        result = tabulate(rows, out, reference, metric, n_resamples, confidence, seed)
        print((out / "comparison.md").read_text(encoding="utf-8"))
        print(f"compare: tables in {out / 'comparison.md'} and {out / 'comparison.json'}; runs in {out / 'runs'}")
    _state().wait_for_everyone()
    return result



def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="base YAML config: seed, data, budget, eval.data shared by every variant")
    parser.add_argument("--methods", default="opd,sead",
                        help="comma-separated methods, e.g. opd,eopd,sead,grpo,opsd (default opd,sead)")
    parser.add_argument("--ablation", choices=ABLATIONS, default=None,
                        help="tac: the 8 combinations of sead's T (zones), A (anneal), C (curriculum)")
    parser.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only these variants (comma-separated or repeated; 'base' = the initial student)")
    parser.add_argument("--tabulate-only", action="store_true",
                        help="train and evaluate nothing; write the tables from what OUT holds")
    parser.add_argument("--reference", default=None,
                        help="variant the paired differences are taken to (default opd, else the first method)")
    parser.add_argument("--metric", choices=("pass@1", "avg@k"), default="pass@1",
                        help="per-problem score: pass@1 (greedy when eval.greedy, else mean of k samples) or avg@k")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--stats-seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="applied to the base config, e.g. train.steps=200 eval.data=[math=math.jsonl]")
    return parser


def compare_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """CLI entry: ``args`` is a Namespace from :func:`add_compare_arguments` or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = add_compare_arguments(argparse.ArgumentParser(prog="sead compare"))
        args = parser.parse_args(list(args) if args is not None else None)
    run_compare(
        args.config, args.overrides, _split([args.methods]), args.ablation, args.out, _split(args.only),
        args.tabulate_only, args.reference, args.metric, args.resamples, args.confidence, args.stats_seed,
    )
    return 0
