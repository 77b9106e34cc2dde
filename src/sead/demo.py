"""`sead demo`: a real on-policy distillation on the embedded default, end to end, on a CPU.

Pipeline (every piece is the library's own, nothing is mocked):
difficulty of the training prompts from K student rollouts -> evaluate the student (before) ->
train the same student with each method for the same steps and seed -> evaluate each (after)
-> one HTML report over all runs -> a table on the console, stated honestly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from sead.errors import SeadError

__all__ = ["add_demo_arguments", "demo_main", "demo_config", "run_demo"]

PRESETS = {
    # preset: (steps, training prompts, difficulty rollouts) defaults
    "tiny": (40, 1024, 4),
    "smollm2": (3, 32, 2),
}


def _preset_settings(preset: str) -> dict:
    """What differs between presets: models, data, decoding and the optimiser's scale."""
    if preset == "smollm2":
        from sead.smollm2 import prepare_smollm2, smollm2_data, smollm2_prompt

        teacher, student = prepare_smollm2()
        train, heldout = smollm2_data()
        return dict(student=student, teacher=teacher, train=train, heldout=heldout, template=smollm2_prompt(),
                    verifier="math", max_new_tokens=32, gen_batch=8, chat_template="auto", tau=1.0,
                    optim={"lr": 1e-5, "schedule": "constant"}, batch_size=4, eval_prompts=16, eval_batch=16,
                    eval_samples=0)
    from sead.toy import MAX_NEW_TOKENS, demo_asset_dir, demo_data_paths

    root = demo_asset_dir()
    train, heldout = demo_data_paths()
    return dict(student=root / "student", teacher=root / "teacher", train=train, heldout=heldout,
                template="{problem}", verifier="sead.toy:verify", max_new_tokens=MAX_NEW_TOKENS, gen_batch=64,
                chat_template="off", tau=0.5, optim={"lr": 1e-4, "warmup_steps": 5, "schedule": "cosine"},
                batch_size=32, eval_prompts=None, eval_batch=100, eval_samples=4)


