"""Build the shipped demo assets: task data, character tokenizer, SFT teacher and SFT student.

    python tools/build_demo_models.py                       # writes src/sead/assets/demo
    python tools/build_demo_models.py --out /tmp/demo --teacher-steps 200 --student-steps 50   # smoke

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

from sead import toy, toy_models
from sead.jsonio import read_jsonl
from sead.toy import CHARS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "sead" / "assets" / "demo"
SFT_SEED = 3  # seed of the SFT stream (distinct from the shipped train/heldout seeds)


def hinted_question(item) -> str:
    """The item's question with its reference answer in front (``toy.HINT_TEMPLATE``, the OPSD recipe's context)."""
    return toy.HINT_TEMPLATE.format(answer=item["answer"], prompt=item["question"])


def encode(tokenizer, items, *, direct_share, seed, rtl_share=0.0, hint_share=0.0):
    """(prompt ids, target ids) per item: question, then a solution + eos.

    With probability ``hint_share`` the prompt carries the reference answer (``toy.HINT_TEMPLATE``,
    the OPSD recipe's privileged context) and the target is a correct worked solution: a model that
    knows the answer takes the right path. Otherwise the solution is the answer alone (``A:9``) with
    probability ``direct_share[level]``, else the wrong right-to-left working with probability
    ``rtl_share``, otherwise a worked solution whose ``+`` steps write their operands in a random
    order (the reasoning forks).
    """
    rng = random.Random(seed)
    texts, questions = [], []
    for it in items:
        expr = it["question"][:-1]
        hinted = bool(hint_share) and rng.random() < hint_share  # no draw when off, as for rtl below
        questions.append(hinted_question(it) if hinted else it["question"])
        if hinted:
            texts.append(toy.worked_solution(expr, rng))
        elif rng.random() < direct_share.get(it["level"], 0.0):
            texts.append(toy.direct_solution(expr))
        elif rtl_share and rng.random() < rtl_share:  # no draw when off: the teacher's forks keep their stream
            texts.append(toy.right_to_left_solution(expr))
        else:
            texts.append(toy.worked_solution(expr, rng))
    prompts = tokenizer(questions, add_special_tokens=False)["input_ids"]
    targets = tokenizer(texts, add_special_tokens=False)["input_ids"]
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


def sft(
    name,
    model,
    tokenizer,
    groups,
    *,
    steps,
    batch,
    lr,
    warmup,
    final_frac,
    seed,
    dev,
    log_every,
    level_weights=None,
    schedule="cosine",
):
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
        ids_B_T, mask_B_T, labels_B_T = collate(
            order.sample(groups[order.choices(levels, weights)[0]], batch), tokenizer.pad_token_id
        )
        loss = model(input_ids=ids_B_T, attention_mask=mask_B_T, labels=labels_B_T).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            acc = toy_models.greedy_accuracy(model, tokenizer, dev) if dev else float("nan")
            entry = {
                "step": step + 1,
                "loss": round(ema, 4),
                "dev_acc": round(acc, 4),
                "lr": round(opt.param_groups[0]["lr"], 6),
                "elapsed_s": round(time.time() - t0, 1),
                "cpu_s": round(time.process_time() - c0, 1),
            }
            log.append(entry)
            print(
                f"[{name}] step {step + 1}/{steps} loss {ema:.4f} dev {acc:.3f} "
                f"lr {entry['lr']:.2e} {entry['elapsed_s']:.0f}s",
                flush=True,
            )
    model.eval()
    return log


def _analysis_section(a):
    """The measured entropy structure (``tools/analyse_demo.py``), as README text."""
    if not a:
        return "Not measured yet: run `python tools/analyse_demo.py`.\n"
    cats = a["by_category"]
    rows = "\n".join(
        f"| {c} | {v['share']:.1%} | {v['teacher_entropy']:.3f} | {v['p_zone']['A']:.1%} | "
        f"{v['p_zone']['B']:.1%} | {v['p_zone']['C']:.1%} |"
        for c, v in cats.items()
    )
    conc = a["concentration"]
    conc_rows = "\n".join(
        f"| {z} | {v['token_share']:.1%} | {v['fkl']:.2f}x | {v['rkl']:.2f}x | {v['sead_loss']:.2f}x |"
        for z, v in conc.items()
    )
    return f"""On {a["prompts"]} training prompts, one student sample each at temperature {a["temperature"]} (seed
{a["seed"]}), {a["tokens"]:,} response tokens, both models scoring every token; zones are SEAD's default
percentiles (50/40/10) over the whole batch:
- Teacher mean entropy **{a["teacher_entropy_mean"]:.3f} nats**; **{a["teacher_entropy_gt_0.5"]:.1%}** of tokens above
  0.5 nats. Student mean entropy {a["student_entropy_mean"]:.3f} nats; sampled reward {a["sampled_reward"]:.1%}.
- The student's greedy answer is exactly its wrong right-to-left solution on
  **{a["student_greedy_right_to_left"]:.1%}** of the held-out problems (where that differs from the correct one).

P(zone | token category) (the paper's Table 3; `sead.toy.token_categories`: step start = the first
character of a step, where the path is chosen):

| category | token share | teacher entropy | A | B | C |
|---|---|---|---|---|---|
{rows}

Loss concentration: each zone's share of the loss divided by its share of tokens (1 = fair share;
paper, forward KL: A 0.19x, B 1.46x, C 3.19x). SEAD loss = RKL on B + {a["alpha"]} x FKL on C (first step).

