"""Benchmark the SEAD loss from hidden states: extra peak memory and forward+backward time.

Variants (each measured in its own subprocess, ratios against ``naive`` of the same size):

* ``naive``: materialise both logits (``hidden @ head.T``), zones from ``entropy`` +
  ``assign_zones``, ``sead.objectives.sead_loss``, autograd backward.
* ``fused``: ``sead.fused_losses.sead_loss_from_hidden`` (pass 1 entropies + zones, pass 2 on B u C).
* ``fused_zones``: the same with zones given (what a trainer calls per micro-batch once the zones of
  the global batch are known): pass 2 only.
* ``chunked``: zones from pass 1, then a plain chunked loop over the B u C rows computing each
  chunk's logits and ``sead_loss`` with autograd and calling backward per chunk.
* ``trl``: zones from pass 1, then TRL's ``ChunkedDivergenceFunction`` (token x vocab tiles,
  online logsumexp, recompute in backward): reverse KL on B rows, forward KL on C rows.
* ``fused_1pass``: ``sead.fused_single_pass.sead_loss_single_pass`` with thresholds from the previous step
  (here: this batch's exact percentile thresholds, computed during setup).

``--drift STEPS`` instead trains a toy student with the single-pass mode (thresholds = running
average of previous steps' percentile thresholds) and reports how far the realised zone
fractions drift from the targets.

A variant name may carry a chunk size, e.g. ``fused@256`` (default ``--chunk``).

    python benchmarks/loss.py --quick
    python benchmarks/loss.py --n 1024 4096 --v 49152 151936 --out results.json
    python benchmarks/loss.py --device cuda --dtype bfloat16 --out results_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import available_bytes, limit_memory, measure, ratio_table, run_worker  # noqa: E402

from sead.divergence import entropy  # noqa: E402
from sead.fused_losses import sead_loss_from_hidden, token_entropies_from_hidden, zones_from_hidden  # noqa: E402
from sead.fused_single_pass import percentile_thresholds, sead_loss_single_pass  # noqa: E402
from sead.objectives import sead_loss  # noqa: E402
from sead.schedule import cosine_alpha  # noqa: E402
from sead.zones import Zone, assign_zones, zone_counts  # noqa: E402

ALPHA, LAM = 0.5, 1.0
VARIANTS = ("naive", "fused", "fused_zones", "fused_1pass", "chunked", "trl")


def make_inputs(n: int, v: int, h: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Student/teacher hidden states and heads; in-place scaling so setup has no transient peak."""
    torch.manual_seed(seed)
    sharp_N = torch.rand(n, 1, device=device).mul_(2.5).add_(0.5)  # per-token logit scale: varied entropies
    s_hidden = torch.randn(n, h, device=device).mul_(sharp_N).to(dtype).requires_grad_()
    t_hidden = torch.randn(n, h, device=device).mul_(sharp_N).to(dtype)
    s_head = torch.randn(v, h, device=device).mul_(h**-0.5).to(dtype).requires_grad_()
    t_head = torch.randn(v, h, device=device).mul_(h**-0.5).to(dtype)
    mask = torch.ones(n, dtype=torch.bool, device=device)
    return dict(s_hidden=s_hidden, s_head=s_head, t_hidden=t_hidden, t_head=t_head, mask=mask)


def _zero_grads(x: dict) -> None:
    x["s_hidden"].grad = None
    x["s_head"].grad = None


def step_naive(x: dict, chunk: int) -> float:
    s = x["s_hidden"] @ x["s_head"].T
    with torch.no_grad():
        t = x["t_hidden"] @ x["t_head"].T
        zones = assign_zones(entropy(t), entropy(s.detach()), x["mask"])
    loss = sead_loss(s, t, zones, ALPHA, LAM)
    loss.backward()
    return loss.item()


def step_fused(x: dict, chunk: int) -> float:
    loss, _ = sead_loss_from_hidden(
        x["s_hidden"],
        x["s_head"],
        x["t_hidden"],
        x["t_head"],
        x["mask"],
        ALPHA,
        LAM,
        chunk_size=chunk,
        zones=x.get("zones"),
    )
    loss.backward()
    return loss.item()


def step_single_pass(x: dict, chunk: int) -> float:
    loss, *_ = sead_loss_single_pass(
        x["s_hidden"], x["s_head"], x["t_hidden"], x["t_head"], x["mask"], ALPHA, x["thresholds"], LAM, chunk_size=chunk
    )
    loss.backward()
    return loss.item()


def _zones_and_rows(x: dict, chunk: int):
    zones = zones_from_hidden(x["s_hidden"], x["s_head"], x["t_hidden"], x["t_head"], x["mask"], chunk_size=chunk)
    return zones, ((zones == Zone.B) | (zones == Zone.C)).nonzero().squeeze(-1)


