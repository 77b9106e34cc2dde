"""The method registry: every name has a complete record, and a new method is one record (docs/DESIGN.md)."""

from __future__ import annotations

import pytest
import torch
from tiny import save_addition_run

from sead import methods
from sead.config import load_config
from sead.errors import ConfigError
from sead.methods import METHOD_NAMES, METHODS, Method, get_method, loss_method, reads_alpha
from sead.metrics import read_metrics
from sead.scoring import fused_kind_ok
from sead.trainer import Trainer


# ------------------------------------------------------------------ the worked example of docs/DESIGN.md
def tvd_token_losses(cfg, student_BRV, teacher_BRV, targets_BR, mask_BR, zones_BR, alpha):
    """Total variation distance 0.5 * sum_v |p_s(v) - p_t(v)| per response position: (B, R)."""
    p_s = torch.softmax(student_BRV.float(), dim=-1)
    p_t = torch.softmax(teacher_BRV.float(), dim=-1)
    tvd = 0.5 * (p_s - p_t).abs().sum(-1)
    return torch.where(mask_BR.bool(), tvd, torch.zeros_like(tvd))


TVD = Method("tvd", "total variation distance between student and teacher, every token", token_losses=tvd_token_losses)


@pytest.fixture
def tvd_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "tvd", TVD)
    return TVD


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return save_addition_run(root)


def _overrides(assets, out, method):
    return [
        f"model.student={assets['student']}",
        f"model.teacher={assets['teacher']}",
        f"data.path={assets['data']}",
        "data.prompt_field=question",
        "data.template={problem}",
        "rollout.chat_template=off",
        "rollout.max_new_tokens=6",
        f"objective.method={method}",
        "train.steps=2",
        "train.batch_size=4",
        "train.micro_batch_size=2",
        "train.save_every=10",
        "optim.lr=1e-2",
        "logging.progress=false",
        f"train.output_dir={out}",
    ]


def test_one_record_is_a_new_method_end_to_end(assets, tmp_path, tvd_registered):
    cfg = load_config(None, _overrides(assets, tmp_path / "tvd", "tvd"))  # config validation asks the registry
    assert fused_kind_ok(cfg.objective)[0] is False  # no fused weights: the logits path, with the reason
    trainer = Trainer(cfg).setup()
    assert trainer.backend.name == "logits"
    before = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.student).state_dict().items()}
    trainer.train()
    after = trainer.accelerator.unwrap_model(trainer.student).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the TVD gradient moved the student
    records = read_metrics(tmp_path / "tvd" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(r["loss/total"] > 0 for r in records)


def test_unregistered_method_is_refused_by_config(assets, tmp_path):
    with pytest.raises(ConfigError, match="objective.method='tvd' is unknown"):
        load_config(None, _overrides(assets, tmp_path / "x", "tvd"))


def test_tvd_token_losses_match_the_definition():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = tvd_token_losses(None, s, t, None, mask, None, 0.0)
    p, q = s.softmax(-1), t.softmax(-1)
    for b in range(2):
        for r in range(3):
            want = 0.5 * (p[b, r] - q[b, r]).abs().sum() if mask[b, r] else torch.tensor(0.0)
            torch.testing.assert_close(got[b, r], want)


# ------------------------------------------------------------------ the shipped records
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_record_is_complete(name):
    method = get_method(name)
    assert method.name == name and method.summary
    assert method.teacher in ("model", "self", "none") and method.step in ("distill", "grpo")
    if method.step == "distill":  # a distillation step needs a per-token loss, its own or another method's
        assert method.token_losses is not None or method.loss_from is not None
    if method.teacher != "model":
        assert method.needs_answers  # GRPO rewards and OPSD's privileged context both need the answer
    for knob in method.knobs:
        assert knob in methods.ObjectiveConfig.__dataclass_fields__, (name, knob)


def test_opsd_trains_with_its_divergence_record():
    cfg = methods.ObjectiveConfig(method="opsd", opsd_divergence="sead")
    assert loss_method(cfg) is METHODS["sead"] and methods.uses_zone_loss(cfg)
    assert reads_alpha("opsd", {"opsd_divergence": "sead"}) and not reads_alpha("opsd", {})
    assert reads_alpha("sead", {}) and not reads_alpha("eopd", {}) and not reads_alpha("unknown", {})


def test_get_method_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered: opd, rkl"):
        get_method("nope")