| zone | token share | forward KL | reverse KL | SEAD loss |
|---|---|---|---|---|
{conc_rows}
"""


def _demo_section(d):
    """The measured lift of ``sead demo`` (``tools/analyse_demo.py --demo RESULTS``)."""
    if not d:
        return "Not recorded yet: run `sead demo`, then `python tools/analyse_demo.py --demo runs/demo/results.json`.\n"
    rows = "\n".join(
        f"| {m} | {d['after'][m]:.1%} | {' / '.join(f'{v:.1%}' for v in d['per_seed'][m])} | "
        f"{100 * d['vs_before'][m]['mean']:+.1f} [{100 * d['vs_before'][m]['low']:.1f}, "
        f"{100 * d['vs_before'][m]['high']:.1f}] | {d['gap_closed'][m]:.0%} |"
        for m in d["after"]
    )
    return f"""`sead demo` with its defaults ({d["steps"]} steps per run, batch {d["batch_size"]}, lr {d["lr"]:g} for every
method, seeds {", ".join(map(str, d["seeds"]))}; {d["n_eval"]} held-out problems, greedy): student
{d["before"]:.1%}, teacher {d["teacher"]:.1%}; demo wall time {d["total_s"]:.0f} s.

| method | greedy, mean of seeds | per seed | vs before, points [95% CI] | gap closed |
|---|---|---|---|---|
{rows}
"""


def render_readme(m):
    """The assets README, written from the manifest ``m``."""
    rows, curves = [], []
    for name in ("teacher", "student"):
        r = m[name]
        by_level = " | ".join(f"{acc:.0%}" for acc in r["heldout_acc_by_level"].values())
        rows.append(
            f"| {name} | {r['shape']['hidden_size']} x {r['shape']['num_hidden_layers']} | {r['params']:,} | "
            f"{r['steps']} x {r['batch']} | {r['lr']:g} | {r.get('rtl_share', 0):.0%} | "
            f"{r['train_s'] / 60:.1f} min ({r['train_cpu_s'] / 60:.1f}) | "
            f"**{r['heldout_acc']:.1%}** | {by_level} | {r['size_bytes'] / 1e6:.2f} MB |"
        )
        curves.append(f"- {name}: " + ", ".join(f"{e['step']}: {e['dev_acc']:.0%}" for e in r["log"]))
    levels = "\n".join(f"- L{lv}: {t} terms of {d} digit(s)" for lv, (t, d) in m["levels"].items())
    level_cols = " | ".join(f"L{lv}" for lv in m["levels"])
    seeds = m["seeds"]
    shares = ", ".join(f"L{lv} {w:g}" for lv, w in m["level_weights"].items())
    commands = "\n".join(f"    {c}" for c in dict.fromkeys(m[name]["command"] for name in ("teacher", "student")))
    hashes = ", ".join(f"{name} `{m[name]['sha256'][:16]}`" for name in ("teacher", "student") if "sha256" in m[name])
    return f"""# Demo assets (`sead.toy`)

