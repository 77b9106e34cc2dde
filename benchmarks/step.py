"""Benchmark one training step of opd / eopd / sead (fused and logits), TRL's DistillationTrainer and SEAD inside TRL.

Every variant trains the same student against the same teacher on the same prompts, batch and
``--max-new-tokens``, and lives in its own worker process (its own models, optimiser, allocator and
RNG). The coordinator drives them in rounds: one warm-up step each, then ``--steps`` rounds in
which every variant runs one optimiser step, the order rotating from round to round, so all of them
see the same machine load. Figures are medians over the timed rounds; ratios are medians of the
per-round ratios (each round's variants ran back to back).

Variants:

* ``opd``, ``eopd``, ``sead``: ``sead.trainer.Trainer._one_step`` with ``objective.method`` set
  (sead: zones + annealing; eopd and sead take the fused hidden-state loss by default).
* ``sead-logits``: sead with ``objective.fused=false`` (materialised logits), to show the fused path.
* ``trl``: ``trl.DistillationTrainer`` (on-policy generation with ``transformers.generate``, teacher
  hidden states, chunked generalised JSD) with ``beta=1`` (reverse KL). TRL 1.16's trainer has no
  ``lmbda``: every step generates from the student, i.e. it is always fully on-policy. Driven step
  by step from a callback; gradient checkpointing off and no autocast, as in sead.
* ``trl-sead``: ``sead.integrations.trl.SEADTrainer`` (sead's objective on TRL's trainer: the
  ``sead`` variant's zones + annealing, fused loss where the models allow it), set up and driven
  exactly as ``trl``: ``trl-sead / trl`` is the cost SEAD adds inside TRL.

Columns: ``step s`` = wall time of one optimiser step (rollout generation included), ``rollout s``
= generation, ``train s`` = step - rollout (teacher + student forward + loss + zones + backward +
optimiser: everything but generation, measured the same way for every variant), ``tokens`` =
response tokens trained on. By default every response runs to ``--max-new-tokens`` (EOS suppressed
with ``min_new_tokens``), so every variant trains on exactly batch x max-new-tokens tokens and the
rollout is identical work; ``--free-length`` lets responses stop at EOS instead. On ``--device cpu``
the same columns are also given in process CPU time (``time.process_time`` of the worker), which
other jobs on a shared machine disturb far less than wall time; workers use one torch thread there
by default (``--threads``), since OpenMP threads that wait on descheduled siblings made these small
steps many times slower on a loaded machine.

    python benchmarks/step.py                                  # tiny models, CPU
    python benchmarks/step.py --models smollm2 --steps 2       # SmolLM2-135M teacher, 10-layer student
    python benchmarks/step.py --models smollm2 --device cuda --batch 32 --max-new-tokens 256 --steps 10 --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ALL_VARIANTS = ("opd", "eopd", "sead", "sead-logits", "trl", "trl-sead")
METHOD_OVERRIDES = {
    "opd": ["objective.method=opd"],
    "eopd": ["objective.method=eopd"],
    "sead": ["objective.method=sead", "objective.zones=true", "objective.anneal=true"],
    "sead-logits": ["objective.method=sead", "objective.zones=true", "objective.anneal=true", "objective.fused=false"],
}
PRESETS = {  # models: (batch, max_new_tokens, timed steps)
    "tiny": (32, 48, 5),
    "smollm2": (4, 32, 2),
}


# ----------------------------------------------------------------------------------------- models
def _questions(n: int, seed: int = 0) -> list[dict]:
    """Chained sums in the demo task's format (``98+93-77=``): only their token counts matter here."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        terms = [str(rng.randint(1, 99)) for _ in range(rng.randint(2, 4))]
        expr = terms[0] + "".join(rng.choice("+-") + t for t in terms[1:])
        rows.append({"id": f"q{i}", "question": expr + "="})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare_models(kind: str, workdir: Path) -> dict:
    """Teacher/student folders, a prompt file and how to format prompts, for ``--models kind``."""
    if kind == "tiny":
        from sead import toy_models

        root = toy_models.demo_asset_dir()
        if (root / "teacher" / "config.json").exists() and (root / "student" / "config.json").exists():
            train, _ = toy_models.demo_data_paths()
            data = train if train.exists() else _write_jsonl(workdir / "prompts.jsonl", _questions(1024))
            return {
                "teacher": str(root / "teacher"),
                "student": str(root / "student"),
                "data": str(data),
                "template": "{problem}",
                "chat_template": "off",
                "note": "shipped demo models (src/sead/assets/demo)",
            }
        tok = toy_models.build_tokenizer()
        paths = {}
        for name, shape, seed in (("teacher", toy_models.TEACHER_SHAPE, 1), ("student", toy_models.STUDENT_SHAPE, 2)):
            model = toy_models.build_model(tok, shape, seed)
            model.save_pretrained(workdir / name)
            tok.save_pretrained(workdir / name)
            paths[name] = str(workdir / name)
        return {
            **paths,
            "data": str(_write_jsonl(workdir / "prompts.jsonl", _questions(1024))),
            "template": "{problem}",
            "chat_template": "off",
            "note": "random-init models with the demo shapes (the shipped demo models are not built yet)",
        }
    if kind == "smollm2":
        from sead.smollm2 import prepare_smollm2, smollm2_prompt

        teacher, student = prepare_smollm2()
        return {
            "teacher": str(teacher),
            "student": str(student),
            "data": str(_write_jsonl(workdir / "prompts.jsonl", _questions(1024))),
            "template": smollm2_prompt(),
            "chat_template": "auto",
            "note": "SmolLM2-135M-Instruct teacher, 10-layer student cut from it",
        }
    raise SystemExit(f"--models {kind!r}: use tiny or smollm2")


