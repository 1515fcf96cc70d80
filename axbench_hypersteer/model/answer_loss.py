"""The causal-LM loss computed only at the positions that carry a label.

A HyperSteer training row is a prompt, its answer and right padding, and the loss reads the
answer alone. Hugging Face's ``labels=`` path projects EVERY position onto the vocabulary first
(``[B, T, V]`` logits, soft-capped, then masked), so prompt and padding positions pay the LM head,
the soft-cap and the softmax forward and backward, and hold the largest activations of the step
(Gemma-2's V = 256k: ~2 GB of fp32 logits for a 12 × 160-token batch). Here the decoder's final
hidden states are gathered at the labelled positions first, then projected: the same loss (the
mean token cross-entropy, exactly HF's ``ForCausalLMLoss`` without ``num_items_in_batch``) for a
fraction of the head's cost.

Only model types whose head is a plain linear layer (plus Gemma's optional final-logit soft-cap)
take this path; others (e.g. Cohere's ``logit_scale``) keep the full-logits loss, which is always
correct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import IGNORE_INDEX


# Heads that are `lm_head(hidden)` followed at most by `tanh(x / cap) * cap`.
PLAIN_HEAD_MODEL_TYPES = frozenset({
    "gemma", "gemma2", "gemma3_text", "llama", "mistral", "qwen2", "qwen3", "phi3",
})


def has_plain_head(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES


def answer_loss(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                per_row: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (``per_row``: one mean per row,
    [B], 0 for a row without labels; scoring needs each example's loss, training one number).

    hidden: [B, T, d], the decoder's output after its final norm; labels: [B, T], the token to
    predict at each position's successor, ``-100`` where there is none to learn.
    """
    predicts = labels[:, 1:] != IGNORE_INDEX          # [B, T-1]: position t predicts token t+1
    if not bool(predicts.any()):
        raise ValueError("no labelled tokens in the batch: every label is -100, so there is no "
                         "loss to compute (were all answers truncated away?)")
    states = hidden[:, :-1][predicts]                 # [N, d]
    logits = model.get_output_embeddings()(states)    # [N, V]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if not per_row:
        return F.cross_entropy(logits.float(), labels[:, 1:][predicts])
    nll = F.cross_entropy(logits.float(), labels[:, 1:][predicts], reduction="none")
    sums = torch.zeros(labels.shape[0], device=nll.device).index_add_(
        0, predicts.nonzero()[:, 0], nll)
    return sums / predicts.sum(-1).clamp(min=1)
