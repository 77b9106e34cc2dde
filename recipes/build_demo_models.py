"""Build the shipped demo assets: task data, character tokenizer, SFT teacher and SFT student.

    python recipes/build_demo_models.py                       # writes src/sead/assets/demo
    python recipes/build_demo_models.py --out /tmp/demo --teacher-steps 200 --student-steps 50   # smoke

Deterministic: fixed seeds, one data order, ``torch.set_num_threads(--threads)`` (default 1, which
also keeps it efficient on a shared machine; CPU float results can differ with another thread count
or another torch build). Teacher and student are independent: ``--skip`` one to rebuild the other.
Both models are trained by supervised fine-tuning on worked solutions: the prompt is the question,
the target is the solution + ``<eos>``, and the loss covers the target tokens only. The SFT stream is drawn from
``make_task`` with its own seed and never contains a heldout question. The learning rate warms up
linearly, then follows a cosine decay to ``--final-lr-frac`` of its peak (``--schedule constant``
exists for comparison: it did worse, see the README).

Writes ``data/{train,heldout}.jsonl``, ``teacher/`` and ``student/`` (``save_pretrained``
safetensors + the tokenizer in each), ``manifest.json`` (seeds, shapes, steps, accuracies, timings)
and ``README.md`` (rendered from the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from sead import toy
from sead.toy import CHARS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "sead" / "assets" / "demo"
SFT_SEED = 3  # seed of the SFT stream (distinct from the shipped train/heldout seeds)


def encode(tokenizer, items):
    """(prompt ids, target ids) per item: question, then solution + eos."""
    prompts = tokenizer([it["question"] for it in items], add_special_tokens=False)["input_ids"]
    targets = tokenizer([it["solution"] for it in items], add_special_tokens=False)["input_ids"]
    return [(p, t + [tokenizer.eos_token_id]) for p, t in zip(prompts, targets)]


def collate(pairs, pad_id):
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding)."""
    length = max(len(p) + len(t) for p, t in pairs)
    ids_B_T = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    labels_B_T = torch.full((len(pairs), length), -100, dtype=torch.long)
    mask_B_T = torch.zeros((len(pairs), length), dtype=torch.long)
    for b, (p, t) in enumerate(pairs):
        seq = p + t
        ids_B_T[b, : len(seq)] = torch.tensor(seq)
        labels_B_T[b, len(p) : len(seq)] = torch.tensor(t)
        mask_B_T[b, : len(seq)] = 1
    return ids_B_T, mask_B_T, labels_B_T


def lr_at(step, steps, peak, warmup, final_frac, schedule="cosine"):
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``final_frac * peak`` (or constant)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def sft(name, model, tokenizer, groups, *, steps, batch, lr, warmup, final_frac, seed, dev, log_every,
        level_weights=None, schedule="cosine"):
    """Supervised fine-tuning for ``steps`` steps; logs loss and dev accuracy; returns the log.

    ``groups`` maps a level to its (prompt, target) pairs; each batch comes from one level drawn at
    random (weighted by ``level_weights``, default equal), which keeps padding, hence CPU time, low.
    """
    torch.manual_seed(seed)
    order = random.Random(seed)
    levels = sorted(groups)
    weights = [(level_weights or {}).get(lv, 1.0) for lv in levels]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    log, t0, c0, ema = [], time.time(), time.process_time(), None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, final_frac, schedule)
        ids_B_T, mask_B_T, labels_B_T = collate(order.sample(groups[order.choices(levels, weights)[0]], batch),
                                              tokenizer.pad_token_id)
        loss = model(input_ids=ids_B_T, attention_mask=mask_B_T, labels=labels_B_T).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            acc = toy.greedy_accuracy(model, tokenizer, dev) if dev else float("nan")
            entry = {"step": step + 1, "loss": round(ema, 4), "dev_acc": round(acc, 4),
                     "lr": round(opt.param_groups[0]["lr"], 6), "elapsed_s": round(time.time() - t0, 1),
                     "cpu_s": round(time.process_time() - c0, 1)}
            log.append(entry)
            print(f"[{name}] step {step + 1}/{steps} loss {ema:.4f} dev {acc:.3f} "
                  f"lr {entry['lr']:.2e} {entry['elapsed_s']:.0f}s", flush=True)
    model.eval()
    return log


