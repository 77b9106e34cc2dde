"""Scoring rollouts: per-position logits (or last hidden states) of a model on prompt + response.

Both the teacher (no grad) and the student (with grad) are scored through ``response_logits`` so
the two stay aligned: position t of the output predicts response token t.
"""

from __future__ import annotations

import torch

from sead.rollout import position_ids_from_mask

__all__ = ["response_logits", "score_teacher"]


def response_logits(model, input_ids, attention_mask, prompt_len: int, vocab_size: int) -> torch.Tensor:
    """Logits predicting each response token: (B, P + R) inputs -> (B, R, V).

    Only the last R + 1 positions go through the LM head (``logits_to_keep``), and only the first
    ``vocab_size`` rows are kept (the vocabulary shared with the other model).
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


@torch.no_grad()
def score_teacher(teacher, input_ids, attention_mask, prompt_len: int, vocab_size: int) -> torch.Tensor:
    """Teacher logits on the response positions, float32 on the caller's device: (B, R, V)."""
    device = next(teacher.parameters()).device
    logits = response_logits(teacher, input_ids.to(device), attention_mask.to(device), prompt_len, vocab_size)
    return logits.float().to(input_ids.device)