def demo_config(out: Path, method: str, steps: int, seed: int, max_prompts: int, difficulty_path: Path,
                preset: str = "tiny", lr: float | None = None) -> dict:
    """The resolved config dict of one demo run (also a template for users' own YAML)."""
    p = _preset_settings(preset)
    if lr is not None:
        p["optim"] = {**p["optim"], "lr": lr}
    fields = {"prompt_field": "question", "answer_field": "answer", "id_field": "id", "template": p["template"]}
    sead_on = method == "sead"
    decoding = {"max_new_tokens": p["max_new_tokens"], "chat_template": p["chat_template"]}
    return {
        "name": f"demo-{preset}-{method}",
        "model": {"student": str(p["student"]), "teacher": str(p["teacher"])},
        "data": {"path": str(p["train"]), "max_prompts": max_prompts, "shuffle_seed": seed, **fields},
        "verifier": {"kind": p["verifier"]},
        "rollout": {"temperature": 0.7, "batch_size": p["gen_batch"], **decoding},
        "objective": {"method": method, "zones": sead_on, "anneal": sead_on, "curriculum": sead_on, "tau": p["tau"]},
        "curriculum": {"sampler": "competence" if sead_on else "uniform", "difficulty_path": str(difficulty_path),
                       "seed": seed},
        "optim": {"max_grad_norm": 1.0, **p["optim"]},
        "train": {"steps": steps, "batch_size": p["batch_size"], "micro_batch_size": p["batch_size"], "seed": seed,
                  "save_every": steps, "keep_checkpoints": 1, "output_dir": str(out / "runs" / method)},
        "logging": {"samples_every": max(1, steps // 5), "num_samples": 4},
        "eval": {"data": [f"heldout={p['heldout']}"], "k": p["eval_samples"], "greedy": True, "temperature": 0.7,
                 "max_prompts": p["eval_prompts"], "batch_size": p["eval_batch"], "split": "train", **decoding, **fields},
    }


def _evaluate(model_path: str, cfg, out_dir: Path, tag: str) -> dict:
    """Held-out greedy accuracy, sampled avg@k (None without samples), problem count, samples file."""
    from sead.evaluate import eval_main

    result = eval_main(model_path, out_dir=str(out_dir), cfg=cfg.eval, verifier_cfg=cfg.verifier, tag=tag,
                       progress=False, show_table=False)
    scores = result["benchmarks"]["heldout"]
    return {"greedy": float(scores["pass@1"]), "sampled": scores.get("avg@k"), "n": int(scores["n"]),
            "samples": Path(out_dir) / "eval" / f"{tag}.samples.jsonl"}


def _flips(before_samples: Path, after_samples: Path) -> dict:
    """Problems the greedy answer got right that it had wrong before (fixed), and the reverse (broken)."""
    from sead.compare_tables import problem_scores

    old, new = problem_scores(before_samples)["heldout"], problem_scores(after_samples)["heldout"]
    return {"fixed": sum(1 for i, v in new.items() if v > old.get(i, 0.0)),
            "broken": sum(1 for i, v in new.items() if v < old.get(i, 0.0))}


def run_demo(out: Path, methods: list[str], steps: int, seed: int, max_prompts: int, k: int,
             preset: str = "tiny", lr: float | None = None) -> dict:
    """Run the whole demo into ``out``; returns the results table as a dict."""
    from sead.config import config_from_dict
    from sead.difficulty import difficulty_from_config
    from sead.report import build_report
    from sead.trainer import Trainer

    import torch

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if preset == "tiny":
        # Kernels this small are dominated by thread hand-off: one thread is several times faster.
        torch.set_num_threads(1)
    difficulty_path = out / "difficulty.jsonl"
    base = config_from_dict(demo_config(out, "sead", steps, seed, max_prompts, difficulty_path, preset, lr))
    print(f"[1/4] prompt difficulty: {k} student rollouts for each of {max_prompts} training prompts")
    difficulty_from_config(base, k=k, out_path=str(difficulty_path), progress=False)
    print("[2/4] evaluating the student and the teacher before training (greedy, held-out set)")
    before = _evaluate(base.model.student, base, out, "student-before")
    teacher = _evaluate(base.model.teacher, base, out, "teacher")
    results = {"preset": preset, "seed": seed, "steps": steps, "n_eval": before["n"], "before": before["greedy"],
               "teacher": teacher["greedy"], "after": {}, "eval_samples": base.eval.k,
               "sampled": {"before": before["sampled"], "teacher": teacher["sampled"]}, "flips": {}, "time_s": {}}
    for i, method in enumerate(methods, 1):
        print(f"[3/4] training {method} ({i}/{len(methods)}): {steps} steps from the same student, seed {seed}")
        cfg = config_from_dict(demo_config(out, method, steps, seed, max_prompts, difficulty_path, preset, lr))
        run_dir = Path(cfg.train.output_dir)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a demo always starts clean
        t0 = time.perf_counter()
        final = Trainer(cfg).setup().train()
        results["time_s"][method] = time.perf_counter() - t0
        (run_dir / "eval").mkdir(exist_ok=True)
        shutil.copy(out / "eval" / "student-before.json", run_dir / "eval" / "before.json")
        after = _evaluate(str(final), cfg, run_dir, "after")
        results["after"][method], results["sampled"][method] = after["greedy"], after["sampled"]
        results["flips"][method] = _flips(before["samples"], after["samples"])
    print("[4/4] building the report")
    report = build_report([out / "runs" / m for m in methods], out / "report")
    results["report"] = str(report)
    results["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def _pct(x: float | None, signed: bool = False) -> str:
    """``32.5%``; signed: a difference in percentage points, ``-3.0 pt``."""
    return "-" if x is None else (f"{100 * x:+.1f} pt" if signed else f"{x:.1%}")


def _print_table(results: dict, methods: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    k, sampled, before = results.get("eval_samples", 0), results.get("sampled", {}), results["before"]
    table = Table(title=f"held-out accuracy, {results['n_eval']} problems (seed {results['seed']}, "
                        f"{results['steps']} steps each)",
                  caption=f"greedy: pass@1 of greedy answers; avg@{k}: mean over {k} samples at temperature 0.7"
                  if k else None)  # fmt: skip
    for name in ("model", "greedy", "change", "fixed/broken", *([f"avg@{k}", "change"] if k else [])):
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)

    avg_before = sampled.get("before")

    def row(name, greedy, avg, flips=None, trained=False):
        """Rows of trained students also show the change against the student before training."""
        cells = [name, _pct(greedy), _pct(greedy - before, True) if trained else "",
                 f"{flips['fixed']} / {flips['broken']}" if flips else ""]  # fmt: skip
        if k:
            cells += [_pct(avg), _pct(avg - avg_before, True) if trained and None not in (avg, avg_before) else ""]
        table.add_row(*cells)

    row("teacher", results["teacher"], sampled.get("teacher"))
    row("student before", before, avg_before)
    for m in methods:
        row(f"after {m}", results["after"][m], sampled.get(m), results.get("flips", {}).get(m), trained=True)
    console = Console()
    console.print(table)
    after = results["after"]
    if "sead" in after and "opd" in after:
        diff = after["sead"] - after["opd"]
        if diff > 0:
            verdict = f"SEAD beat OPD by {100 * diff:.1f} points of greedy accuracy on this run"
        elif diff < 0:
            verdict = f"SEAD did NOT beat OPD here: it trails by {-100 * diff:.1f} points of greedy accuracy"
        else:
            verdict = "SEAD and OPD tied on greedy accuracy on this run"
        if k and sampled.get("sead") is not None and sampled.get("opd") is not None:
            verdict += f" (avg@{k}: SEAD {sampled['sead']:.1%}, OPD {sampled['opd']:.1%})"
        console.print(f"{verdict}; one seed, {len(methods)} runs of {results['steps']} steps.")
    flips = results.get("flips", {})
    churn = [f["fixed"] + f["broken"] for f in flips.values()]
    if churn and max(churn) > 0:
        console.print(f"Noise: each run changed the greedy answer on {min(churn)}-{max(churn)} of the "
                      f"{results['n_eval']} problems, in both directions (fixed / broken), so greedy differences "
                      "of a few points are churn, not signal.")  # fmt: skip
    worse = [m for m in methods if after[m] < before]
    if worse:
        console.print(f"Ended below the starting student (greedy): {', '.join(worse)}. On this tiny task and budget "
                      "on-policy distillation does not lift greedy accuracy; the report shows the KL, entropy and "
                      "zone curves, src/sead/assets/demo/README.md how this student reacts to training.")  # fmt: skip
    console.print(f"report: {results['report']}   total time: {results['total_s']:.0f} s")


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS),
                        help="tiny: shipped tiny models (default); smollm2: real SmolLM2-135M teacher")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo or runs/demo-smollm2)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default opd,eopd,sead; smollm2: opd,sead)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per method (tiny 40, smollm2 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=None, help="training prompts used (tiny 1024, smollm2 32)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (tiny 1e-4, smollm2 1e-5)")
    parser.add_argument("--k", type=int, default=None, help="rollouts per prompt for difficulty (tiny 4, smollm2 2)")
    return parser


def demo_main(args: argparse.Namespace) -> int:
    steps, prompts, k = PRESETS[args.preset]
    steps, prompts, k = args.steps or steps, args.prompts or prompts, args.k or k
    default_methods = "opd,eopd,sead" if args.preset == "tiny" else "opd,sead"
    methods = [m.strip() for m in (args.methods or default_methods).split(",") if m.strip()]
    if not methods:
        raise SeadError("--methods is empty; e.g. --methods opd,sead")
    batch = 32 if args.preset == "tiny" else 4
    if steps < 1 or prompts < batch:
        raise SeadError(f"--steps must be >= 1 and --prompts >= {batch} (one batch)")
    out = Path(args.out or ("runs/demo" if args.preset == "tiny" else f"runs/demo-{args.preset}"))
    results = run_demo(out, methods, steps, args.seed, prompts, k, args.preset, args.lr)
    _print_table(results, methods)
    return 0
