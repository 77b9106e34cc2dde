"""`sead report`: loader, analysis numbers on known cases, and the HTML/PNG output on fake runs."""

from __future__ import annotations

import json
import math
import random
import zlib
from pathlib import Path

import pytest

from sead.errors import DataError
from sead.plots import zone_figure
from sead.report import SECTIONS, build_report, report_main
from sead.run_data import ZONE_LETTERS, RunData, load_run
from sead.run_numbers import fair_share_from_metrics, pooled_tokens, top_fraction_jaccard, zone_fair_share
from sead.toy import is_question, response_token_categories, zones_by_category

pytest.importorskip("matplotlib")

EVIL = "<script>alert('x')</script> & \"quotes\""


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _eval_json(model: str, acc: float) -> dict:
    bench = {"pass@1": acc, "avg@k": acc - 0.01, "pass@k": {"1": acc, "4": min(1.0, acc + 0.2)}, "n": 50, "k": 4}
    return {
        "model": model,
        "benchmarks": {"heldout": bench, "gsm8k": dict(bench, **{"pass@1": acc / 2})},
        "average": {"pass@1": 0.75 * acc},
    }


def make_run(
    root: Path,
    name: str,
    *,
    zones: bool,
    steps: int = 30,
    samples_every: int = 10,
    rollouts: int = 2,
    n_tokens: int = 60,
    evals: dict[str, dict] | None = None,
    config: bool = True,
) -> Path:
    """A fake run directory in the documented format (docs/FORMATS.md)."""
    rng = random.Random(zlib.crc32(name.encode()))
    run = root / name
    (run / "eval").mkdir(parents=True)
    method = "sead" if zones else "opd"
    if config:
        (run / "config.yaml").write_text(
            f"name: {name}\nobjective:\n  method: {method}\noptim:\n  lr: 1.0e-6\n", encoding="utf-8"
        )
    metrics = []
    for step in range(1, steps + 1):
        row = {
            "step": step,
            "loss/total": 1.0 / step + 0.05 * rng.random(),
            "loss/fkl": 0.8 / step**0.5,
            "loss/rkl": 0.6 / step**0.5,
            "optim/lr": 1e-6 * min(1.0, step / 5),
            "optim/grad_norm": rng.random(),
            "reward/mean": min(1.0, step / steps + 0.1 * rng.random()),
            "rollout/response_len_mean": 50 + step,
            "entropy/student_mean": (0.39 - 0.08 * step / steps) if not zones else 0.39 + 0.01 * rng.random(),
        }
        if zones:
            row.update(
                {
                    "zones/frac_a": 0.5,
                    "zones/frac_b": 0.4,
                    "zones/frac_c": 0.1,
                    "sched/alpha": 0.8 * (1 - step / steps),
                    "kl/fkl_share_a": 0.1,
                    "kl/fkl_share_b": 0.58,
                    "kl/fkl_share_c": 0.32,
                    "loss/zone_b": 0.6 / step,
                    "loss/zone_c": 0.4 / step,
                }
            )
        if step % 10 == 0:
            row["eval/heldout/pass@1"] = 0.3 + step / 100
        metrics.append(row)
    _write_jsonl(run / "metrics.jsonl", metrics)
    samples = []
    for step in range(samples_every, steps + 1, samples_every):
        for i in range(rollouts):
            ht = [rng.expovariate(2.0) for _ in range(n_tokens)]
            hs = [0.7 * t + rng.expovariate(4.0) for t in ht]
            if zones:
                order_t = sorted(range(n_tokens), key=lambda j: -ht[j])
                zone = [0] * n_tokens
                c_set = set(order_t[: round(0.1 * n_tokens)])
                rest = sorted((j for j in range(n_tokens) if j not in c_set), key=lambda j: -hs[j])
                for j in rest[: round(0.4 * n_tokens)]:
                    zone[j] = 1
                for j in c_set:
                    zone[j] = 2
            else:
                zone = [-1] * n_tokens
            fkl = [0.05 * rng.random() + 0.5 * t for t in ht]
            loss = [0.0 if z == 0 else f for z, f in zip(zone, fkl)]
            tokens = [EVIL if j == 3 else ("\n" if j % 17 == 0 else f" tok{j}") for j in range(n_tokens)]
            samples.append(
                {
                    "step": step,
                    "method": method,
                    "prompt": f"Question {i}? {EVIL}",
                    "response": "".join(tokens),
                    "tokens": tokens,
                    "zone": zone,
                    "teacher_entropy": ht,
                    "student_entropy": hs,
                    "loss": loss,
                    "fkl": fkl,
                    "reward": float(i % 2),
                }
            )
    _write_jsonl(run / "samples.jsonl", samples)
    for label, data in (evals or {}).items():
        (run / "eval" / f"{label}.json").write_text(json.dumps(data), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    sead = make_run(
        root,
        "sead-run",
        zones=True,
        evals={"before": _eval_json("student", 0.40), "after": _eval_json("sead-run/final", 0.55)},
    )
    opd = make_run(root, "opd-run", zones=False, evals={"after": _eval_json("opd-run/final", 0.48)})
    return [sead, opd]


@pytest.fixture(scope="module")
def two_run_report(two_runs) -> Path:
    """The report of both runs, built once (figures cost about a second each)."""
    return build_report(two_runs, two_runs[0].parent / "out")


# ---------------------------------------------------------------- analysis on known cases
def test_jaccard_known_case():
    teacher = [5, 4, 3, 2, 1, 0, 0, 0, 0, 0]  # N = 10, k = 2: top {0, 1}
    student = [0, 5, 4, 0, 0, 0, 0, 0, 0, 0]  # top {1, 2}
    assert top_fraction_jaccard(teacher, student, 0.2) == pytest.approx(1 / 3)
    assert top_fraction_jaccard(teacher, teacher, 0.2) == 1.0
    assert top_fraction_jaccard(teacher, [-x for x in teacher], 0.2) == 0.0
    # k = round(0.2 * 20) = 4: T = {0..3}, S = {2..5} -> 2 / 6
    t = [20 - i for i in range(20)]
    s = [0, 0, 30, 29, 28, 27] + [0] * 14
    assert top_fraction_jaccard(t, s, 0.2) == pytest.approx(2 / 6)
    # ties go to the earlier token; non-finite tokens are left out
    assert top_fraction_jaccard([1, 1, 1, 1, 1], [0, 0, 0, 0, 9], 0.2) == 0.0
    assert top_fraction_jaccard([9, math.nan, 1, 1, 1], [9, 100, 1, 1, 1], 0.25) == 1.0
    assert math.isnan(top_fraction_jaccard([], []))


def test_fair_share_known_case():
    zone = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, -1]
    fkl = [0.1] * 5 + [1.0] * 3 + [3.25] * 2 + [100.0]  # sums A 0.5, B 3, C 6.5 of 10; the -1 token is left out
    shares = zone_fair_share(fkl, zone)
    assert [shares[z].tokens for z in (0, 1, 2)] == [5, 3, 2]
    assert [shares[z].token_share for z in (0, 1, 2)] == pytest.approx([0.5, 0.3, 0.2])
    assert [shares[z].loss_share for z in (0, 1, 2)] == pytest.approx([0.05, 0.3, 0.65])
    assert [shares[z].ratio for z in (0, 1, 2)] == pytest.approx([0.1, 1.0, 3.25])
    assert zone_fair_share([1.0, 2.0], [-1, -1]) == {}
    assert math.isnan(zone_fair_share([1.0], [1])[0].ratio)  # zone A has no tokens