def sead_overrides(spec: dict) -> list[str]:
    """The ``key=value`` config of a sead variant (also read by the TRL worker for its shared settings)."""
    return [
        f"model.student={spec['student']}",
        f"model.teacher={spec['teacher']}",
        f"model.dtype={spec['dtype']}",
        f"data.path={spec['data']}",
        "data.prompt_field=question",
        "data.answer_field=null",
        "data.id_field=id",
        f"data.template={spec['template']}",
        f"rollout.max_new_tokens={spec['max_new_tokens']}",
        "rollout.temperature=0.7",
        "rollout.top_p=1.0",
        f"rollout.batch_size={spec['batch']}",
        f"rollout.chat_template={spec['chat_template']}",
        f"train.batch_size={spec['batch']}",
        f"train.micro_batch_size={spec['batch']}",
        f"train.steps={spec['total_steps']}",
        "train.seed=0",
        f"train.output_dir={spec['workdir']}/runs/{spec['variant']}",
        "optim.lr=1e-5",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
        "optim.max_grad_norm=1.0",
        "logging.progress=false",
        "logging.samples_every=0",
        "eval.every=0",
        *METHOD_OVERRIDES.get(spec["variant"], []),
    ]


# ----------------------------------------------------------------------------------------- worker
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class _NoProgress:
    def update(self, step: int, record: dict) -> None:
        self.record = record


