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
import statistics
import time
from pathlib import Path

import torch

from sead.compare_tables import problem_scores
from sead.config import config_from_dict
from sead.config_files import find_config, merge_configs, read_config_file
from sead.demo_summary import print_table, summarise
from sead.difficulty import difficulty_from_config
from sead.errors import SeadError
from sead.evaluate import eval_main
from sead.report import build_report
from sead.run_lock import claim_run_dir
from sead.smollm2 import prepare_smollm2, smollm2_data, smollm2_prompt
from sead.trainer import Trainer

__all__ = ["add_demo_arguments", "demo_main", "demo_config", "evaluate_heldout", "run_demo", "PRESETS"]

PRESETS = {
    # preset: (steps, training prompts, difficulty rollouts, seeds) defaults
    "tiny": (40, 1024, 4, 3),
    "smollm2": (3, 32, 2, 1),
}


def _preset_overlay(preset: str, recipe: dict) -> dict:
    """What a preset changes in a shipped recipe: nothing but the sampled evaluation for ``tiny``
    (the recipes' own models and task); models, data, decoding and the optimiser's scale for ``smollm2``."""
    if preset != "smollm2":
        return {"eval": {"k": 4, "every": 0}}  # the demo evaluates before and after itself, with avg@4 too
    teacher, student = prepare_smollm2()
    train, heldout = smollm2_data()
    template, decoding = smollm2_prompt(), {"max_new_tokens": 32, "chat_template": "auto"}
    objective = recipe.get("objective", {})
    # GRPO samples group_size rollouts per prompt: fewer prompts, the same 4 rollouts per step.
    group = objective.get("group_size", 1) if objective.get("method") == "grpo" else 1
    return {
        "model": {"student": str(student), "teacher": str(teacher)},
        "data": {"path": str(train), "template": template},
        "verifier": {"kind": "math"},
        "rollout": {"batch_size": 8, **decoding},
        "objective": {"tau": 1.0},  # eopd's gate for this teacher's entropy scale
        "optim": {"lr": 1e-5, "schedule": "constant", "warmup_steps": 0},
        "train": {"batch_size": 4 // group, "micro_batch_size": 4},
        "eval": {
            "data": [f"heldout={heldout}"],
            "template": template,
            "max_prompts": 16,
            "batch_size": 16,
            "k": 0,
            "every": 0,
            **decoding,
        },
    }


def demo_config(
    out: Path,
    method: str,
    steps: int,
    seed: int,
    max_prompts: int,
    difficulty_path: Path,
    preset: str = "tiny",
    lr: float | None = None,
) -> dict:
    """The config dict of one demo run: the shipped recipe of ``method`` (``sead config show
    --config METHOD``), the preset's changes over it, then this run's budget, seed and folder."""
    recipe = read_config_file(find_config(method))
    run = {
        "name": f"demo-{preset}-{method}",
        # One prompt pool for every seed (the difficulty file covers it); the seed moves order and rollouts.
        "data": {"max_prompts": max_prompts},
        "curriculum": {"difficulty_path": str(difficulty_path), "seed": seed},
        "optim": {} if lr is None else {"lr": lr},
        "train": {
            "steps": steps,
            "seed": seed,
            "save_every": steps,
            "keep_checkpoints": 1,
            "output_dir": str(out / "runs" / f"{method}-s{seed}"),
        },
        "logging": {"samples_every": max(1, steps // 5)},
    }
    return merge_configs(merge_configs(recipe, _preset_overlay(preset, recipe)), run)


def evaluate_heldout(model_path: str, cfg, out_dir: Path, tag: str) -> dict:
    """Held-out greedy accuracy, sampled avg@k (None without samples), problem count, per-problem scores."""
    result = eval_main(
        model_path,
        out_dir=str(out_dir),
        cfg=cfg.eval,
        verifier_cfg=cfg.verifier,
        tag=tag,
        progress=False,
        show_table=False,
    )
    scores = result["benchmarks"]["heldout"]
    samples = Path(out_dir) / "eval" / f"{tag}.samples.jsonl"
    return {
        "greedy": float(scores["pass@1"]),
        "sampled": scores.get("avg@k"),
        "n": int(scores["n"]),
        "problems": problem_scores(samples)["heldout"],
    }


def _flips(old: dict[str, float], new: dict[str, float]) -> dict:
    """Problems the greedy answer got right that it had wrong before (fixed), and the reverse (broken)."""
    return {
        "fixed": sum(1 for i, v in new.items() if v > old.get(i, 0.0)),
        "broken": sum(1 for i, v in new.items() if v < old.get(i, 0.0)),
    }


def _mean(values: list) -> float | None:
    return None if not values or None in values else statistics.fmean(values)


def run_demo(
    out: Path,
    methods: list[str],
    steps: int,
    seeds: list[int],
    max_prompts: int,
    k: int,
    preset: str = "tiny",
    lr: float | None = None,
) -> dict:
    """Run the whole demo into ``out``: every method once per seed, same budget; returns ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if preset == "tiny":
        # Kernels this small are dominated by thread hand-off: one thread is several times faster.
        torch.set_num_threads(1)
    difficulty_path = out / "difficulty.jsonl"
    base = config_from_dict(demo_config(out, "sead", steps, seeds[0], max_prompts, difficulty_path, preset, lr))
    print(f"[1/4] prompt difficulty: {k} student rollouts for each of {max_prompts} training prompts")
    difficulty_from_config(base, k=k, out_path=str(difficulty_path), progress=False)
    print("[2/4] evaluating the student and the teacher before training (greedy, held-out set)")
    before = evaluate_heldout(base.model.student, base, out, "student-before")
    teacher = evaluate_heldout(base.model.teacher, base, out, "teacher")
    problems = {"before": before["problems"], "teacher": teacher["problems"]}
    results = {
        "preset": preset,
        "seeds": list(seeds),
        "steps": steps,
        "lr": base.optim.lr,
        "batch_size": base.train.batch_size,
        "n_eval": before["n"],
        "before": before["greedy"],
        "teacher": teacher["greedy"],
        "after": {},
        "per_seed": {},
        "eval_samples": base.eval.k,
        "sampled": {"before": before["sampled"], "teacher": teacher["sampled"]},
        "sampled_per_seed": {},
        "flips": {},
        "time_s": {},
        "runs": {},
    }
    total = len(methods) * len(seeds)
    for i, (method, seed) in enumerate(((m, s) for m in methods for s in seeds), 1):
        print(f"[3/4] training {method}, seed {seed} ({i}/{total}): {steps} steps from the same student")
        cfg = config_from_dict(demo_config(out, method, steps, seed, max_prompts, difficulty_path, preset, lr))
        run_dir = Path(cfg.train.output_dir)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a demo always starts clean
        t0 = time.perf_counter()
        final = Trainer(cfg).setup().train()
        results["time_s"].setdefault(method, []).append(time.perf_counter() - t0)
        (run_dir / "eval").mkdir(exist_ok=True)
        shutil.copy(out / "eval" / "student-before.json", run_dir / "eval" / "before.json")
        after = evaluate_heldout(str(final), cfg, run_dir, "after")
        results["per_seed"].setdefault(method, []).append(after["greedy"])
        results["sampled_per_seed"].setdefault(method, []).append(after["sampled"])
        results["flips"].setdefault(method, []).append(_flips(before["problems"], after["problems"]))
        results["runs"].setdefault(method, []).append(str(run_dir))
        problems.setdefault(method, []).append(after["problems"])
    for method in methods:
        results["after"][method] = statistics.fmean(results["per_seed"][method])
        results["sampled"][method] = _mean(results["sampled_per_seed"][method])
    results["summary"] = summarise(problems, methods)
    print("[4/4] building the report")
    report = build_report([Path(r) for m in methods for r in results["runs"][m]], out / "report", demo=results)
    results["report"] = str(report)
    results["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--preset",
        default="tiny",
        choices=list(PRESETS),
        help="tiny: shipped tiny models (default); smollm2: real SmolLM2-135M teacher",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/demo or runs/demo-smollm2)")
    parser.add_argument(
        "--methods", default=None, help="comma-separated methods (default opd,eopd,sead; smollm2: opd,sead)"
    )
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (tiny 40, smollm2 3)")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds, one run per method and seed (tiny 0,1,2; smollm2 0)",
    )
    parser.add_argument("--seed", type=int, default=None, help="a single training seed (same as --seeds N)")
    parser.add_argument("--prompts", type=int, default=None, help="training prompts used (tiny 1024, smollm2 32)")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate of every method (tiny: the recipes' 1e-4)"
    )
    parser.add_argument("--k", type=int, default=None, help="rollouts per prompt for difficulty (tiny 4, smollm2 2)")
    return parser


def _seeds(args: argparse.Namespace, default: int) -> list[int]:
    if args.seed is not None and args.seeds is not None:
        raise SeadError("give --seed or --seeds, not both")
    if args.seed is not None:
        return [args.seed]
    if args.seeds is None:
        return list(range(default))
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SeadError(
            f"--seeds {args.seeds!r} is not a comma-separated list of integers; e.g. --seeds 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SeadError(f"--seeds {args.seeds!r} must name at least one seed, each once; e.g. --seeds 0,1,2")
    return seeds


def demo_main(args: argparse.Namespace) -> int:
    steps, prompts, k, n_seeds = PRESETS[args.preset]
    steps, prompts, k = args.steps or steps, args.prompts or prompts, args.k or k
    seeds = _seeds(args, n_seeds)
    default_methods = "opd,eopd,sead" if args.preset == "tiny" else "opd,sead"
    methods = [m.strip() for m in (args.methods or default_methods).split(",") if m.strip()]
    if not methods:
        raise SeadError("--methods is empty; e.g. --methods opd,sead")
    batch = 32 if args.preset == "tiny" else 4
    if steps < 1 or prompts < batch:
        raise SeadError(f"--steps must be >= 1 and --prompts >= {batch} (one batch)")
    out = Path(args.out or ("runs/demo" if args.preset == "tiny" else f"runs/demo-{args.preset}"))
    # One demo per folder: a second one would delete the first one's runs under it (each starts clean).
    with claim_run_dir(out, key="--out") as claim:
        claim.started()
        results = run_demo(out, methods, steps, seeds, prompts, k, args.preset, args.lr)
    print_table(results, methods)
    return 0
