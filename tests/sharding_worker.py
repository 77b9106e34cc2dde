"""Run by ``tests/test_sharding.py`` under ``torch.distributed.run`` with 2 CPU processes (gloo), FSDP2 asked for.

Checks the pieces of ``sead.sharding`` against an unsharded copy of the same tiny model: the CPU
switch-on, the sharded frozen teacher (logits, decoder-alone hidden states, gathered head), the
gathered head's gradient, generation when the processes' rows end at different lengths, a
full-state-dict checkpoint (``FSDP_STATE_DICT_TYPE=FULL_STATE_DICT``) loaded after a forward, and
a prepared LoRA student (``sead.lora``): its generation, its adapters-off decoder, an update that
moves the adapters only; and ``cpu_ram_efficient_loading``: process 1 builds the run's models on the
meta device, and sharding gives it process 0's weights, the teacher's head still tied.
Writes ``ok-R`` into the working folder and exits 0 when every check of rank R holds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tiny import save_tiny_pair, tiny_llama  # tests/ is on PYTHONPATH (see test_sharding.py)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from sead.config import ModelConfig
from sead.lora import AdaptersOff, LoraConfig, wrap_with_lora
from sead.models import load_model, load_run_models
from sead.scoring import matching_backbone, response_hidden
from sead.sharding import (
    enable_fsdp_on_cpu,
    full_weight,
    hook_generate,
    is_sharded,
    loads_on_process0,
    prepare_frozen,
    repoint_optimizer,
    reshard_prepared,
)

VOCAB = 40


def main() -> None:
    torch.set_num_threads(1)
    acc = Accelerator()
    assert enable_fsdp_on_cpu(acc), "FSDP was not switched on"
    assert is_sharded(acc) and AcceleratorState().is_fsdp2  # a fresh AcceleratorState keeps it
    rank, world = acc.process_index, acc.num_processes

    teacher = tiny_llama(VOCAB, hidden=32, layers=2, seed=1)
    reference = copy.deepcopy(teacher).eval()
    prepare_frozen(acc, teacher)
    layers = teacher.model.layers
    assert isinstance(teacher, FSDPModule) and all(isinstance(layer, FSDPModule) for layer in layers)
    head = teacher.get_output_embeddings().weight
    assert isinstance(head, DTensor) and head.to_local().shape[0] < VOCAB  # each process holds a shard
    assert not any(p.requires_grad for p in teacher.parameters())

    torch.manual_seed(rank)
    ids = torch.randint(3, VOCAB, (2, 7))
    att = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(teacher(input_ids=ids).logits, reference(input_ids=ids).logits)
        backbone = matching_backbone(teacher, VOCAB)
        assert backbone is not None, "the decoder alone does not reproduce the sharded model"
        want = response_hidden(reference, ids, att, 3)
        torch.testing.assert_close(response_hidden(teacher, ids, att, 3, backbone), want)
        torch.testing.assert_close(full_weight(teacher.get_output_embeddings().weight), reference.lm_head.weight)

    # A sharded head with grad: the gradient is the processes' average, as FSDP gives every other one.
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 6, bias=False)
    plain = linear.weight.detach().clone().requires_grad_(True)
    xs = torch.randn(world, 3, 4)
    fully_shard(linear)
    (xs[rank] @ full_weight(linear.weight).T).pow(2).sum().backward()
    (sum((xs[r] @ plain.T).pow(2).sum() for r in range(world)) / world).backward()
    torch.testing.assert_close(linear.weight.grad.full_tensor(), plain.grad)

    # Rows that end at different lengths on each process: rank 0 stops at its first token, rank 1 runs on.
    prompt = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        first = int(reference(input_ids=prompt).logits[0, -1].argmax())
    eos = first if rank == 0 else VOCAB + 1
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    got = teacher.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kw)
    want = reference.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kw)
    assert torch.equal(got, want), (rank, got, want)
    assert got.shape[1] == (5 if rank == 0 else 10), got.shape

    # A prepared student's checkpoint loads back after a no-grad forward left its head unit gathered.
    student = tiny_llama(VOCAB, hidden=32, layers=1, seed=2)
    student, optimizer = acc.prepare(student, torch.optim.AdamW(student.parameters(), lr=1e-2))

    def update():
        student(input_ids=ids).logits.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    update()
    saved = {k: v.full_tensor().clone() for k, v in student.state_dict().items()}
    acc.save_state(str(Path.cwd() / "ckpt"))
    acc.wait_for_everyone()
    update()
    with torch.no_grad():
        student(input_ids=ids)  # as setup's fused-support probe does
    reshard_prepared(acc)
    acc.load_state(str(Path.cwd() / "ckpt"))
    for key, value in student.state_dict().items():
        torch.testing.assert_close(value.full_tensor(), saved[key], rtol=0, atol=0)
    acc.wait_for_everyone()

    # A LoRA student: PEFT's generate and the decoder run alone both skip the root unit's forward, and
    # the root holds the final norm (accelerate finds no norm beside the head inside a PEFT model).
    base = tiny_llama(VOCAB, hidden=32, layers=1, seed=3)
    plain_base = copy.deepcopy(base)
    lora = wrap_with_lora(base, LoraConfig(r=4, alpha=8))
    with torch.no_grad():  # B starts at 0: give the adapters an effect to see
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    plain_lora = copy.deepcopy(lora)
    lora, lora_opt = acc.prepare(lora, torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2))
    hook_generate(lora)
    got = lora.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kw)  # rows end apart, as above
    assert torch.equal(got, plain_lora.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kw))
    reshard_prepared(acc)  # as a backward leaves it: generate kept the root unit gathered
    frozen = AdaptersOff(lora)  # OPSD's initial teacher, GRPO's reference: a view, sharded with the student
    assert prepare_frozen(acc, frozen) is frozen
    decoder = frozen.get_decoder()
    with torch.no_grad():
        torch.testing.assert_close(
            decoder(input_ids=ids).last_hidden_state, plain_base.model(input_ids=ids).last_hidden_state
        )
        assert not torch.allclose(lora(input_ids=ids).logits, plain_base(input_ids=ids).logits)  # adapters on
    before = {n: full_weight(p.detach()).clone() for n, p in lora.named_parameters()}  # a unit may be gathered
    lora(input_ids=ids).logits.float().pow(2).mean().backward()
    lora_opt.step()
    for name, p in lora.named_parameters():  # the adapters moved, every base weight stayed
        assert torch.equal(full_weight(p.detach()), before[name]) != p.requires_grad, name
    acc.wait_for_everyone()
    check_loading_on_process0(acc, ids)
    (Path.cwd() / f"ok-{rank}").write_text("ok")  # a file, not stdout: two processes' prints interleave


def check_loading_on_process0(acc, ids) -> None:
    """As ``sead train`` loads under ``fsdp_cpu_ram_efficient_loading``: real weights on process 0 only."""
    assert not loads_on_process0(acc)  # the launch left it off
    acc.state.fsdp_plugin.cpu_ram_efficient_loading = True
    assert loads_on_process0(acc)
    rank = acc.process_index
    if rank == 0:
        save_tiny_pair(Path.cwd() / "pair")
    acc.wait_for_everyone()
    paths = {name: str(Path.cwd() / "pair" / name) for name in ("student", "teacher")}
    cfg = ModelConfig(student=paths["student"], teacher=paths["teacher"], dtype="auto")  # auto: resolved alike
    run = load_run_models(cfg, LoraConfig(r=4, alpha=8), "model", False, weights=rank == 0)
    for model in (run.student, run.teacher):  # adapters included: PEFT puts them beside their meta base layer
        assert {p.device.type for p in model.parameters()} == {"meta" if rank else "cpu"}, rank
    teacher = prepare_frozen(acc, run.teacher)
    assert teacher.lm_head.weight is teacher.model.embed_tokens.weight  # still one tensor
    student = run.student
    student, optimizer = acc.prepare(student, torch.optim.AdamW([p for p in student.parameters() if p.requires_grad]))
    repoint_optimizer(optimizer, student)
    whole_teacher, whole_student = load_model(paths["teacher"]), load_model(paths["student"])
    with torch.no_grad():
        assert torch.equal(teacher(input_ids=ids).logits, whole_teacher(input_ids=ids).logits)
        base = dict(whole_student.named_parameters())
        for name, p in student.named_parameters():
            value = full_weight(p.detach())
            if ".lora_" in name:  # rank 0's random A, B = 0: the same on every process
                gathered = [torch.empty_like(value) for _ in range(acc.num_processes)]
                torch.distributed.all_gather(gathered, value.contiguous())
                assert all(torch.equal(g, gathered[0]) for g in gathered), name
            else:
                plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
                assert torch.equal(value, base[plain]), name
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