The embedded default task and models of `sead demo`. Written by `tools/build_demo_models.py` from
`manifest.json` (measurements: `tools/analyse_demo.py`); rebuild rather than edit. Command(s) used
(teacher and student are independent):

{commands}

A rebuild with the same torch build and thread count reproduces the weights bit for bit
(`model.safetensors` sha256 prefixes: {hashes}).

Load them with `sead.toy_models.load_demo_models()` -> `(teacher, student, tokenizer)`, or with plain
`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(sead.toy_models.demo_asset_dir() / "teacher")`.

## Design: reasoning forks, and a student that takes a wrong path
Chained sums of one-digit terms from reasoning-gym's `chain_sum`, solved step by step:
question `4-9+8+6=`, worked solution `4-9=-5,-5+8=3,3+6=9.A:9`. The verifier `sead.toy:verify`
compares the integer after the last `A:` with the answer. Levels (item i of a file has level
`levels[i % n_levels]`):
{levels}

- **Forks in the teacher.** In the teacher's training solutions every `+` step writes its two operands
  in a random order (`3+6=9` or `6+3=9`, `sead.toy.worked_solution`): two valid paths, so the teacher
  is genuinely uncertain at the first character of a `+` step (about ln 2 nats) and near-certain on the
  arithmetic and the syntax.
- **A strategy gap in the student.** The student learned from a weaker solver: {m["student"].get("rtl_share", 0):.0%} of its
  training solutions evaluate the chain from the right (`4-9+8` as `4-(9+8)`,
  `sead.toy.right_to_left_solution`), which is wrong whenever a minus comes before a later operator,
  the rest are the teacher's kind. It can do each step (the arithmetic of one-digit chains is easy for
  it) but its greedy answer usually takes the wrong path. The teacher never saw that path and rules it
  out at the first tokens, where the student is unsure: a gap the teacher's token-level signal can
  close in a few dozen steps. Stated plainly: the student's weakness is built in by its training data.
- **A student that can read a hint (for OPSD).** {m["student"].get("hint_share", 0):.0%} of the student's training prompts carry
  the reference answer before the question (`A:9,4-9+8+6=`: `sead.toy.HINT_TEMPLATE`, which is the
  OPSD recipe's `objective.opsd_template`), always with a correct worked solution: a solver told the
  answer takes a path that reaches it. With the answer in its prompt the student scores
  {m["student"].get("heldout_acc_hinted", float("nan")):.1%} held-out, without it {m["student"]["heldout_acc"]:.1%}: OPSD's self-teacher (the student reading
  the answer) has something to teach. The student built before this (no hints) read the template as
  text it had never seen, and OPSD took it from 33.5% to 10.5%.

- `data/train.jsonl`: {m["data"]["train"]} distinct prompts, `make_task(seed={seeds["train"]})`, no heldout question.
- `data/heldout.jsonl`: {m["data"]["heldout"]} distinct prompts, `make_task(seed={seeds["heldout"]})`.

Fields: `id`, `question`, `answer`, `level`, `solution` (the canonical left-to-right solution). Both
files: `sead.toy.write_task_files(dir)`.

## Models
`LlamaForCausalLM` with tied embeddings over one character vocabulary of {m["vocab_size"]} tokens
(`<pad>`=0, `<eos>`=1, `<unk>`=2, then `{"".join(CHARS)}`; no bos, no chat template). `teacher/` and
`student/` each hold `model.safetensors`, the configs and the same tokenizer files.

Both are trained by supervised fine-tuning (prompt = question, target = solution + `<eos>`, loss on
the target only), AdamW (betas 0.9/0.98, weight decay 0.01, clip 1.0), linear warmup then cosine
decay, batches of one level each, level shares {shares}, drawn from a pool of {m["sft_pool"]:,} items
(`make_task(seed={seeds["sft"]}, unique=False)`, heldout questions excluded). Init/data-order seeds:
teacher {seeds["teacher"]}, student {seeds["student"]}. Accuracy = greedy exact answer on `data/heldout.jsonl`.

| model | hidden x layers | params | steps x batch | peak lr | right-to-left share | train time, wall (CPU) | heldout | {level_cols} | size |
|---|---|---|---|---|---|---|---|{"---|" * len(m["levels"])}---|
{chr(10).join(rows)}

Dev accuracy (200 other fresh items, greedy) during training, by step:
{chr(10).join(curves)}

