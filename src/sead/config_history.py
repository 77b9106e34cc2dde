"""Which steps of a run ran with which config, once ``train.force_resume=true`` changed it.

``RUN/config.yaml`` holds the config the run continues with. When a forced resume from step S
changes settings, ``RUN/config_history.jsonl`` gets one line per stretch of steps, oldest first:
``{"from_step": F, "changed": {"optim.lr": [old, new]}, "config": {...}}``; a stretch runs from
step F to the next line's F - 1 (the last to the end), and the first line (F = 1) has no
"changed". A restart from step S drops the stretches that began after S, as those steps are run
again; with one stretch left the file is removed (``config.yaml`` then says it all).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sead.config import config_to_dict, save_config
from sead.jsonio import read_jsonl, write_jsonl
from sead.run_dir import RESUME_FREE, config_diff

__all__ = ["HISTORY_NAME", "save_run_config"]

HISTORY_NAME = "config_history.jsonl"


def _value(config: dict, dotted: str):
    section, key = dotted.split(".", 1)
    return (config.get(section) or {}).get(key)


def save_run_config(run_dir: Path, cfg, step: int) -> None:
    """Write ``RUN/config.yaml`` for a run (re)starting at ``step`` and keep the history (module doc)."""
    run_dir = Path(run_dir)
    saved, history_path = run_dir / "config.yaml", run_dir / HISTORY_NAME
    new = config_to_dict(cfg)
    if history_path.exists():
        history = read_jsonl(history_path, on_bad_line=None)
    elif saved.exists():
        history = [{"from_step": 1, "config": yaml.safe_load(saved.read_text(encoding="utf-8")) or {}}]
    else:
        history = []
    kept = [h for h in history if isinstance(h.get("from_step"), int) and h["from_step"] <= step] if step > 0 else []
    if kept:
        changed = config_diff(kept[-1].get("config") or {}, new, RESUME_FREE)
        if changed:
            old = kept[-1].get("config") or {}
            kept.append(
                {
                    "from_step": step + 1,
                    "changed": {k: [_value(old, k), _value(new, k)] for k in changed},
                    "config": new,
                }
            )
    if len(kept) > 1:
        write_jsonl(history_path, kept, durable=True)
    elif history_path.exists():
        history_path.unlink()
    save_config(cfg, saved)
