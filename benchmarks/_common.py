"""Shared benchmark plumbing: one subprocess per measurement, peak memory, timing, ratio tables.

Memory is the *extra* peak over what exists after the inputs and parameters are allocated:
on CPU the peak resident set size (``resource.getrusage``; the high-water mark is reset with
``/proc/self/clear_refs`` after setup where Linux allows it) minus the resident size at that point;
on CUDA ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` after setup.
Each measurement runs in its own process so allocator caches and high-water marks never leak
between variants.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

MiB = 1024.0 * 1024.0


def available_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


def limit_memory(extra_bytes: int) -> None:
    """Cap this process's address space at its current size + ``extra_bytes``.

    An allocation beyond it raises a clean "can't allocate" error in this worker instead of
    waking the kernel's OOM killer on a machine shared with other work.
    """
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, vm + extra_bytes))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Extra peak memory (bytes) over the moment :meth:`start` is called."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.reset_ok = True

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.reset_ok = _reset_peak_rss()
            self.baseline = _rss_bytes()

    def extra(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step: Callable[..., float], device: torch.device, warmup: int, repeats: int) -> dict:
    """Run ``step(warm)`` (one forward+backward, returns the loss) ``warmup + repeats`` times.

    The peak covers every run; times are medians of the ``repeats`` timed runs: wall clock and
    process CPU time (all threads; robust to other processes sharing the cores, and equal to the
    wall time for one uncontended thread).
    """
    memory = PeakMemory(device)
    memory.start()
    times, cpu_times, loss = [], [], float("nan")
    for i in range(warmup + repeats):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step(i < warmup)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "extra_mib": memory.extra() / MiB,
        "time_s": statistics.median(times) if times else float("nan"),
        "cpu_s": statistics.median(cpu_times) if cpu_times else float("nan"),
        "times_s": times,
        "loss": loss,
        "peak_reset": memory.reset_ok,
    }


def run_worker(script: str, config: dict, timeout_s: float) -> dict:
    """Run ``script --worker JSON`` in a fresh interpreter; its last stdout line is a JSON result."""
    cmd = [sys.executable, script, "--worker", json.dumps(config)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout_s:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        if "alloc" in tail.lower() or "out of memory" in tail.lower():
            tail = f"out of memory (cap {config.get('mem_limit_gb')} GiB): {tail}"
        return {"error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def ratio_table(rows: list[dict], keys: tuple[str, ...], baseline: str = "naive", markdown: bool = False) -> str:
    """Text (or Markdown) table with memory and time ratios against ``baseline`` of the same size.

    Rows with ``head_grad_mib`` (the size of the head gradient every variant must return) get one more
    column: the memory ratio without it, i.e. of the working memory alone.
    """
    grad_col = any("head_grad_mib" in r for r in rows)
    head = [
        *keys,
        "variant",
        "extra MiB",
        "mem/naive",
        *(["mem/naive w/o grad"] if grad_col else []),
        "wall s",
        "wall/naive",
        "cpu s",
        "cpu/naive",
        "loss",
    ]
    lines = [head]
    for row in rows:
        base = next((r for r in rows if r["variant"] == baseline and all(r[k] == row[k] for k in keys)), None)
        size = [str(row[k]) for k in keys]
        if "error" in row:
            lines.append([*size, row["variant"], row["error"][:60], *[""] * (len(head) - len(keys) - 2)])
            continue
        ok = base is not None and "error" not in base
        mem = [f"{row['extra_mib'] / base['extra_mib']:.3f}" if ok and base["extra_mib"] > 0 else "-"]
        if grad_col:
            grad = row.get("head_grad_mib", 0.0)
            net = ok and base["extra_mib"] - grad > 0
            mem.append(f"{(row['extra_mib'] - grad) / (base['extra_mib'] - grad):.3f}" if net else "-")
        wall_ratio = f"{row['time_s'] / base['time_s']:.3f}" if ok else "-"
        cpu_ratio = f"{row['cpu_s'] / base['cpu_s']:.3f}" if ok else "-"
        lines.append(
            [
                *size,
                row["variant"],
                f"{row['extra_mib']:.0f}",
                *mem,
                f"{row['time_s']:.2f}",
                wall_ratio,
                f"{row['cpu_s']:.2f}",
                cpu_ratio,
                f"{row['loss']:.6f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    if markdown:
        lines.insert(1, ["---:"] * len(head))
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)
