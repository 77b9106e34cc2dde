"""HTML building blocks of ``sead report``: escaping, tables, rollouts coloured by zone, inlined figures, the style."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

from sead import plots
from sead.run_data import ZONE_COLORS, ZONE_NAMES, Sample
from sead.zones import MASKED

__all__ = [
    "esc",
    "pct",
    "make_slug",
    "missing_note",
    "html_table",
    "render_rollout",
    "rollout_legend",
    "CSS",
    "Figures",
]


def esc(text) -> str:
    """``text`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def pct(x: float | None, digits: int = 1) -> str:
    """A 0-1 fraction as a percentage without the sign; a dash when missing."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def make_slug(text: str, taken: set[str]) -> str:
    """An HTML id from ``text``, unique among ``taken`` (which it joins)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "run"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def missing_note(text: str) -> str:
    """The note a section shows in place of what is missing."""
    return f'<p class="missing">Not available: {esc(text)}</p>'


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table of already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_rollout(sample: Sample, max_tokens: int = 1500, scale: float | None = None) -> str:
    """A rollout as HTML: each token's background coloured by zone, opacity by |per-token loss|."""
    losses = [abs(x) for x in sample.loss if math.isfinite(x)]
    scale = scale or (max(losses) if losses and max(losses) > 0 else 1.0)
    spans = []
    for i, tok in enumerate(sample.tokens[:max_tokens]):
        z, loss = sample.zone[i], sample.loss[i]
        alpha = 0.12 + 0.78 * min(1.0, abs(loss) / scale) if math.isfinite(loss) else 0.12
        c = ZONE_COLORS.get(z, ZONE_COLORS[MASKED])
        rgba = f"rgba({int(c[1:3], 16)},{int(c[3:5], 16)},{int(c[5:7], 16)},{alpha:.2f})"
        tip = (
            f"zone {ZONE_NAMES.get(z, z)} | loss {loss:.4g} | fkl {sample.fkl[i]:.4g} | "
            f"H_teacher {sample.teacher_entropy[i]:.3g} | H_student {sample.student_entropy[i]:.3g}"
        )
        spans.append(f'<span class="tok" style="background:{rgba}" title="{esc(tip)}">{esc(tok)}</span>')
    more = len(sample.tokens) - max_tokens
    tail = f'<span class="more"> … {more} more tokens not shown</span>' if more > 0 else ""
    reward = "–" if sample.reward is None else f"{sample.reward:g}"
    return (
        f'<div class="rollout"><div class="meta">step {sample.step} · method {esc(sample.method or "?")} · '
        f"{len(sample.tokens)} tokens · reward {reward}</div>"
        f"<details><summary>prompt</summary><pre>{esc(sample.prompt)}</pre></details>"
        f'<div class="text">{"".join(spans)}{tail}</div></div>'
    )


def rollout_legend() -> str:
    """The colour key shown above the rollouts."""
    sw = "".join(
        f'<span class="tok" style="background:{ZONE_COLORS[z]}">&nbsp;{n}&nbsp;</span> '
        for z, n in (
            (0, "Zone A (skipped)"),
            (1, "Zone B (reverse KL)"),
            (2, "Zone C (forward KL)"),
            (MASKED, "no zone"),
        )
    )
    return (
        f'<p class="legend">{sw} — opacity grows with the token\'s |loss| (faint = small, solid = the '
        f"largest loss in the rollout). Hover a token for its numbers.</p>"
    )


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:auto;
padding:1em 2em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:2em;
border-bottom:1px solid #eee}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}.missing{color:#a33;font-style:italic}
.note{color:#666;font-size:.9em}.tok{border-radius:2px}.rollout{border:1px solid #ddd;border-radius:6px;
padding:.6em;margin:1em 0}.rollout .text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.88em;line-height:1.6}.meta{color:#555;font-size:.9em}.more{color:#888}nav a{margin-right:1em}
pre{white-space:pre-wrap}.small{color:#666;font-size:.85em}"""


class Figures:
    """Saves each figure as PNG under ``out_dir`` and returns the <figure> tag that inlines it."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.written = out_dir, []

    def add(self, fig, name: str, caption: str) -> str:
        data = plots.to_png(fig)
        path = self.out_dir / f"{name}.png"
        path.write_bytes(data)
        self.written.append(path)
        return (
            f'<figure id="fig-{esc(name)}"><img alt="{esc(caption)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