## Measured: what distillation sees
{_analysis_section(m.get("analysis"))}
## Measured: the lift
{_demo_section(m.get("demo"))}
## Recipe choices (measured on the same machine while designing the task)
- The previous task (two-digit chains, a student 32.5% / teacher 86.5%) left nothing for on-policy
  distillation to close in the demo's budget: every method ended 2.5-7.5 points *below* the student
  (the student's errors were arithmetic skill; the teacher had no forks, mean entropy 0.03 nats).
- A student that answers directly (`A:9`, 60% of its training targets) does not work on two-digit
  chains (its steps are too weak: 33% when forced to work step by step) nor on one-digit chains,
  where it sums the whole chain in one go at 95% held-out: no gap to close.
- Right-to-left share 0.6, student 1,500 steps, no hint prompts (the build before this one): greedy
  33.5% (L1 64%, L4 12%). One seed, 40 steps,
  batch 32: opd / eopd / sead reached 71.0 / 76.5 / 77.0% at lr 1e-4 and 67.5 / 78.5 / 75.0% at lr
  3e-4. The demo keeps lr 1e-4 (the earlier demo's value) for every method.
- Hint share (one build each, the rest of the recipe unchanged): 0.2 gave 99.5% with the answer in
  the prompt and 35.5% without; 0.4 gave 96.0% and 34.5%. The build keeps 0.2, the smaller change
  to the student's data. Chosen on these numbers; one OPSD run was made on the 0.2 student before
  the choice (35.5% to 90.0% in 40 steps), none on the 0.4 one.
- Teacher: one-digit chains are easy for the 128 x 4 model (dev 91% at step 500, 99.5% at 1,000).

Built with {m["threads"]} torch thread(s) on {m["machine"]}, torch {m["torch"]}, transformers
{m["transformers"]}; whole build {m.get("build_s", 0) / 60:.0f} min wall, {m.get("build_cpu_s", 0) / 60:.0f} min CPU. Wall
times were taken while other jobs shared the machine; the CPU time (in parentheses) is the better guide.
"""


def _shape(text):
    """``"128,4,4,512"`` -> a model shape dict (hidden, layers, heads, ffn)."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return dict(zip(keys, (int(v) for v in text.split(","))))


def _floats(text, n):
    """``"0.6"`` -> n copies; ``"0.2,0.6,0.4,0.8"`` -> one value per level."""
    values = [float(v) for v in str(text).split(",")]
    return values * n if len(values) == 1 else values


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sft-pool", type=int, default=60_000, help="size of the SFT item pool (seeded)")
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--teacher-lr", type=float, default=3e-3)
    ap.add_argument("--student-steps", type=int, default=1500)
    ap.add_argument("--student-lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="lr after warmup (constant only for comparison)",
    )
    ap.add_argument("--final-lr-frac", type=float, default=0.02)
    ap.add_argument("--teacher-seed", type=int, default=10)
    ap.add_argument("--student-seed", type=int, default=20)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument(
        "--level-weights",
        default="1,1,1,2",
        help="relative share of SFT batches per level (the hardest level gets more)",
    )
    ap.add_argument("--teacher-shape", type=_shape, default=toy_models.TEACHER_SHAPE, help="hidden,layers,heads,ffn")
    ap.add_argument("--student-shape", type=_shape, default=toy_models.STUDENT_SHAPE, help="hidden,layers,heads,ffn")
    ap.add_argument(
        "--teacher-direct",
        default="0",
        help="share of SFT targets that are the bare answer (one value, or one per level)",
    )
    ap.add_argument(
        "--student-direct",
        default="0",
        help="share of the student's SFT targets that skip the working (one value, or one per level)",
    )
    ap.add_argument("--teacher-rtl", type=float, default=0.0)
    ap.add_argument(
        "--student-rtl",
        type=float,
        default=0.6,
        help="share of the student's SFT targets worked right to left (wrong when a minus precedes)",
    )
    ap.add_argument("--teacher-hint", type=float, default=0.0)
    ap.add_argument(
        "--student-hint",
        type=float,
        default=0.2,
        help="share of the student's SFT prompts that carry the reference answer (toy.HINT_TEMPLATE, for OPSD)",
    )
    ap.add_argument(
        "--skip",
        choices=["teacher", "student"],
        action="append",
        default=[],
        help="do not train this model (for experiments)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    level_weights = dict(zip(toy.LEVELS, (float(w) for w in args.level_weights.split(","))))
    t_start = time.time()

    train_path, heldout_path = toy.write_task_files(args.out / "data")
    heldout = read_jsonl(heldout_path)
    exclude = {it["question"] for it in heldout}
    dev = toy.make_task(200, seed=SFT_SEED + 100, exclude=exclude)
    tokenizer = toy_models.build_tokenizer()
    sft_items = toy.make_task(args.sft_pool, SFT_SEED, unique=False, exclude=exclude)
    print(f"data: {len(sft_items)} SFT items, {len(heldout)} heldout, {time.time() - t_start:.0f}s", flush=True)

    command = " ".join(["python tools/build_demo_models.py", *(sys.argv[1:] if argv is None else argv)])
    manifest_path = args.out / "manifest.json"
    # Teacher and student are independent: a run that skips one keeps its earlier manifest entry.
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(
        {
            "machine": "a 2-core x86-64 CPU VM",
            "threads": args.threads,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "vocab_size": len(tokenizer),
            "levels": {str(k): v for k, v in toy.LEVELS.items()},
            "seeds": {
                "train": toy.DEMO_TRAIN_SEED,
                "heldout": toy.DEMO_HELDOUT_SEED,
                "sft": SFT_SEED,
                "dev": SFT_SEED + 100,
                "teacher": args.teacher_seed,
                "student": args.student_seed,
            },
            "data": {"train": sum(1 for _ in open(train_path)), "heldout": len(heldout)},
            "sft_pool": args.sft_pool,
            "level_weights": {str(k): v for k, v in level_weights.items()},
        }
    )
    for name, shape, steps, lr, seed in (
        ("teacher", args.teacher_shape, args.teacher_steps, args.teacher_lr, args.teacher_seed),
        ("student", args.student_shape, args.student_steps, args.student_lr, args.student_seed),
    ):
        if name in args.skip:
            continue
        direct = dict(zip(toy.LEVELS, _floats(getattr(args, f"{name}_direct"), len(toy.LEVELS))))
        groups = {}
        pairs = encode(
            tokenizer,
            sft_items,
            direct_share=direct,
            seed=seed,
            rtl_share=getattr(args, f"{name}_rtl"),
            hint_share=getattr(args, f"{name}_hint"),
        )
        for item, pair in zip(sft_items, pairs):
            groups.setdefault(item["level"], []).append(pair)
        model = toy_models.build_model(tokenizer, shape, seed)
        t0, c0 = time.time(), time.process_time()
        log = sft(
            name,
            model,
            tokenizer,
            groups,
            steps=steps,
            batch=args.batch,
            lr=lr,
            warmup=min(args.warmup, steps // 10),
            final_frac=args.final_lr_frac,
            seed=seed,
            dev=dev,
            log_every=args.log_every,
            level_weights=level_weights,
            schedule=args.schedule,
        )
        train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
        acc, by_level = toy_models.greedy_accuracy(model, tokenizer, heldout, by_level=True)
        # With the reference answer in the prompt: how good a teacher the model is for OPSD.
        hinted = [dict(it, question=hinted_question(it)) for it in heldout]
        hinted_acc = toy_models.greedy_accuracy(model, tokenizer, hinted)
        print(
            f"[{name}] heldout accuracy {acc:.3f} {by_level}, with the answer in the prompt {hinted_acc:.3f}",
            flush=True,
        )
        folder = args.out / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        manifest[name] = {
            "command": command,
            "shape": shape,
            "params": sum(p.numel() for p in model.parameters()),
            "steps": steps,
            "batch": args.batch,
            "lr": lr,
            "direct_share": {str(k): v for k, v in direct.items()},
            "rtl_share": getattr(args, f"{name}_rtl"),
            "hint_share": getattr(args, f"{name}_hint"),
            "schedule": args.schedule,
            "train_s": round(train_s, 1),
            "train_cpu_s": round(train_cpu_s, 1),
            "heldout_acc": acc,
            "heldout_acc_by_level": {str(k): v for k, v in by_level.items()},
            "heldout_acc_hinted": hinted_acc,
            "size_bytes": sum(f.stat().st_size for f in folder.iterdir()),
            "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
            "log": log,
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