def step_chunked(x: dict, chunk: int) -> float:
    zones, rows = _zones_and_rows(x, chunk)
    total = 0.0
    for start in range(0, rows.numel(), chunk):
        idx = rows[start : start + chunk]
        s = x["s_hidden"][idx] @ x["s_head"].T
        with torch.no_grad():
            t = x["t_hidden"][idx] @ x["t_head"].T
        loss = sead_loss(s, t, zones[idx], ALPHA, LAM, normalizer=rows.numel())
        loss.backward()
        total += loss.item()
    return total


def step_trl(x: dict, chunk: int) -> float:
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction  # optional: only this variant needs TRL

    zones, rows = _zones_and_rows(x, chunk)
    b_idx, c_idx = (zones == Zone.B).nonzero().squeeze(-1), (zones == Zone.C).nonzero().squeeze(-1)
    total = 0.0
    for idx, beta, weight in ((b_idx, 1.0, 1.0), (c_idx, 0.0, ALPHA * LAM)):
        div, _ = ChunkedDivergenceFunction.apply(
            x["s_hidden"][idx], x["s_head"], None, x["t_hidden"][idx], x["t_head"], None, beta
        )
        total = total + weight * div.sum()
    loss = total / max(rows.numel(), 1)
    loss.backward()
    return loss.item()


STEPS = {
    "naive": step_naive,
    "fused": step_fused,
    "fused_zones": step_fused,
    "fused_1pass": step_single_pass,
    "chunked": step_chunked,
    "trl": step_trl,
}


def worker(config: dict) -> dict:
    device, dtype = torch.device(config["device"]), getattr(torch, config["dtype"])
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    if config.get("mem_limit_gb") and device.type == "cpu":
        limit_memory(int(config["mem_limit_gb"] * 2**30))
    name, _, chunk = config["variant"].partition("@")
    chunk = int(chunk or config["chunk"])
    x = make_inputs(config["n"], config["v"], config["hidden"], dtype, device)
    if name == "fused_zones":  # zones of a global batch, computed elsewhere: only their counts matter here
        g = torch.Generator().manual_seed(1)
        rand = torch.rand(config["n"], generator=g), torch.rand(config["n"], generator=g)
        x["zones"] = assign_zones(*rand, x["mask"].cpu()).to(device)
    if name == "fused_1pass":  # "previous step" thresholds; setup memory is not counted (peak reset)
        ent = [
            token_entropies_from_hidden(x[h], x[w], x["mask"], chunk)
            for h, w in (("t_hidden", "t_head"), ("s_hidden", "s_head"))
        ]
        x["thresholds"] = percentile_thresholds(*ent, x["mask"])
    small = {
        k: (t[: config["warmup_rows"]] if k in ("s_hidden", "t_hidden", "mask", "zones") else t) for k, t in x.items()
    }

    def step(warm: bool = False) -> float:
        _zero_grads(x)
        return STEPS[name](small if warm and config["warmup_rows"] else x, chunk)

    result = measure(step, device, config["warmup"], config["repeats"])
    result["threads"] = torch.get_num_threads()
    result["head_grad_mib"] = x["s_head"].numel() * x["s_head"].element_size() / 2**20  # returned by every variant
    return result


