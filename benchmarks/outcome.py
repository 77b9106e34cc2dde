"""Outcome benchmark: held-out accuracy against training steps and wall time, on the demo task.

    python benchmarks/outcome.py                          # opd, eopd, sead; 80 steps, eval every 10, seeds 0,1
    python benchmarks/outcome.py --steps 40 --seeds 0 --methods opd,rkl,sead,trl --json benchmarks/results/outcome.json

Every method trains the shipped student with the demo's settings (`sead.demo.demo_config`: same lr,
batch, steps and seeds for all) and is evaluated greedily on the 200 held-out problems every
``--eval-every`` steps. Reported side by side, from one run on one machine:
- accuracy at each evaluated step (mean over seeds);
- steps and training seconds (the sum of ``time/step_s``, evaluation excluded) until the mean
  accuracy first closes half of the teacher-student gap, and their ratio to the first method's.
Wall seconds on a shared CPU are noisy; the ratios are measured in the same run.

``trl`` (when TRL is installed) is TRL's own ``DistillationTrainer`` with the same budget: the same
student, teacher, prompts, batch, steps, learning rate and schedule (cosine after the same warmup),
sampling temperature and response length, ``beta=1`` (full-vocabulary reverse KL, TRL's on-policy
distillation; its nearest sead method is ``rkl``), evaluated by the same code every ``--eval-every``
steps. Its training seconds are timed from TRL's step callbacks, evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path


def _curve(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(step -> held-out greedy accuracy, step -> cumulative training seconds) from metrics.jsonl."""
    acc, elapsed, total = {}, {}, 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        total += row.get("time/step_s") or 0.0
        elapsed[row["step"]] = total
        if row.get("eval/heldout/pass@1") is not None:
            acc[row["step"]] = row["eval/heldout/pass@1"]
    return acc, elapsed


