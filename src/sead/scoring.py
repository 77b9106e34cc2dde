"""How a step turns models into per-token quantities: materialised logits or fused hidden states.

Both backends offer the same four operations on a micro-batch, so ``sead.step`` does not care
which one runs:

* ``teacher(mb)``: the teacher's view of the response positions (no grad);
* ``student(mb)``: the student's view, with grad when grad is enabled;
* ``stats(s, t, mask)``: per-token teacher/student entropy and forward/reverse KL, no grad;
* ``losses(s, t, mb, zones, alpha, denom, stats)``: the loss (sum of per-token losses / ``denom``)
  and the detached per-token losses (B, R).

``LogitsBackend`` keeps (B, R, V) logits: every method works on it. ``FusedBackend`` keeps
(B, R, H) last hidden states and the heads, and computes everything in row chunks of
``chunk_size`` through ``sead.fused``: no (tokens x vocab) tensor is ever whole, and Zone A
tokens cost no backward compute. It serves the methods whose registry record (``sead.methods``)
has fused weights: sead, rkl, fkl, eopd, and opsd with one of those divergences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sead.config import ObjectiveConfig
from sead.divergence import entropy, forward_kl, reverse_kl
from sead.fused import divergence_stats_from_hidden, fused_divergence, transform_logits
from sead.methods import fused_reason, fused_weights, token_losses
from sead.rollout import position_ids_from_mask
from sead.sharding import full_weight, unsharded

__all__ = [
    "TokenStats",
    "LogitsBackend",
    "FusedBackend",
    "choose_backend",
    "fused_support",
    "fused_kind_ok",
    "matching_backbone",
    "response_logits",
    "response_hidden",
    "token_stats",
]


def response_logits(model, input_ids, attention_mask, prompt_len: int, vocab_size: int) -> torch.Tensor:
    """Logits predicting each response token: (B, P + R) inputs -> (B, R, V).

    Only the last R + 1 positions go through the LM head (``logits_to_keep``), and only the first
    ``vocab_size`` rows are kept (the vocabulary shared with the other model). Teacher and student
    both go through here, so position t of either output predicts response token t.
    """
    response_len = input_ids.shape[1] - prompt_len
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=response_len + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :vocab_size]


@dataclass
class TokenStats:
    """Per-token float32 quantities of a micro-batch, each (B, R); 0 on masked positions."""

    teacher_entropy: torch.Tensor
    student_entropy: torch.Tensor
    fkl: torch.Tensor
    rkl: torch.Tensor


@torch.no_grad()
def token_stats(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, top_k: int | None = None
) -> TokenStats:
    """Entropies (teacher's over its top-k when ``top_k``) and full-vocabulary KLs: (B, R, V) -> (B, R)."""
    s, t = student_logits.detach(), teacher_logits.detach()
    zero = lambda x: torch.where(mask, x, torch.zeros_like(x))  # noqa: E731
    return TokenStats(zero(entropy(t, top_k=top_k)), zero(entropy(s)), zero(forward_kl(s, t)), zero(reverse_kl(s, t)))


def response_hidden(model, input_ids, attention_mask, prompt_len: int, backbone=None) -> torch.Tensor:
    """Last hidden state at the positions that predict each response token: (B, P + R) -> (B, R, H).

    ``backbone`` (see :func:`matching_backbone`) runs the decoder stack alone: it returns only the
    final hidden state, where the full model with ``output_hidden_states`` keeps every layer's
    until it returns (under no_grad that is L + 1 (B, T, H) tensors for nothing).
    """
    kw = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    if backbone is not None:
        with unsharded(model):  # sharded, the decoder run alone needs the root's embedding and norm gathered
            return backbone(**kw).last_hidden_state[:, prompt_len - 1 : -1]
    return model(**kw, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][:, prompt_len - 1 : -1]


def _logit_transform(model) -> tuple[float, float | None]:
    """(logit_scale, softcap) a model applies after its LM head, read from its config."""
    cfg = model.config
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    if getattr(cfg, "logits_scaling", None):
        scale /= float(cfg.logits_scaling)
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return scale, (float(softcap) if softcap else None)


@torch.no_grad()
def _probe(model, vocab: int, backbone=None):
    """The model's output and, with ``backbone``, the backbone's last hidden state on 8 tokens."""
    device = model.get_output_embeddings().weight.device
    ids = torch.arange(min(vocab, 8), device=device).unsqueeze(0) % vocab
    att = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
        last = None
        if backbone is not None:
            with unsharded(model):  # sharded, the decoder run alone needs the root's embedding and norm gathered
                last = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    finally:
        model.train(was_training)
    return out, last


def _rebuild_tolerance(model, head_weight: torch.Tensor, logits: torch.Tensor) -> float:
    """Relative error allowed between rebuilt and real logits: 1e-3, or the rounding of the lowest precision
    the model's logits went through (bf16 weights, or bf16 autocast from ``train.mixed_precision``)."""
    dtypes = {head_weight.dtype, logits.dtype}
    if "_original_forward" in vars(model):  # accelerate wrapped the forward in autocast (its marker)
        dtypes.add(torch.bfloat16)
    return max(1e-3, *(torch.finfo(d).eps for d in dtypes if d.is_floating_point))


def fused_support(model, vocab: int) -> tuple[bool, str]:
    """Whether ``hidden @ head.T`` (with the config's scale/soft-cap) reproduces the model's logits."""
    head = model.get_output_embeddings()
    if (
        head is None
        or not isinstance(getattr(head, "weight", None), torch.Tensor)
        or getattr(head, "bias", None) is not None
    ):
        return False, "the model has no plain linear output embedding"
    out, _ = _probe(model, vocab)
    scale, softcap = _logit_transform(model)
    weight = full_weight(head.weight)  # sharded: gathered (a DTensor does not multiply plain tensors)
    rebuilt = transform_logits(out.hidden_states[-1].float() @ weight[:vocab].float().T, scale, softcap)
    err = (rebuilt - out.logits[..., :vocab].float()).abs().max().item()
    tol = _rebuild_tolerance(model, head.weight, out.logits) * max(1.0, out.logits.float().abs().max().item())
    if err > tol:
        return False, f"the last hidden state times the output embedding differs from the logits by {err:.3g}"
    return True, ""


def matching_backbone(model, vocab: int):
    """``model.get_decoder()`` when its ``last_hidden_state`` is the model's final hidden state, else None."""
    get = getattr(model, "get_decoder", None)
    backbone = get() if callable(get) else None
    # A module, or a callable stand-in for one (`sead.lora.AdaptersOff`: the decoder with adapters off).
    if backbone is None or backbone is model or not callable(backbone):
        return None
    try:
        out, last = _probe(model, vocab, backbone)
    except (TypeError, ValueError, AttributeError, RuntimeError):  # a decoder with another signature
        return None
    want = out.hidden_states[-1]
    ok = (
        last is not None
        and last.shape == want.shape
        and torch.allclose(last.float(), want.float(), rtol=1e-4, atol=1e-5)
    )
    return backbone if ok else None


class LogitsBackend:
    """Materialised (B, R, V) logits; the reference path and the one every method supports."""

    name = "logits"

    def __init__(self, cfg: ObjectiveConfig, vocab: int):
        self.cfg, self.vocab = cfg, vocab

    def teacher(self, teacher, input_ids, attention_mask, prompt_len):
        device = next(teacher.parameters()).device
        with torch.no_grad():
            logits = response_logits(teacher, input_ids.to(device), attention_mask.to(device), prompt_len, self.vocab)
        return logits.float().to(input_ids.device)

    def student(self, student, mb):
        return response_logits(student, mb.input_ids, mb.attention_mask, mb.prompt_len, self.vocab)

    def stats(self, s, t, mask) -> TokenStats:
        return token_stats(s, t, mask, self.cfg.top_k)

    def losses(self, s, t, mb, zones, alpha, denom: float, stats: TokenStats):
        tl = token_losses(self.cfg, s, t, mb.targets, mb.mask, zones, alpha)
        return tl.sum() / max(denom, 1e-12), tl.detach()


class FusedBackend:
    """Hidden states plus heads, chunked through ``sead.fused`` (see the module doc)."""

    name = "fused"

    def __init__(self, cfg: ObjectiveConfig, vocab: int, student_model, teacher_model, chunk_size: int):
        self.cfg, self.vocab, self.chunk = cfg, vocab, chunk_size
        self.student_model, self.teacher_model = student_model, teacher_model  # unwrapped, for their heads
        self.s_scale, self.s_cap = _logit_transform(student_model)
        self.t_scale, self.t_cap = _logit_transform(teacher_model)
        self.t_backbone = matching_backbone(teacher_model, vocab)  # no grad: its last hidden state only

    def _heads(self):
        s_weight = full_weight(self.student_model.get_output_embeddings().weight)  # whole rows, sharded or not
        # A slice makes autograd copy the whole (V, H) head gradient in backward; only slice padding rows.
        s_head = s_weight if s_weight.shape[0] == self.vocab else s_weight[: self.vocab]
        t_head = full_weight(self.teacher_model.get_output_embeddings().weight)[: self.vocab].detach()
        return s_head, t_head

    def teacher(self, teacher, input_ids, attention_mask, prompt_len):
        device = next(teacher.parameters()).device
        with torch.no_grad():
            backbone = self.t_backbone if teacher is self.teacher_model else None
            hidden = response_hidden(teacher, input_ids.to(device), attention_mask.to(device), prompt_len, backbone)
        return hidden.to(input_ids.device)

    def student(self, student, mb):
        return response_hidden(student, mb.input_ids, mb.attention_mask, mb.prompt_len)

    def stats(self, s, t, mask) -> TokenStats:
        """One chunked pass over the valid rows (``sead.fused``): never the whole (N, V), no float32 head copies."""
        s_head, t_head = self._heads()
        return TokenStats(
            *divergence_stats_from_hidden(
                s, s_head, t, t_head, mask.bool(), self.chunk, self.s_scale, self.s_cap, (self.t_scale, self.t_cap)
            )
        )

    def losses(self, s, t, mb, zones, alpha, denom: float, stats: TokenStats):
        s_head, t_head = self._heads()
        w_rkl, w_fkl = fused_weights(self.cfg, mb.mask, zones, alpha, stats.teacher_entropy)
        return fused_divergence(
            s,
            s_head,
            t,
            t_head,
            w_rkl,
            w_fkl,
            normalizer=denom,
            chunk_size=self.chunk,
            logit_scale=self.s_scale,
            softcap=self.s_cap,
            teacher_transform=(self.t_scale, self.t_cap),
        )


def fused_kind_ok(cfg: ObjectiveConfig) -> tuple[bool, str]:
    """Whether the method can run fused; the reason when not (the method registry decides)."""
    reason = fused_reason(cfg)
    return not reason, reason


def choose_backend(cfg: ObjectiveConfig, student, teacher, vocab: int, say=print):
    """``FusedBackend`` where ``cfg`` and both (unwrapped) models allow it, else ``LogitsBackend``.

    Off by request or for a method the kernel does not cover: logits, by design and silently. A
    model the kernel cannot reproduce: logits, with the reason passed to ``say``.
    """
    fallback = LogitsBackend(cfg, vocab)
    if not cfg.fused or not fused_kind_ok(cfg)[0]:
        return fallback
    for name, model in (("student", student), ("teacher", teacher)):
        ok, why = fused_support(model, vocab)
        if not ok:
            say(f"fused loss off ({name}: {why}); using materialised logits")
            return fallback
    return FusedBackend(cfg, vocab, student, teacher, cfg.chunk_size)