def test_fair_share_from_metrics():
    run = RunData(
        Path("."),
        "r",
        "sead",
        metrics=[
            {"step": 1, "zones/frac_a": 0.5, "kl/fkl_share_a": 0.1, "zones/frac_c": 0.1, "kl/fkl_share_c": 0.3},
            {"step": 2, "zones/frac_a": 0.5, "kl/fkl_share_a": 0.2},
        ],
    )
    ratios = fair_share_from_metrics(run)
    assert ratios[0] == ([1, 2], pytest.approx([0.2, 0.4]))
    assert ratios[2] == ([1], pytest.approx([3.0]))
    assert 1 not in ratios


# ---------------------------------------------------------------- loader
def test_load_run(two_runs):
    sead, opd = (load_run(p) for p in two_runs)
    assert (sead.name, sead.method, opd.method) == ("sead-run", "sead", "opd")
    assert sead.has_zones and not opd.has_zones
    assert sorted(sead.evals) == ["after", "before"]
    assert len(sead.metrics) == 30 and sead.series("zones/frac_c")[1][0] == 0.1
    assert [s.step for s in sead.latest_samples()] == [30, 30]


def test_load_run_tolerates_partial_files(tmp_path):
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "loss/total": 1.0}\n{"step": 1, "eval/x/pass@1": 0.5}\n{"step": 2, "lo', encoding="utf-8"
    )
    (run / "samples.jsonl").write_text(
        json.dumps({"step": 1, "tokens": ["a", "b"], "zone": [1], "fkl": [0.1, 0.2, 9]}) + "\n"
    )
    data = load_run(run)
    assert data.name == "crashed" and data.method == "unknown"
    assert data.metrics == [{"step": 1, "loss/total": 1.0, "eval/x/pass@1": 0.5}]  # same step merged
    assert any("skipped 1" in n for n in data.notes)
    assert data.samples[0].zone == [1, -1] and data.samples[0].fkl == [0.1, 0.2]
    assert "config.yaml" in data.missing and "eval/*.json" in data.missing
    (run / "eval").mkdir()
    for tag in ("step-100", "final", "step-20", "before", "broken"):
        (run / "eval" / f"{tag}.json").write_text("{" if tag == "broken" else json.dumps(_eval_json(tag, 0.5)))
    (run / "eval" / "final.samples.jsonl").write_text("{}\n")
    data = load_run(run)
    assert list(data.evals) == ["before", "step-20", "step-100", "final"]
    assert any("eval/broken.json: unreadable" in n for n in data.notes)
    with pytest.raises(DataError, match="does not exist"):
        load_run(tmp_path / "nope")


