"""Write ``configs/<method>.yaml``: one recipe per method on the shipped tiny models.

    python recipes/write_configs.py            # rewrites configs/*.yaml
    python recipes/write_configs.py --check    # exit 1 if a file differs from what would be written

Every training setting comes from ``sead.demo.demo_config`` (the settings ``sead demo`` runs with), so
the recipes and the demo cannot drift apart; only the locations differ (paths relative to the
repository root, ``runs/tiny-<method>``) and the recipes evaluate greedily every 20 steps.
``tests/test_configs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from sead.config import METHODS
from sead.demo import PRESETS, demo_config

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path("src/sead/assets/demo")


def recipe(method: str) -> dict:
    """The ``configs/<method>.yaml`` content as a dict."""
    steps, prompts, _, _ = PRESETS["tiny"]
    cfg = demo_config(Path("."), method, steps, 0, prompts, Path("runs/tiny-difficulty.jsonl"), "tiny")
    cfg["name"] = f"tiny-{method}"
    cfg["model"] = {"student": str(ASSETS / "student"), "teacher": str(ASSETS / "teacher")}
    cfg["data"]["path"] = str(ASSETS / "data" / "train.jsonl")
    cfg["eval"].update({"data": [f"heldout={ASSETS / 'data' / 'heldout.jsonl'}"], "k": 0, "every": 20})
    cfg["train"].update({"output_dir": f"runs/tiny-{method}", "save_every": 20, "keep_checkpoints": 2})
    cfg["curriculum"]["estimate_k"] = PRESETS["tiny"][2]
    return cfg


def render(method: str) -> str:
    head = (f"# sead train --config configs/{method}.yaml   (shipped tiny models; override any key: key=value)\n"
            "# Written by recipes/write_configs.py from sead.demo.demo_config: edit that, not this file.\n")
    return head + yaml.safe_dump(recipe(method), sort_keys=False, default_flow_style=False, width=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "configs")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    stale = []
    for method in METHODS:
        path, text = args.out / f"{method}.yaml", render(method)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python recipes/write_configs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