def render_readme(m):
    """The assets README, written from the manifest ``m``."""
    rows, curves = [], []
    for name in ("teacher", "student"):
        r = m[name]
        by_level = " | ".join(f"{acc:.0%}" for acc in r["heldout_acc_by_level"].values())
        rows.append(f"| {name} | {r['shape']['hidden_size']} x {r['shape']['num_hidden_layers']} | {r['params']:,} | "
                    f"{r['steps']} x {r['batch']} | {r['lr']:g} | "
                    f"{r['train_s'] / 60:.1f} min ({r['train_cpu_s'] / 60:.1f}) | "
                    f"**{r['heldout_acc']:.1%}** | {by_level} | {r['size_bytes'] / 1e6:.2f} MB |")
        curves.append(f"- {name}: " + ", ".join(f"{e['step']}: {e['dev_acc']:.0%}" for e in r["log"]))
    levels = "\n".join(f"- L{lv}: {t} terms of {d} digit(s)" for lv, (t, d) in m["levels"].items())
    level_cols = " | ".join(f"L{lv}" for lv in m["levels"])
    seeds = m["seeds"]
    shares = ", ".join(f"L{lv} {w:g}" for lv, w in m["level_weights"].items())
    commands = "\n".join(f"    {c}" for c in dict.fromkeys(m[name]["command"] for name in ("teacher", "student")))
    hashes = ", ".join(f"{name} `{m[name]['sha256'][:16]}`" for name in ("teacher", "student") if "sha256" in m[name])
    return f"""# Demo assets (`sead.toy`)

The embedded default task and models of `sead demo`. Written by `recipes/build_demo_models.py` from
`manifest.json`; rebuild rather than edit. Command(s) used (teacher and student are independent):

{commands}

A rebuild with the same torch build and thread count reproduces the weights bit for bit
(`model.safetensors` sha256 prefixes: {hashes}).

Load them with `sead.toy.load_demo_models()` -> `(teacher, student, tokenizer)`, or with plain
`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(sead.toy.demo_asset_dir() / "teacher")`.

## Task
Chained sums from reasoning-gym's `chain_sum`, rewritten compactly: question `98+93-77=`, worked
solution `98+93=191,191-77=114.A:114`. The verifier `sead.toy:verify` compares the integer after
the last `A:` with the answer. Levels (item i of a file has level `levels[i % n_levels]`):
{levels}

- `data/train.jsonl`: {m['data']['train']} distinct prompts, `make_task(seed={seeds['train']})`, no heldout question.
- `data/heldout.jsonl`: {m['data']['heldout']} distinct prompts, `make_task(seed={seeds['heldout']})`.

Fields: `id`, `question`, `answer`, `level`, `solution`. Both files: `sead.toy.write_task_files(dir)`.

## Models
`LlamaForCausalLM` with tied embeddings over one character vocabulary of {m['vocab_size']} tokens
(`<pad>`=0, `<eos>`=1, `<unk>`=2, then `{''.join(CHARS)}`; no bos, no chat template). `teacher/` and
`student/` each hold `model.safetensors`, the configs and the same tokenizer files.

Both are trained by supervised fine-tuning on worked solutions (prompt = question, target =
solution + `<eos>`, loss on the target only), AdamW (betas 0.9/0.98, weight decay 0.01, clip 1.0),
linear warmup then cosine decay, batches of one level each, level shares {shares},
drawn from a pool of {m['sft_pool']:,} items (`make_task(seed={seeds['sft']}, unique=False)`, heldout
questions excluded). Init/data-order seeds: teacher {seeds['teacher']}, student {seeds['student']}.
The student is deliberately under-trained: weak but learning, so distillation has room to show.

Accuracy = greedy exact answer on `data/heldout.jsonl` (`sead.toy.greedy_accuracy`).

| model | hidden x layers | params | steps x batch | peak lr | train time, wall (CPU) | heldout | {level_cols} | size |
|---|---|---|---|---|---|---|{'---|' * len(m['levels'])}---|
{chr(10).join(rows)}

Dev accuracy (200 other fresh items) during training, by step:
{chr(10).join(curves)}

## Recipe choices (measured on the same machine while designing the recipe; heldout / dev accuracy)
- Teacher lr schedule, 2,000 steps: cosine from 3e-3 86.5% / 92.0%; constant 2e-3 83.0% / 79.0%.
- Teacher level shares: L4 x2 86.5% / 92.0% (L4 66%); equal shares 87.0% / 91.5% (L4 60%).
- Student depth, 1,000 steps, equal shares: 64 x 4 (264k params) 65.0%; 64 x 2 (133k) 18.5%, too
  slow to learn carries to show distillation gains. The shipped student stops earlier on purpose.

## How the shipped student reacts to further training (measured after the build, not by it)
Held-out greedy accuracy from 32.5%, batch 32, warmup 5, cosine, seed 0 unless stated; 40 steps
at lr 1e-4 is the demo's budget.
- Greedy accuracy is knife-edge here: 39% of the student's correct answers have a near-tie (top-2
  gap under 0.25 nats) at some token, and every run, even plain supervised fine-tuning (SFT) on the
  reference solutions at lr 1e-4, changes 15-40 of the 200 greedy answers in both directions. The
  seed alone moves opd from 29.5% to 32.0%. Read the demo's greedy differences with that band.
- The budget is small: SFT on the reference solutions gives 33.5% (lr 1e-4, 40 steps), 34.5%
  (lr 1e-3, 200 steps); Adam fed random gradients for 40 steps gives 32.5 / 31.0 / 28.0% at lr
  1e-4 / 3e-4 / 1e-3. The student is an end-of-schedule checkpoint (final lr 6e-5): a fresh AdamW at
  lr >= 3e-4 first knocks it down (SFT at 1e-3: 15% after 10 steps, recovering to 33.5% by 80).
- The teacher is nearly one-hot (mean entropy 0.03 nats; its non-argmax tokens at log-probabilities
  -12 to -20), so most reverse KL sits on student mass the teacher rules out: lowering it sharpens
  the student (entropy 0.20 -> 0.14, sampled reward up) more than it moves the argmax, which differs
  from the teacher's on 6% of the student's greedy tokens. rkl (lr 1e-3, 200 steps): 34.0%, reverse
  KL 0.64 -> 0.45; fkl behaves like SFT (31.5%); opd at lr >= 3e-4 diverges (reverse KL rises, 6-21%).
- EOPD's forward-KL gate at tau 0.5 nats opens on 2.5% of tokens (5.3% above 0.1): near plain
  reverse KL on this teacher.
- A different starting point does not change this: mid-schedule snapshots of the same recipe (step
  700: 25.0%, step 760: 32.0%) distilled for 60 steps (opd, rkl, fkl, eopd, sead; lr 1e-4-1e-3)
  ended within -6 to +3 points greedy, never above supervised fine-tuning on the reference
  solutions at the same settings (+3 to +7) or simply continuing the recipe (+3 after 40 steps).
  The teacher was trained on the same solutions and is nearly one-hot, so its on-policy signal
  adds little here; a demo that shows a gain needs a less peaked teacher or a larger budget.

Built with {m['threads']} torch thread(s) on {m['machine']}, torch {m['torch']}, transformers
{m['transformers']}; whole build {m['build_s'] / 60:.0f} min wall, {m['build_cpu_s'] / 60:.0f} min CPU. Wall times were
taken while other jobs shared the machine; the CPU time (in parentheses above) is the better guide:
on an idle core the wall time is about the CPU time.
"""