def train_trl(cfg, run_dir: Path, eval_every: int) -> None:
    """TRL's DistillationTrainer on ``cfg``'s models, data and budget; writes a sead-style metrics.jsonl."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from sead.data import load_prompts
    from sead.evaluate import evaluate_during_training, load_benchmarks
    from sead.verifier import build_verifier

    tok = AutoTokenizer.from_pretrained(cfg.model.student, padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(cfg.model.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(cfg.model.teacher, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": [item.prompt for item in load_prompts(cfg.data)]})
    o, r = cfg.optim, cfg.rollout
    args = DistillationConfig(
        output_dir=str(run_dir / "trl"),
        max_steps=cfg.train.steps,
        per_device_train_batch_size=cfg.train.batch_size * cfg.train.samples_per_prompt,
        gradient_accumulation_steps=1,
        learning_rate=o.lr,
        lr_scheduler_type=o.schedule,
        warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay,
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm,
        optim="adamw_torch",
        beta=1.0,  # reverse KL
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=0,
        gradient_checkpointing=False,
        use_cpu=True,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=cfg.train.seed,
    )
    benchmarks, verifier = load_benchmarks(cfg.eval), build_verifier(cfg.verifier)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines, clock = [], {}

    class Timed(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            row = {"step": state.global_step, "time/step_s": time.perf_counter() - clock["t0"]}
            if state.global_step % eval_every == 0 or state.global_step == cfg.train.steps:
                model = trainer.accelerator.unwrap_model(trainer.model)
                row.update(evaluate_during_training(model, tok, cfg.eval, verifier, state.global_step, benchmarks))
            lines.append(json.dumps(row))

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[Timed()],
    )
    trainer.train()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "final").mkdir(exist_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="opd,eopd,sead")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=Path("runs/outcome"))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="write accuracy-vs-step and -vs-time curves (PNG)")
    args = ap.parse_args(argv)

    import torch

    from sead.config import config_from_dict
    from sead.demo import PRESETS, demo_config, evaluate_heldout
    from sead.difficulty import difficulty_from_config
    from sead.trainer import Trainer

    torch.set_num_threads(1)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    _, prompts, k, _ = PRESETS["tiny"]
    difficulty = args.out / "difficulty.jsonl"

    def config(method: str, seed: int):
        # TRL runs on the same settings as sead's rkl (its objective); only the folder is its own.
        d = demo_config(args.out, "rkl" if method == "trl" else method, args.steps, seed, prompts, difficulty)
        if method == "trl":
            d["train"]["output_dir"] = str(args.out / "runs" / f"trl-s{seed}")
        d["eval"].update({"k": 0, "every": args.eval_every})
        d["logging"]["progress"] = False
        d["train"]["save_every"] = args.steps
        return config_from_dict(d)

    t0 = time.perf_counter()
    base = config(methods[0], seeds[0])
    if any(m == "sead" for m in methods) and not difficulty.exists():
        difficulty_from_config(base, k=k, out_path=str(difficulty), progress=False)
    before = evaluate_heldout(base.model.student, base, args.out, "student-before")["greedy"]
    teacher = evaluate_heldout(base.model.teacher, base, args.out, "teacher")["greedy"]
    target = before + 0.5 * (teacher - before)
    curves: dict[str, dict] = {}
    for method in methods:
        accs, times = [], []
        for seed in seeds:
            cfg = config(method, seed)
            run_dir = Path(cfg.train.output_dir)
            if not (run_dir / "final").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
                if method == "trl":
                    train_trl(cfg, run_dir, args.eval_every)
                else:
                    Trainer(cfg).setup().train()
            acc, elapsed = _curve(run_dir)
            accs.append(acc)
            times.append(elapsed)
            print(f"{method} seed {seed}: " + " ".join(f"{s}:{a:.3f}" for s, a in sorted(acc.items())), flush=True)
        steps = sorted(set.intersection(*(set(a) for a in accs)))
        mean_acc = {s: statistics.fmean(a[s] for a in accs) for s in steps}
        mean_time = {s: statistics.fmean(t[s] for t in times) for s in steps}
        hit = next((s for s in steps if mean_acc[s] >= target), None)
        curves[method] = {
            "accuracy": mean_acc,
            "train_s": mean_time,
            "steps_to_half_gap": hit,
            "seconds_to_half_gap": mean_time[hit] if hit else None,
            "seconds_per_step": mean_time[steps[-1]] / steps[-1] if steps else None,
        }
    ref = curves[methods[0]]
    for c in curves.values():
        c["time_ratio"] = (
            c["seconds_to_half_gap"] / ref["seconds_to_half_gap"]
            if c["seconds_to_half_gap"] and ref["seconds_to_half_gap"]
            else None
        )
        c["step_ratio"] = (
            c["steps_to_half_gap"] / ref["steps_to_half_gap"]
            if c["steps_to_half_gap"] and ref["steps_to_half_gap"]
            else None
        )
    result = {
        "before": before,
        "teacher": teacher,
        "target": target,
        "seeds": seeds,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "lr": base.optim.lr,
        "batch_size": base.train.batch_size,
        "methods": curves,
        "total_s": time.perf_counter() - t0,
    }
    print(f"\nstudent {before:.1%}, teacher {teacher:.1%}, half the gap = {target:.1%}; mean over seeds {seeds}")
    print(
        f"{'method':8} {'steps to half':>13} {'x ' + methods[0]:>8} {'train s to half':>15} {'x ' + methods[0]:>8} "
        f"{'s/step':>7} {'final':>6}"
    )
    for m, c in curves.items():
        final = c["accuracy"][max(c["accuracy"])] if c["accuracy"] else None

        def f(x, fmt):
            return format(x, fmt) if x is not None else "-"

        print(
            f"{m:8} {f(c['steps_to_half_gap'], 'd'):>13} {f(c['step_ratio'], '.2f'):>8} "
            f"{f(c['seconds_to_half_gap'], '.1f'):>15} {f(c['time_ratio'], '.2f'):>8} "
            f"{f(c['seconds_per_step'], '.3f'):>7} {f(final, '.1%'):>6}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
        for m, c in curves.items():
            steps = sorted(c["accuracy"])
            ax1.plot(steps, [c["accuracy"][s] for s in steps], marker="o", label=m)
            ax2.plot([c["train_s"][s] for s in steps], [c["accuracy"][s] for s in steps], marker="o", label=m)
        for ax, xlabel in ((ax1, "optimiser step"), (ax2, "training seconds (eval excluded)")):
            ax.axhline(teacher, color="k", ls=":", lw=1, label="teacher")
            ax.axhline(before, color="grey", ls="--", lw=1, label="student before")
            ax.axhline(target, color="grey", ls="-.", lw=0.8, label="half the gap")
            ax.set_xlabel(xlabel)
        ax1.set_ylabel("held-out greedy accuracy")
        ax1.legend(fontsize=8)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
