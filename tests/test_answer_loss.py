"""Training's loss-only forward (the LM head on the answer tokens only) equals the full-logits loss.

``HyperSteer.forward(..., return_logits=False)`` runs the steered decoder, gathers the labelled
positions and projects only those; the reference is Hugging Face's own ``labels=`` loss over
``[B, T, V]`` logits. Loss and every hypernetwork gradient must agree, for Gemma-2 (soft-capped
logits) and Llama (plain head), through pyvene and the plain hook.
"""

import pytest
import torch

from axbench_hypersteer.model.answer_loss import answer_loss, has_plain_head
from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.testing.tiny import build_tiny_gemma2

from helpers import BASE, STEER, build_tiny_llama, make_hs, perturb_

ROWS = [{"concept_id": i, "concept": s, "input": b, "output": o} for i, (s, b, o) in enumerate(zip(
    STEER, BASE, ["Objection sustained, said the court.", "Waves.",
                  "A kitten purrs on the warm windowsill while the rain falls outside."]))]


@pytest.fixture(scope="module")
def batch(tokenizer):
    return SteeringCollator(tokenizer)(ROWS)


def _step(hs, batch, **kwargs):
    hs.hypernet.zero_grad(set_to_none=True)
    out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
             batch["hyper_attention_mask"], labels=batch["labels"],
             context_mask=batch["context_mask"], **kwargs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in hs.hypernet.named_parameters()
                 if p.grad is not None}


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
@pytest.mark.parametrize("backend", ["pyvene", "hook"])
@pytest.mark.parametrize("variant", ["nocontext", "xattn"])
def test_answer_only_loss_equals_full_logits_loss(tokenizer, batch, arch, backend, variant):
    base = (build_tiny_gemma2(tokenizer, num_layers=4) if arch == "gemma2"
            else build_tiny_llama(tokenizer, num_layers=3))
    assert has_plain_head(base)
    hs = make_hs(base, tokenizer, variant, backend=backend)
    perturb_(hs.hypernet)
    hs.hypernet.train()
    # the batch really has prompt and padding positions that the fast path skips
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert labelled < batch["attention_mask"].numel() // 2

    fast, fast_grads = _step(hs, batch, return_logits=False)
    full, full_grads = _step(hs, batch)

    assert fast.logits is None and full.logits is not None
    torch.testing.assert_close(fast.loss, full.loss, atol=1e-5, rtol=0)
    assert set(fast_grads) == set(full_grads)
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], atol=1e-5, rtol=1e-4,
                                   msg=name)
    assert max(g.abs().max().item() for g in full_grads.values()) > 1e-4


def test_soft_cap_is_applied(tokenizer, batch):
    """Gemma-2's final-logit soft-cap is part of the loss: without it the value would differ."""
    base = build_tiny_gemma2(tokenizer, num_layers=4, initializer_range=0.5)
    assert base.config.final_logit_softcapping
    with torch.no_grad():
        hidden = base.model(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]).last_hidden_state
        capped = answer_loss(base, hidden, batch["labels"])
        reference = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        base.config.final_logit_softcapping = None
        uncapped = answer_loss(base, hidden, batch["labels"])
    torch.testing.assert_close(capped, reference, atol=1e-5, rtol=0)
    assert abs(capped.item() - uncapped.item()) > 1e-3


def test_unlisted_head_falls_back_to_full_logits(tokenizer, batch):
    base = build_tiny_gemma2(tokenizer, num_layers=4)
    base.config.model_type = "cohere"  # a head with a logit scale the fast path does not know
    assert not has_plain_head(base)
    hs = make_hs(base, tokenizer, "nocontext")
    out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
             batch["hyper_attention_mask"], labels=batch["labels"], return_logits=False)
    assert out.logits is not None and torch.isfinite(out.loss)


def test_no_labelled_token_is_a_clear_error(tokenizer, batch):
    base = build_tiny_gemma2(tokenizer, num_layers=4)
    hidden = torch.zeros(*batch["input_ids"].shape, base.config.hidden_size)
    with pytest.raises(ValueError, match="no labelled tokens"):
        answer_loss(base, hidden, torch.full_like(batch["labels"], -100))