class SeadRunner:
    """One ``sead`` Trainer; ``step()`` runs ``Trainer._one_step`` and returns its timings."""

    def __init__(self, spec: dict):
        from accelerate import Accelerator

        from sead.config import load_config
        from sead.trainer import Trainer

        cfg = load_config(None, sead_overrides(spec))
        self.trainer = Trainer(cfg, accelerator=Accelerator(cpu=spec["device"] == "cpu")).setup()
        self.device = self.trainer.accelerator.device
        self.rollout_cpu = _instrument_generate(
            self.trainer.accelerator.unwrap_model(self.trainer.student),
            spec["max_new_tokens"] if spec["fixed_length"] else None,
        )
        self.progress = _NoProgress()
        self.info = {"backend": getattr(self.trainer.backend, "name", None)}

    def step(self) -> dict:
        self.rollout_cpu[0] = 0.0
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.trainer._one_step(self.progress)
        _sync(self.device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        r = self.progress.record
        return {
            "step_s": wall,
            "rollout_s": r["time/rollout_s"],
            "teacher_s": r["time/teacher_s"],
            "student_s": r["time/student_s"],
            "backward_s": r["time/backward_s"],
            "optim_s": r["time/optim_s"],
            "cpu_s": cpu,
            "rollout_cpu_s": self.rollout_cpu[0],
            "tokens": r["zones/tokens"],
            "loss": r.get("loss/total"),
        }


def _instrument_generate(model, min_new_tokens: int | None) -> list[float]:
    """Wrap ``model.generate``: add its CPU time to the returned cell; force ``min_new_tokens`` when given."""
    generate, cell = model.generate, [0.0]
    extra = {} if min_new_tokens is None else {"min_new_tokens": min_new_tokens}  # EOS suppressed until then

    def timed(*args, **kwargs):
        c0 = time.process_time()
        try:
            return generate(*args, **kwargs, **extra)
        finally:
            cell[0] += time.process_time() - c0

    model.generate = timed
    return cell


class _Stop(Exception):
    pass


def run_trl(spec: dict, send, recv) -> None:
    """TRL's DistillationTrainer (``trl``) or SEADTrainer (``trl-sead``), one optimiser step per ``step`` command."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    with_sead = spec["variant"] == "trl-sead"
    if with_sead:
        from sead.integrations.trl import SEADConfig, SEADTrainer

        config_class, trainer_class = SEADConfig, SEADTrainer
        objective = {"method": "sead", "zones": True, "anneal": True}  # the sead variant's objective
    else:
        config_class, trainer_class, objective = DistillationConfig, DistillationTrainer, {}

    from sead.config import load_config
    from sead.data import load_prompts

    cfg = load_config(None, sead_overrides(spec))  # the same data, rollout and optimiser settings as sead's
    dtype = getattr(torch, spec["dtype"])
    tok = AutoTokenizer.from_pretrained(spec["student"], padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(spec["student"], dtype=dtype)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=dtype)
    prompts = [item.prompt for item in load_prompts(cfg.data)]
    templated = cfg.rollout.chat_template != "off" and bool(getattr(tok, "chat_template", None))
    if templated:  # conversational rows: TRL applies the chat template, as sead's rollout does
        dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    else:
        dataset = Dataset.from_dict({"prompt": prompts})
    mnt = spec["max_new_tokens"]
    args = config_class(
        output_dir=f"{spec['workdir']}/runs/{spec['variant']}",
        max_steps=spec["total_steps"],
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1,
        learning_rate=cfg.optim.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        adam_epsilon=cfg.optim.eps,
        max_grad_norm=cfg.optim.max_grad_norm,
        optim="adamw_torch",
        beta=1.0,  # reverse KL
        max_completion_length=mnt,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=0,
        generation_kwargs={"min_new_tokens": mnt} if spec["fixed_length"] else None,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=spec["device"] == "cpu",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **objective,
    )
    timing: dict = {}

    class Driver(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if recv() != "step":
                raise _Stop
            timing.clear()
            timing["teacher_s"] = 0.0
            _sync(trainer.accelerator.device)
            timing["t0"], timing["c0"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            _sync(trainer.accelerator.device)
            wall, cpu = time.perf_counter() - timing["t0"], time.process_time() - timing["c0"]
            send(
                {
                    "step_s": wall,
                    "rollout_s": timing["rollout_s"],
                    "teacher_s": timing["teacher_s"],
                    "cpu_s": cpu,
                    "rollout_cpu_s": timing["rollout_cpu_s"],
                    "tokens": timing["tokens"],
                }
            )

    trainer = trainer_class(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[Driver()],
    )
    generate, hidden = trainer._generate, trainer._get_last_hidden_state
    unwrapped_teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)

    def timed_generate(batch_prompts):
        _sync(trainer.accelerator.device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = generate(batch_prompts)
        _sync(trainer.accelerator.device)
        timing["rollout_s"], timing["rollout_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        timing["tokens"] = float(sum(len(ids) for ids in out[1]))
        return out

    def timed_hidden(model, *a, **k):
        if model is not unwrapped_teacher:
            return hidden(model, *a, **k)
        _sync(trainer.accelerator.device)
        t0 = time.perf_counter()
        out = hidden(model, *a, **k)
        _sync(trainer.accelerator.device)
        timing["teacher_s"] += time.perf_counter() - t0
        return out

    trainer._generate, trainer._get_last_hidden_state = timed_generate, timed_hidden
    backend = "trl-chunked-jsd"
    if with_sead:  # SEADTrainer scores the teacher through sead's backend, not _get_last_hidden_state
        score_teacher = trainer.backend.teacher

        def timed_teacher(*a, **k):
            _sync(trainer.accelerator.device)
            t0 = time.perf_counter()
            out = score_teacher(*a, **k)
            _sync(trainer.accelerator.device)
            timing["teacher_s"] += time.perf_counter() - t0
            return out

        trainer.backend.teacher = timed_teacher
        backend = f"trl+sead-{trainer.backend.name}"
    send({"ready": True, "info": {"backend": backend, "trl": trl.__version__}})
    try:
        trainer.train()
    except _Stop:
        return


def worker_main(spec: dict) -> None:
    """Setup, then answer ``step`` lines on stdin with one JSON line each on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to the worker's log, not into the protocol

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    def recv() -> str:
        return sys.stdin.readline().strip() or "quit"

    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    try:
        if spec["variant"] in ("trl", "trl-sead"):
            run_trl(spec, send, recv)
        else:
            runner = SeadRunner(spec)
            send({"ready": True, "info": runner.info})
            while recv() == "step":
                send(runner.step())
    except Exception as err:  # reported to the coordinator, with the traceback in the log
        traceback.print_exc()
        send({"error": f"{type(err).__name__}: {err}"})
    while recv() != "quit":  # e.g. TRL finished its max_steps: drain until told to quit
        send({"error": "no more steps"})


# ------------------------------------------------------------------------------------ coordinator
class Worker:
    """A worker process speaking one JSON line per command; errors come back as {"error": ...}."""

    def __init__(self, spec: dict, log: Path, timeout_s: float):
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1",
        }
        self.log, self.timeout_s, self.dead = log, timeout_s, None
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),
            text=True,
            env=env,
        )

    def _tail(self) -> str:
        lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1][:200] if lines else "no output"

    def recv(self) -> dict:
        if self.dead:
            return {"error": self.dead}
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        line = self.proc.stdout.readline() if ready else None
        if not line:
            self.proc.kill()
            self.dead = f"timeout after {self.timeout_s:.0f} s" if line is None else f"worker died: {self._tail()}"
            return {"error": self.dead}
        msg = json.loads(line)
        if "error" in msg:
            self.dead = msg["error"]
        return msg

    def send(self, command: str) -> None:
        if not self.dead:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def run_benchmark(args) -> dict:
    import torch

    batch, mnt, steps = PRESETS[args.models]
    batch, mnt, steps = args.batch or batch, args.max_new_tokens or mnt, args.steps or steps
    workdir = Path(tempfile.mkdtemp(prefix="sead-bench-step-"))
    models = prepare_models(args.models, workdir)
    base = {
        **models,
        "batch": batch,
        "max_new_tokens": mnt,
        "total_steps": args.warmup + steps,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "fixed_length": not args.free_length,
        "workdir": str(workdir),
    }
    variants = list(args.variants)
    print(f"setting up {len(variants)} workers ({', '.join(variants)}); logs in {workdir}", flush=True)
    source, load_start = _source_version(), os.getloadavg()
    workers = {v: Worker({**base, "variant": v}, workdir / f"{v}.log", args.timeout) for v in variants}
    info, rounds = {}, {v: [] for v in variants}
    try:
        for v, w in workers.items():  # set up in parallel; nothing is timed yet
            msg = w.recv()
            info[v] = msg.get("info", {}) if "error" not in msg else {"error": msg["error"]}
            print(f"  {v}: {'ready' if 'error' not in msg else 'FAILED: ' + msg['error']}", flush=True)
        for r in range(args.warmup + steps):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                workers[v].send("step")
                msg = workers[v].recv()
                if "error" in msg:
                    info[v].setdefault("error", msg["error"])
                    continue
                if r >= args.warmup:
                    msg["round"] = r - args.warmup
                    rounds[v].append(msg)
            label = "warm-up" if r < args.warmup else f"round {r - args.warmup + 1}/{steps}"
            print(
                f"  {label}: "
                + "  ".join(
                    f"{v} {rounds[v][-1]['step_s']:.2f}s" if rounds[v] and r >= args.warmup else f"{v} -" for v in order
                ),
                flush=True,
            )
    finally:
        for w in workers.values():
            w.close()
    meta = {
        "models": args.models,
        "models_note": models["note"],
        "batch": batch,
        "max_new_tokens": mnt,
        "fixed_length": not args.free_length,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads or torch.get_num_threads(),
        "warmup": args.warmup,
        "steps": steps,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_start": load_start,
        "load_avg": os.getloadavg(),
        "source": source,
        "trl": (info.get("trl") or info.get("trl-sead") or {}).get("trl"),
    }
    clocks = ["wall", "cpu"] if args.device == "cpu" else ["wall"]
    return {"meta": meta, "info": info, "clocks": clocks, "rounds": rounds, **summarise(rounds, variants, clocks)}


