"""Run each shipped recipe for its default steps and compare where it ends with the starting student.

    python tools/run_recipes.py                                   # every recipe in src/sead/configs
    python tools/run_recipes.py --recipes opd,opsd --json benchmarks/results/recipes.json
    python tools/run_recipes.py --recipes opsd train.steps=10 eval.max_prompts=50    # a quick look

The check behind "every shipped config works on the shipped models": each recipe trains exactly as
``sead train --config NAME`` would (its own steps, lr and seed; only ``train.output_dir`` moves
under ``--out``; ``key=value`` overrides apply to every recipe). Its final model is evaluated
greedily on the recipe's ``heldout`` set with its own ``eval`` settings (``sead.demo.evaluate_heldout``),
beside the starting student and the teacher on the same problems, with a 95% bootstrap interval
on the paired difference. Prints a Markdown table; exits 1 if any recipe ends below the start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from sead.config import load_config
from sead.config_files import find_config, recipe_description, recipe_names
from sead.demo import evaluate_heldout
from sead.methods import METHODS
from sead.stats import paired_difference
from sead.trainer import Trainer

TEACHER_TEXT = {"self": "the student, with the answer", "none": "none (verifier reward)"}


def run_recipe(name: str, out: Path, overrides: list[str] = ()) -> dict:
    """Train recipe ``name`` into ``out/name`` and return its start, end and teacher accuracies."""
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = load_config(find_config(name), [*overrides, f"train.output_dir={run_dir}"])
    start = evaluate_heldout(cfg.model.student, cfg, out / "start", name)
    t0 = time.perf_counter()
    final = Trainer(cfg).setup().train()
    train_s = time.perf_counter() - t0
    end = evaluate_heldout(str(final), cfg, run_dir, "end")
    kind = METHODS[cfg.objective.method].teacher  # model | self (OPSD) | none (GRPO: the reward only)
    teacher = None
    if kind == "model":
        teacher = evaluate_heldout(cfg.model.teacher, cfg, out / "teacher", name)["greedy"]
    ids = sorted(start["problems"])
    diff = paired_difference([end["problems"][i] for i in ids], [start["problems"][i] for i in ids]).to_dict()
    return {
        "recipe": name,
        "method": cfg.objective.method,
        "description": recipe_description(find_config(name)),
        "steps": cfg.train.steps,
        "lr": cfg.optim.lr,
        "seed": cfg.train.seed,
        "start": start["greedy"],
        "end": end["greedy"],
        "teacher": teacher,
        "teacher_kind": kind,
        "diff": diff,
        "n": len(ids),
        "train_s": train_s,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | method | steps | lr | start | end | end - start, points [95% CI] | teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["diff"]
        teacher = TEACHER_TEXT.get(r["teacher_kind"]) or f"{r['teacher']:.1%}"
        lines.append(
            f"| {r['recipe']} | {r['method']} | {r['steps']} | {r['lr']:g} | {r['start']:.1%} | **{r['end']:.1%}** | "
            f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] | {teacher} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default=",".join(recipe_names()), help="comma-separated shipped recipe names")
    ap.add_argument("--out", type=Path, default=Path("runs/recipes"))
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny kernels run fastest on one)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every recipe")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.recipes.split(","):
        print(f"recipe {name}: training", flush=True)
        rows.append(run_recipe(name, args.out, args.overrides))
        r = rows[-1]
        print(f"recipe {name}: {r['start']:.1%} -> {r['end']:.1%} in {r['train_s']:.0f} s", flush=True)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    below = [r["recipe"] for r in rows if r["end"] < r["start"]]
    if below:
        print(f"below the starting student: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
