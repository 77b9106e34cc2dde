"""Measure the entropy structure of the shipped demo models on the student's own samples.

    python tools/analyse_demo.py            # adds "analysis" to assets/demo/manifest.json, re-renders README

What on-policy distillation sees at its first step: the student samples answers to training
prompts (temperature 0.7), both models score every response token, and we report the teacher's
mean entropy and the share of its tokens above 0.5 nats, how often the student's greedy answer
takes its wrong right-to-left path, P(zone | token category) for SEAD's default percentile
zones over the whole batch (the paper's Table 3), and each zone's share of the forward KL, the
reverse KL and of SEAD's first-step loss divided by its share of tokens (1 = fair share).
Seeded and single-threaded: the same numbers on every run with the same torch build.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sead import toy, toy_models
from sead.divergence import entropy, forward_kl, reverse_kl
from sead.jsonio import read_jsonl
from sead.zones import Zone, assign_zones

ROOT = Path(__file__).resolve().parents[1]
ZONES = {int(z): z.name for z in Zone}


def _score(model, ids_B_T, mask_B_T):
    with torch.no_grad():
        return model(input_ids=ids_B_T, attention_mask=mask_B_T).logits.float()


def analyse(asset_dir: Path, n_prompts: int = 512, seed: int = 0, temperature: float = 0.7, alpha: float = 0.8) -> dict:
    tok = toy_models.build_tokenizer()
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(asset_dir / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(asset_dir / "student").eval()
    items = read_jsonl(asset_dir / "data" / "train.jsonl")[:n_prompts]
    heldout = read_jsonl(asset_dir / "data" / "heldout.jsonl")
    torch.manual_seed(seed)
    tok.padding_side = "left"
    enc = tok([it["question"] for it in items], return_tensors="pt", padding=True)
    with torch.no_grad():
        gen_B_T = student.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=toy.MAX_NEW_TOKENS,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    prompt_len = enc["input_ids"].shape[1]
    resp_B_R = gen_B_T[:, prompt_len:]
    # Response mask: tokens up to and including the first eos.
    is_eos = resp_B_R == tok.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask_B_R = (~after_eos) & (resp_B_R != tok.pad_token_id)
    attn_B_T = torch.cat([enc["attention_mask"], mask_B_R.long()], 1)
    # Logits at position t predict token t+1: the response's predictions start at prompt_len - 1.
    t_logits = _score(teacher, gen_B_T, attn_B_T)[:, prompt_len - 1 : -1]
    s_logits = _score(student, gen_B_T, attn_B_T)[:, prompt_len - 1 : -1]
    h_t, h_s = entropy(t_logits), entropy(s_logits)
    zones_B_R = assign_zones(h_t, h_s, mask_B_R, (0.5, 0.4, 0.1))
    fkl, rkl = forward_kl(s_logits, t_logits), reverse_kl(s_logits, t_logits)

    cats = []
    for b in range(resp_B_R.shape[0]):  # the whole row; masked positions are dropped below
        cats += toy.response_token_categories(tok.convert_ids_to_tokens(resp_B_R[b].tolist()))
    cats_N = [c for c, v in zip(cats, mask_B_R.reshape(-1).tolist()) if v]
    zones_N = zones_B_R.reshape(-1)[mask_B_R.reshape(-1)].tolist()
    h_t_N, fkl_N, rkl_N = (x.reshape(-1)[mask_B_R.reshape(-1)] for x in (h_t, fkl, rkl))
    n = len(zones_N)
    by_cat = toy.zones_by_category(cats_N, zones_N, h_t_N.tolist(), ZONES)
    z_t = torch.tensor(zones_N)
    sead_loss = torch.where(z_t == 1, rkl_N, torch.where(z_t == 2, alpha * fkl_N, torch.zeros_like(rkl_N)))
    concentration = {}
    for z, name in ZONES.items():
        sel = z_t == z
        share = float(sel.float().mean())
        concentration[name] = {
            "token_share": share,
            **{
                key: float(v[sel].sum() / v.sum()) / share if share else None
                for key, v in (("fkl", fkl_N), ("rkl", rkl_N), ("sead_loss", sead_loss))
            },
        }
    greedy = toy_models.greedy_responses(student, tok, [it["question"] for it in heldout])
    rtl = sum(
        r == toy.right_to_left_solution(it["question"][:-1]) and r != it["solution"] for r, it in zip(greedy, heldout)
    )
    return {
        "prompts": n_prompts,
        "tokens": n,
        "temperature": temperature,
        "seed": seed,
        "alpha": alpha,
        "teacher_entropy_mean": float(h_t_N.mean()),
        "teacher_entropy_gt_0.5": float((h_t_N > 0.5).float().mean()),
        "student_entropy_mean": float(h_s.reshape(-1)[mask_B_R.reshape(-1)].mean()),
        "by_category": by_cat,
        "concentration": concentration,
        "student_greedy_right_to_left": rtl / len(heldout),
        "sampled_reward": sum(
            toy.verify(t, it["answer"]) for t, it in zip(tok.batch_decode(resp_B_R, skip_special_tokens=True), items)
        )
        / len(items),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--assets", type=Path, default=ROOT / "src" / "sead" / "assets" / "demo")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--demo", type=Path, help="also record this `sead demo` results.json (the measured lift)")
    ap.add_argument("--no-analysis", action="store_true", help="only record --demo")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    manifest_path = args.assets / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    result = None
    if not args.no_analysis:
        result = manifest["analysis"] = analyse(args.assets, args.prompts)
    if args.demo:
        d = json.loads(args.demo.read_text())
        manifest["demo"] = {
            k: d[k]
            for k in (
                "steps",
                "batch_size",
                "lr",
                "seeds",
                "n_eval",
                "before",
                "teacher",
                "after",
                "per_seed",
                "total_s",
            )
        }
        manifest["demo"].update({k: d["summary"][k] for k in ("vs_before", "gap_closed")})
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    sys.path.insert(0, str(ROOT / "recipes"))
    from build_demo_models import render_readme

    (args.assets / "README.md").write_text(render_readme(manifest))
    print(json.dumps(result or manifest["demo"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