# ---------------------------------------------------------------- HTML + PNG
def test_report_two_runs(two_runs, two_run_report):
    out = two_run_report
    assert out == two_runs[0].parent / "out" / "report.html"
    text = out.read_text(encoding="utf-8")
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in text
    pngs = sorted(p.name for p in out.parent.glob("*.png"))
    assert pngs == [
        "entropy_student.png",
        "methods_overlay.png",
        "tokens_opd-run.png",
        "tokens_sead-run.png",
        "training_opd-run.png",
        "training_sead-run.png",
        "zones_sead-run.png",
    ]
    assert "Methods on shared axes" in text  # two methods: one overlay figure before the per-run curves
    assert all((out.parent / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert text.count("data:image/png;base64,") == len(pngs)
    # self-contained and escaped: no scripts, no external resources; the evil token/prompt shows as text
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    # zoneless run says so instead of drawing zones; Jaccard reported for both runs
    assert "opd-run (opd) has no token zones" in text
    assert 'id="jaccard-sead-run"' in text and 'id="jaccard-opd-run"' in text
    # eval table: every file of every run, labelled
    eval_part = text[text.index('<section id="eval">') :]
    labels = ("sead-run</td><td>before", "sead-run</td><td>after", "opd-run</td><td>after")
    assert sorted(labels, key=eval_part.index) == list(labels)  # every file, "before" first
    assert "55.0" in eval_part and "gsm8k" in eval_part


def test_report_fair_share_table_matches_samples(two_runs, two_run_report):
    text = two_run_report.read_text(encoding="utf-8")
    tok = pooled_tokens(load_run(two_runs[0]).samples)
    ratio_c = zone_fair_share(tok["fkl"], tok["zone"])[2].ratio
    assert ratio_c > 1.5  # zone C (highest teacher entropy) carries more than its share in the fake run
    assert "<td>C</td><td>36</td><td>10.0</td>" in text and f"<td>{ratio_c:.2f}×</td>" in text
    jac = top_fraction_jaccard(tok["teacher_entropy"], tok["student_entropy"], 0.2)
    assert f"student-entropy tokens: {100 * jac:.1f}%" in text


def test_report_default_out_and_missing_data(tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"step": 1, "loss/total": 2.0}\n', encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    for run in (bare, empty):  # both carry the default config name: the report tells them apart by folder
        (run / "config.yaml").write_text("name: sead\nobjective: {method: opd}\n", encoding="utf-8")
    # one run: default RUN/report/report.html (html path given: figures go next to it)
    assert build_report([empty]) == empty / "report" / "report.html"
    assert build_report([empty], tmp_path / "x" / "r.html") == tmp_path / "x" / "r.html"
    # CLI entry with an argv list; several runs default to <parent of the first>/report/
    assert report_main([str(bare), str(empty), "--rollouts", "1"]) == 0
    text = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "report:" in capsys.readouterr().out
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "Not available: sead [bare] has no samples.jsonl" in text
    assert "Not available: sead [empty] has no metrics.jsonl rows" in text
    assert "Not available: no run logged entropy/student_mean" in text
    assert "Not available: no run has eval/*.json" in text


def test_overlay_groups_methods_and_alpha_belongs_to_sead_only(tmp_path):
    from sead.comparison_plots import method_overlay, overlay_caption
    from sead.plots import uses_alpha
    from sead.run_data import RunData

    def run(name, method, reward, curriculum=False):
        cfg = {
            "objective": {"method": method, "curriculum": curriculum},
            "curriculum": {"sampler": "competence" if curriculum else "uniform"},
        }
        rows = [{"step": s, "reward/mean": reward + 0.01 * s, "sched/alpha": 0.8} for s in range(1, 21)]
        return RunData(path=tmp_path / name, name=name, method=method, config=cfg, metrics=rows)

    runs = [run("opd-s0", "opd", 0.2), run("opd-s1", "opd", 0.4), run("sead-s0", "sead", 0.5, curriculum=True)]
    fig = method_overlay(runs)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["opd (2 runs)", "sead (1 run)"]
    opd_mean = ax.get_lines()[0].get_ydata()
    assert abs(opd_mean[10] - (0.3 + 0.11)) < 1e-9  # the mean of the two seeds, smoothed over a linear ramp
    assert method_overlay(runs[:2]) is None  # one method: nothing to compare
    assert "curriculum (sead)" in overlay_caption(runs) and "curriculum" not in overlay_caption(runs[:2])
    assert uses_alpha(runs[2]) and not uses_alpha(runs[0])


# ---------------------------------------------------------------- demo-task table, paper markers
def _demo_run(root: Path, objective: dict) -> Path:
    """Two logged rollouts of the embedded demo task, zones and teacher entropies set by hand."""
    run = root / "demo-run"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"name": "demo-run", "objective": objective}), encoding="utf-8")
    _write_jsonl(run / "metrics.jsonl", [{"step": 1, "loss/total": 1.0}])
    tokens = list("1+2=3.A:3") + ["<eos>"]  # step start, syntax, operand, syntax, computation, 4 syntax, ...
    rows = []
    for prompt, zone in (("1+2=", [2, 0, 1, 0, 1, 0, 0, 0, 1, 0]), ("4-1=", [1, 0, 0, 0, 2, 1, 0, 0, 1, 0])):
        n = len(tokens)
        rows.append(
            {
                "step": 1,
                "method": "sead",
                "prompt": prompt,
                "response": "".join(tokens[:-1]),
                "tokens": tokens,
                "zone": zone,
                "teacher_entropy": [0.3] + [0.1] * (n - 1),
                "student_entropy": [0.2] * n,
                "loss": [0.1] * n,
                "fkl": [0.5 if z == 2 else 0.1 for z in zone],
                "reward": 1.0,
            }
        )
    _write_jsonl(run / "samples.jsonl", rows)
    return run