def drift(steps: int, momentum: float, n: int = 512, v: int = 4096, h: int = 64, lr: float = 0.05) -> dict:
    """Toy run of the single-pass mode: realised zone fractions vs targets, and agreement with exact zones.

    A fixed teacher head; the student sees a fixed linear map of the teacher's hidden states and learns
    its head with Adam on the single-pass SEAD loss (alpha annealed). Each step draws a fresh batch with
    per-token sharpness; its thresholds are a running average (``momentum``) of the previous steps'
    percentile thresholds (step 0 uses exact zones). Exact zones (``assign_zones`` on the same
    entropies) are what the two-pass loss would have used.
    """
    g = torch.Generator().manual_seed(0)
    t_head = torch.randn(v, h, generator=g) * (2.0 / h**0.5)
    proj = torch.linalg.qr(torch.randn(h, h, generator=g))[0]
    s_head = torch.nn.Parameter(torch.randn(v, h, generator=g) * (1.0 / h**0.5))
    opt = torch.optim.Adam([s_head], lr=lr)
    mask = torch.ones(n, dtype=torch.bool)
    thresholds, log = None, []
    for step in range(steps):
        t_hidden = torch.randn(n, h, generator=g) * (torch.rand(n, 1, generator=g) * 2.5 + 0.25)
        s_hidden = t_hidden @ proj
        loss, zones, ent_t, ent_s = sead_loss_single_pass(
            s_hidden, s_head, t_hidden, t_head, mask, cosine_alpha(step, steps), thresholds
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        exact = assign_zones(ent_t, ent_s, mask)
        counts = zone_counts(zones)
        log.append(
            {
                "step": step,
                **{z: counts[z] / n for z in "ABC"},
                "agree": float((zones == exact).float().mean()),
                "student_entropy": float(ent_s.mean()),
                "loss": loss.item(),
            }
        )
        now = percentile_thresholds(ent_t, ent_s, mask)
        thresholds = (
            now if thresholds is None else tuple(momentum * a + (1 - momentum) * b for a, b in zip(thresholds, now))
        )
    later = log[1:]
    targets = {"A": 0.5, "B": 0.4, "C": 0.1}
    summary = {
        f"{z}_{stat}": f(abs(r[z] - targets[z]) for r in later)
        for z in "ABC"
        for stat, f in (("mean_abs_dev", lambda it: sum(it) / len(later)), ("max_abs_dev", max))
    }
    summary["agree_mean"] = sum(r["agree"] for r in later) / len(later)
    summary["agree_min"] = min(r["agree"] for r in later)
    summary["student_entropy_first_last"] = (log[0]["student_entropy"], log[-1]["student_entropy"])
    return {"steps": steps, "momentum": momentum, "tokens_per_step": n, "vocab": v, "summary": summary, "log": log}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, nargs="+", default=[1024, 4096], help="tokens per call (N)")
    p.add_argument("--v", type=int, nargs="+", default=[49152, 151936], help="vocabulary sizes (V)")
    p.add_argument("--hidden", type=int, default=896, help="hidden size H (student and teacher)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"subset of {VARIANTS}, optional @chunk")
    p.add_argument("--chunk", type=int, default=1024, help="default chunk size (rows) of the chunked variants")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0: torch default)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--warmup-rows", type=int, default=0, help="warm up on the first ROWS tokens (0: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--quick", action="store_true", help="small sizes: N 512, V 16384, 1 warm-up, 2 repeats")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per variant subprocess")
    p.add_argument(
        "--mem-limit-gb",
        type=float,
        default=None,
        help="CPU: address-space cap per worker (default 85%% of MemAvailable); beyond it = out of memory",
    )
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print saved results (--out files) as Markdown")
    p.add_argument("--drift", type=int, default=0, metavar="STEPS", help="single-pass zone-fraction drift run")
    p.add_argument("--momentum", type=float, default=0.9, help="running-threshold momentum for --drift")
    p.add_argument("--drift-lr", type=float, default=0.01, help="student learning rate for --drift")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.report:
        for path in args.report:
            with open(path) as f:
                saved = json.load(f)
            print(f"<!-- {json.dumps(saved['meta'])} -->")
            print(ratio_table(saved["results"], keys=("N", "V"), markdown=True) + "\n")
        return
    if args.drift:
        result = drift(args.drift, args.momentum, lr=args.drift_lr)
        for row in result["log"][:: max(1, args.drift // 20)]:
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        print(json.dumps(result["summary"], indent=1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        return
    if args.quick:
        args.n, args.v, args.warmup, args.repeats = [512], [16384], 1, 2
    unknown = [v for v in args.variants if v.partition("@")[0] not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    if args.mem_limit_gb is None:
        args.mem_limit_gb = round(0.85 * available_bytes() / 2**30, 1)
    if "naive" not in args.variants:
        args.variants.insert(0, "naive")
    meta = dict(
        device=args.device,
        dtype=args.dtype,
        hidden=args.hidden,
        chunk=args.chunk,
        alpha=ALPHA,
        threads=args.threads,
        mem_limit_gb=args.mem_limit_gb,
        warmup_rows=args.warmup_rows,
        warmup=args.warmup,
        repeats=args.repeats,
        torch=torch.__version__,
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    print(f"# {json.dumps(meta)}", flush=True)
    rows = []
    for n in args.n:
        for v in args.v:
            for variant in args.variants:
                config = dict(
                    n=n,
                    v=v,
                    hidden=args.hidden,
                    variant=variant,
                    chunk=args.chunk,
                    device=args.device,
                    dtype=args.dtype,
                    warmup=args.warmup,
                    repeats=args.repeats,
                    threads=args.threads,
                    warmup_rows=args.warmup_rows,
                    mem_limit_gb=args.mem_limit_gb,
                )
                load = os.getloadavg()[0]
                result = run_worker(os.path.abspath(__file__), config, args.timeout)
                result["load_avg_1m"] = [load, os.getloadavg()[0]]  # before, after: other processes' load
                rows.append({"N": n, "V": v, "variant": variant, **result})
                print(f"# N={n} V={v} {variant}: {json.dumps(result)}", flush=True)
    print(ratio_table(rows, keys=("N", "V")))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