def _source_version() -> str:
    """The git commit of the code measured (``+dirty`` when src/ has uncommitted changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


# -------------------------------------------------------------------------------------- summaries
def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# clock -> (step key, rollout key): wall time everywhere, process CPU time too on --device cpu
CLOCKS = {"wall": ("step_s", "rollout_s"), "cpu": ("cpu_s", "rollout_cpu_s")}


def _step(r: dict, clock: str) -> float:
    return r[CLOCKS[clock][0]]


def _train(r: dict, clock: str) -> float:
    step, rollout = CLOCKS[clock]
    return r[step] - r[rollout]


def summarise(rounds: dict, variants: list[str], clocks=("wall", "cpu")) -> dict:
    """Per-variant medians, and paired per-round ratios (median, min, max) against opd and sead vs trl."""
    summary = {}
    for v in variants:
        rs = rounds[v]
        if not rs:
            continue
        row = {
            k: _med([r.get(k) for r in rs])
            for k in (
                "step_s",
                "rollout_s",
                "cpu_s",
                "rollout_cpu_s",
                "teacher_s",
                "student_s",
                "backward_s",
                "optim_s",
                "tokens",
            )
        }
        for c in clocks:
            p = "" if c == "wall" else "cpu_"
            row[f"train_{p}s"] = _med([_train(r, c) for r in rs])
            row[f"tokens_per_{p}s"] = _med([r["tokens"] / _step(r, c) for r in rs])
            row[f"train_tokens_per_{p}s"] = _med([r["tokens"] / _train(r, c) for r in rs])
        summary[v] = row

    def paired(a: str, b: str, fn) -> dict | None:
        by_round = {r["round"]: r for r in rounds.get(b, [])}
        xs = [fn(r, by_round[r["round"]]) for r in rounds.get(a, []) if r["round"] in by_round]
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else None

    ratios = {}
    for c in clocks:
        step = lambda x, y, c=c: _step(x, c) / _step(y, c)  # noqa: E731
        train = lambda x, y, c=c: _train(x, c) / _train(y, c)  # noqa: E731
        tps = lambda x, y, c=c: (x["tokens"] / _step(x, c)) / (y["tokens"] / _step(y, c))  # noqa: E731
        train_tps = lambda x, y, c=c: (x["tokens"] / _train(x, c)) / (y["tokens"] / _train(y, c))  # noqa: E731
        for v in summary:
            ratios[f"{c}/{v}_over_opd_step"] = paired(v, "opd", step)
            ratios[f"{c}/{v}_over_opd_train"] = paired(v, "opd", train)
        ratios[f"{c}/sead_over_sead-logits_train"] = paired("sead", "sead-logits", train)
        for v in ("sead", "opd"):
            ratios[f"{c}/{v}_over_trl_tokens_per_s"] = paired(v, "trl", tps)
            ratios[f"{c}/{v}_over_trl_train_tokens_per_s"] = paired(v, "trl", train_tps)
        ratios[f"{c}/trl-sead_over_trl_step"] = paired("trl-sead", "trl", step)
        ratios[f"{c}/trl-sead_over_trl_train"] = paired("trl-sead", "trl", train)
    return {"summary": summary, "ratios": {k: v for k, v in ratios.items() if v is not None}}


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ratio(r: dict | None) -> str:
    return "-" if r is None else f"{r['median']:.3f} [{r['min']:.2f}-{r['max']:.2f}]"


def _table(head: list[str], lines: list[list[str]]) -> str:
    lines = [head, *lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )


def render(result: dict) -> str:
    m, summary, ratios = result["meta"], result["summary"], result["ratios"]
    clocks = result.get("clocks", ["wall"])
    length = "fixed length" if m["fixed_length"] else "stop at EOS"
    out = [
        f"models: {m['models']} ({m['models_note']})",
        f"batch {m['batch']} x {m['max_new_tokens']} new tokens ({length}); {m['device']} {m['dtype']}, "
        f"{m['threads']} threads, {m['cpus']} CPUs, load average {m['load_avg_start'][0]:.1f} at the start, "
        f"{m['load_avg'][0]:.1f} at the end; {m['warmup']} warm-up + {m['steps']} timed steps per variant, "
        "interleaved",
        f"code {m['source']}, trl {m.get('trl') or '-'}; medians over the timed steps; "
        "x/opd = median [min-max] of the per-round ratios",
        "",
    ]
    for c in clocks:
        p = "" if c == "wall" else "cpu_"
        name = "wall-clock time" if c == "wall" else "process CPU time (less sensitive to other jobs on the machine)"
        head = ["variant", "backend", "tokens", "step s", "tok/s", "rollout s", "train s", "train tok/s"]
        head += ["teacher s"] if c == "wall" else []
        head += ["step/opd", "train/opd"]
        lines = []
        for v, row in summary.items():
            line = [
                v,
                str(result["info"].get(v, {}).get("backend", "-")),
                _fmt(row["tokens"], ".0f"),
                _fmt(row[CLOCKS[c][0]], ".3f"),
                _fmt(row[f"tokens_per_{p}s"], ".0f"),
                _fmt(row[CLOCKS[c][1]], ".3f"),
                _fmt(row[f"train_{p}s"], ".3f"),
                _fmt(row[f"train_tokens_per_{p}s"], ".0f"),
            ]
            line += [_fmt(row["teacher_s"], ".3f")] if c == "wall" else []
            line += [_ratio(ratios.get(f"{c}/{v}_over_opd_step")), _ratio(ratios.get(f"{c}/{v}_over_opd_train"))]
            lines.append(line)
        out += [f"{name}:", _table(head, lines), ""]
        out.append(
            f"  sead / opd  time: step {_ratio(ratios.get(f'{c}/sead_over_opd_step'))}, "
            f"train {_ratio(ratios.get(f'{c}/sead_over_opd_train'))}   (target <= 1.05)"
        )
        out.append(f"  sead fused / sead logits  train time: {_ratio(ratios.get(f'{c}/sead_over_sead-logits_train'))}")
        out.append(
            f"  sead / trl  tokens/s: step {_ratio(ratios.get(f'{c}/sead_over_trl_tokens_per_s'))}, "
            f"train {_ratio(ratios.get(f'{c}/sead_over_trl_train_tokens_per_s'))}   (target >= 1.5)"
        )
        out.append(
            f"  sead inside trl / trl  time: step {_ratio(ratios.get(f'{c}/trl-sead_over_trl_step'))}, "
            f"train {_ratio(ratios.get(f'{c}/trl-sead_over_trl_train'))}   (the cost SEAD adds inside TRL)"
        )
        out.append("")
    for v, i in result["info"].items():
        if "error" in i:
            out.append(f"{v}: did not run: {i['error']}")
    return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default: tiny 5, smollm2 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first (default 1)")
    parser.add_argument("--batch", type=int, help="prompts per step (default: tiny 32, smollm2 4)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated per prompt (default: tiny 48, smollm2 32)")
    parser.add_argument(
        "--free-length",
        action="store_true",
        help="let responses stop at EOS (default: every response runs to --max-new-tokens)",
    )
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(ALL_VARIANTS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: 1 on cpu, torch's own on cuda)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one setup or step may take")
    parser.add_argument("--out", help="also write the results (medians, ratios, every step) as JSON here")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device here; run on a GPU machine or use --device cpu")
    result = run_benchmark(args)
    print()
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