def test_zone_by_category_table_on_a_demo_run_and_no_paper_markers_for_threshold_zones(tmp_path):
    run = _demo_run(tmp_path, {"method": "sead", "zone_mode": "threshold"})
    text = build_report([run]).read_text(encoding="utf-8")
    assert 'id="categories-demo-run"' in text and "P(zone | token category)" in text
    # category, tokens, token share %, teacher entropy, zone A/B/C % (20 tokens: 2 step start, 2 operand,
    # 4 computation, 12 syntax; e.g. computation zones 1, 1, 2, 1 -> B 75%, C 25%)
    for row in (
        "step start</td><td>2</td><td>10.0</td><td>0.300</td><td>0.0</td><td>50.0</td><td>50.0",
        "operand</td><td>2</td><td>10.0</td><td>0.100</td><td>50.0</td><td>50.0</td><td>0.0",
        "computation</td><td>4</td><td>20.0</td><td>0.100</td><td>0.0</td><td>75.0</td><td>25.0",
        "syntax</td><td>12</td><td>60.0</td><td>0.100</td><td>91.7</td><td>8.3</td><td>0.0",
    ):
        assert f"<td>{row}</td>" in text, row
    # threshold zones are not the paper's percentile zones: no paper column, markers or 90% reference
    zones_part = text[text.index('<section id="zones">') : text.index('<section id="tokens">')]
    assert "no paper markers: its zones are not the paper&#x27;s 50/40/10 percentile zones" in zones_part  # escaped
    assert "<th>paper</th>" not in zones_part and "paper: about 90%" not in zones_part