def _shape(text):
    """``"128,4,4,512"`` -> a model shape dict (hidden, layers, heads, ffn)."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return dict(zip(keys, (int(v) for v in text.split(","))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sft-pool", type=int, default=60_000, help="size of the SFT item pool (seeded)")
    ap.add_argument("--teacher-steps", type=int, default=2000)
    ap.add_argument("--teacher-lr", type=float, default=3e-3)
    ap.add_argument("--student-steps", type=int, default=850)
    ap.add_argument("--student-lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                    help="lr after warmup (constant only for comparison)")
    ap.add_argument("--final-lr-frac", type=float, default=0.02)
    ap.add_argument("--teacher-seed", type=int, default=10)
    ap.add_argument("--student-seed", type=int, default=20)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--level-weights", default="1,1,1,2",
                    help="relative share of SFT batches per level (the hardest level gets more)")
    ap.add_argument("--teacher-shape", type=_shape, default=toy.TEACHER_SHAPE, help="hidden,layers,heads,ffn")
    ap.add_argument("--student-shape", type=_shape, default=toy.STUDENT_SHAPE, help="hidden,layers,heads,ffn")
    ap.add_argument("--skip", choices=["teacher", "student"], action="append", default=[],
                    help="do not train this model (for experiments)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    level_weights = dict(zip(toy.LEVELS, (float(w) for w in args.level_weights.split(","))))
    t_start = time.time()

    train_path, heldout_path = toy.write_task_files(args.out / "data")
    heldout = toy.read_jsonl(heldout_path)
    exclude = {it["question"] for it in heldout}
    dev = toy.make_task(200, seed=SFT_SEED + 100, exclude=exclude)
    tokenizer = toy.build_tokenizer()
    sft_items = toy.make_task(args.sft_pool, SFT_SEED, unique=False, exclude=exclude)
    groups = {}
    for item, pair in zip(sft_items, encode(tokenizer, sft_items)):
        groups.setdefault(item["level"], []).append(pair)
    print(f"data: {len(sft_items)} SFT items, {len(heldout)} heldout, {time.time() - t_start:.0f}s", flush=True)

    command = " ".join(["python recipes/build_demo_models.py", *(sys.argv[1:] if argv is None else argv)])
    manifest_path = args.out / "manifest.json"
    # Teacher and student are independent: a run that skips one keeps its earlier manifest entry.
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update({
        "machine": "a 2-core x86-64 CPU VM", "threads": args.threads, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "vocab_size": len(tokenizer),
        "levels": {str(k): v for k, v in toy.LEVELS.items()},
        "seeds": {"train": toy.DEMO_TRAIN_SEED, "heldout": toy.DEMO_HELDOUT_SEED, "sft": SFT_SEED,
                  "dev": SFT_SEED + 100, "teacher": args.teacher_seed, "student": args.student_seed},
        "data": {"train": sum(1 for _ in open(train_path)), "heldout": len(heldout)}, "sft_pool": args.sft_pool,
        "level_weights": {str(k): v for k, v in level_weights.items()},
    })
    for name, shape, steps, lr, seed in (("teacher", args.teacher_shape, args.teacher_steps, args.teacher_lr,
                                          args.teacher_seed),
                                         ("student", args.student_shape, args.student_steps, args.student_lr,
                                          args.student_seed)):
        if name in args.skip:
            continue
        model = toy.build_model(tokenizer, shape, seed)
        t0, c0 = time.time(), time.process_time()
        log = sft(name, model, tokenizer, groups, steps=steps, batch=args.batch, lr=lr,
                  warmup=min(args.warmup, steps // 10), final_frac=args.final_lr_frac, seed=seed, dev=dev,
                  log_every=args.log_every, level_weights=level_weights,
                  schedule=args.schedule)
        train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
        acc, by_level = toy.greedy_accuracy(model, tokenizer, heldout, by_level=True)
        print(f"[{name}] heldout accuracy {acc:.3f} {by_level}", flush=True)
        folder = args.out / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        manifest[name] = {
            "command": command, "shape": shape, "params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "batch": args.batch, "lr": lr, "schedule": args.schedule, "train_s": round(train_s, 1),
            "train_cpu_s": round(train_cpu_s, 1), "heldout_acc": acc,
            "heldout_acc_by_level": {str(k): v for k, v in by_level.items()},
            "size_bytes": sum(f.stat().st_size for f in folder.iterdir()),
            "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(), "log": log,
        }
    if not args.skip:
        manifest["build_s"] = round(time.time() - t_start, 1)
        manifest["build_cpu_s"] = round(time.process_time(), 1)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    if "teacher" in manifest and "student" in manifest:
        (args.out / "README.md").write_text(render_readme(manifest))
    print(f"done in {(time.time() - t_start) / 60:.1f} min -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
