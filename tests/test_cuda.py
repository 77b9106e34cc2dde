"""CUDA smoke tests, skipped without a GPU (CI has none): run ``python -m pytest tests/test_cuda.py``
on any CUDA machine before trusting GPU numbers.

The fused kernels on the GPU against the float32 CPU reference (values, gradients, zones), in
float32 and bfloat16 (which takes the float32 head-gradient accumulation path), and a few trainer
steps of the fused methods end to end.
"""

from __future__ import annotations

import math

import pytest
import torch
from kill_resume import make_assets
from test_fused import grads, make, reference_sead
from test_trainer import run

from sead import fused_losses
from sead.metrics import read_metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=5e-2, atol=2e-3)}


def _to_cuda(inputs):
    s_hidden, s_head, t_hidden, t_head, mask = inputs
    return (
        s_hidden.detach().cuda().requires_grad_(),
        s_head.detach().cuda().requires_grad_(),
        t_hidden.cuda(),
        t_head.cuda(),
        mask.cuda(),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_fused_sead_on_cuda_matches_the_cpu_reference(dtype, chunk_size):
    cpu = make(n=300, h=64, h_t=48, v=5003, v_t=5010, dtype=dtype, seed=71)
    ref_loss, ref_zones, ref_grads = reference_sead(cpu, alpha=0.6)
    gpu = _to_cuda(cpu)
    _, zones = fused_losses.sead_loss_from_hidden(*gpu, alpha=0.6, chunk_size=chunk_size)
    # GPU and CPU matmuls round differently: near-equal entropies may swap zones, rarely.
    assert zones.device.type == "cuda" and (zones.cpu() != ref_zones).float().mean() < 0.02
    loss, _ = fused_losses.sead_loss_from_hidden(*gpu, alpha=0.6, chunk_size=chunk_size, zones=ref_zones.cuda())
    got = grads(loss, *gpu[:2])
    torch.testing.assert_close(loss.cpu(), ref_loss.float(), **TOL[dtype])
    for g, want in zip(got, ref_grads):
        assert g.dtype == want.dtype and g.device.type == "cuda"
        torch.testing.assert_close(g.float().cpu(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("method", ["sead", "eopd", "rkl"])
def test_trainer_runs_fused_methods_on_cuda(assets, tmp_path, method):
    trainer = run(assets, tmp_path / method, method=method)
    assert trainer.backend.name == "fused" and trainer.accelerator.device.type == "cuda"
    rows = read_metrics(tmp_path / method / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss/total"]) and math.isfinite(r["optim/grad_norm"]) for r in rows)