def test_no_category_table_without_demo_prompts_and_markers_with_paper_zones(two_run_report):
    text = two_run_report.read_text(encoding="utf-8")
    assert "P(zone | token category)" not in text and 'id="categories-' not in text  # prompts are not demo questions
    zones_part = text[text.index('<section id="zones">') : text.index('<section id="tokens">')]
    assert "black ticks: the SEAD paper" in zones_part and "<th>paper</th>" in zones_part
    assert "<td>3.19×</td>" in zones_part and "paper: about 90%" in zones_part


def test_zone_figure_draws_paper_markers_only_for_the_paper_zone_rule(two_runs):
    run = load_run(two_runs[0])
    tok = pooled_tokens(run.samples)
    shares = zone_fair_share(tok["fkl"], tok["zone"])

    def marker_labels(config):
        run.config = config
        ax = zone_figure(run, shares, {}).axes[2]
        return [line.get_label() for line in ax.get_lines() if "paper" in line.get_label()]

    assert marker_labels({"objective": {"method": "sead"}}) == ["paper (OLMo-3-7B)"]  # defaults: 50/40/10 percentile
    assert marker_labels({"objective": {"fractions": [0.5, 0.4, 0.1], "zone_mode": "percentile"}}) == [
        "paper (OLMo-3-7B)"
    ]
    assert marker_labels({"objective": {"fractions": [0.6, 0.3, 0.1]}}) == []
    assert marker_labels({"objective": {"zone_mode": "threshold"}}) == []
    assert marker_labels({}) == []  # no config.yaml: the zone rule is unknown


def test_demo_category_helpers():
    assert is_question("98+93-77=") and not is_question("Compute 98+93-77=")
    assert response_token_categories(["1", "+", "2", "<eos>"]) == ["step start", "syntax", "operand", "syntax"]
    assert response_token_categories(["12", "+"]) is None  # another tokenizer's pieces: no per-character split
    table = zones_by_category(["operand", "operand", "syntax"], [1, -1, 0], [0.2, 9.0, 0.0], ZONE_LETTERS)
    assert table == {
        "operand": {"tokens": 1, "share": 0.5, "teacher_entropy": 0.2, "p_zone": {"A": 0, "B": 1, "C": 0}},
        "syntax": {"tokens": 1, "share": 0.5, "teacher_entropy": 0.0, "p_zone": {"A": 1, "B": 0, "C": 0}},
    }
