"""The single-pass cross-attention training step equals the straightforward two-pass reference.

HyperSteer.forward reads the layer-l residual inside the very forward it steers. The reference
below is the published design written out plainly: (1) run the whole base model once, unsteered,
and take ``hidden_states[c + 1]`` (the output of block c); (2) Δ = hypernet(steering prompt,
context = that residual over the prompt tokens); (3) a second, steered forward through a plain
forward hook. On real training batches (right padding, context = prompt tokens only) the loss,
the logits AND the gradients of every hypernetwork parameter must agree, and greedy generation
must produce the same tokens.
"""

import pytest
import torch

from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.model.config import HyperSteerConfig
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.model.steering import SteeringSource, steering_hook
from axbench_hypersteer.model.tokens import encode_left
from axbench_hypersteer.testing.tiny import build_tiny_gemma2

from helpers import perturb_, positions

STEERING_LAYER = 2
ROWS = [  # different prompt and answer lengths, so the batch is padded on the right
    {"concept_id": 0, "concept": "references to the ocean and sea life",
     "input": "Write a short poem about rain.",
     "output": "Waves of grey water fall on the reef like tides over coral."},
    {"concept_id": 1, "concept": "mentions of cooking",
     "input": "Explain how a bicycle works, step by step, for a curious ten year old.",
     "output": "Like a recipe: the pedals whisk the chain."},
    {"concept_id": 2, "concept": "outer space and astronomy, planets, comets and the moon",
     "input": "List three fruits.",
     "output": "Apples orbit the kitchen table, a banana comet and a moon-shaped melon slice."},
]


@pytest.fixture(scope="module")
def base(tokenizer):
    return build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return SteeringCollator(tokenizer)(ROWS)


def make(base, tokenizer, context_layer, backend):
    hs = HyperSteer.from_base(base, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=STEERING_LAYER, num_blocks=2, cross_attention_heads=4,
        context_layer=context_layer), backend=backend)
    perturb_(hs.hypernet)  # away from the readout's near-zero init, so Δ really steers
    return hs


def two_pass_forward(hs, batch, factors):
    """The reference: an unsteered full pass for the context, then a steered pass with fixed Δ."""
    model, c = hs.base_model, hs.config.resolved_context_layer
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                       use_cache=False, output_hidden_states=True).hidden_states[c + 1]
    delta = hs.hypernet(batch["hyper_input_ids"], batch["hyper_attention_mask"],
                        context=hidden, context_mask=batch["context_mask"])
    with steering_hook(model, hs.config.steering_layer, SteeringSource(factors, delta=delta)):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                    labels=batch["labels"], use_cache=False)
    return out.loss, out.logits, delta


def grads(hs):
    return {n: p.grad.clone() for n, p in hs.hypernet.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["pyvene", "hook"])
@pytest.mark.parametrize("context_layer", [None, 1])
def test_training_step_equals_two_pass(base, tokenizer, batch, context_layer, backend):
    hs = make(base, tokenizer, context_layer, backend)
    hs.hypernet.train()
    assert batch["context_mask"].sum() < batch["attention_mask"].sum()  # answers not read
    factors = torch.tensor([1.0, 0.5, 2.0])

    out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
             batch["hyper_attention_mask"], labels=batch["labels"],
             context_mask=batch["context_mask"], factors=factors)
    out.loss.backward()
    one = grads(hs)
    hs.hypernet.zero_grad(set_to_none=True)

    loss, logits, delta = two_pass_forward(hs, batch, factors)
    loss.backward()
    two = grads(hs)

    torch.testing.assert_close(out.steering_vectors, delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=0)
    # every trainable tensor gets a gradient, the cross-attention included, and they agree
    assert set(one) == set(two) == {n for n, p in hs.hypernet.named_parameters()
                                    if p.requires_grad}
    assert any("cross_attentions" in n for n in one)
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-4, msg=name)
    assert max(g.abs().max().item() for g in one.values()) > 1e-4  # not a vacuous comparison


@pytest.mark.parametrize("context_layer", [None, 1])
def test_context_is_the_pre_steering_residual_of_the_right_block(base, tokenizer, batch,
                                                                 context_layer):
    """Reading another block, or the answer tokens, would change Δ: the comparison above is
    sensitive to both."""
    hs = make(base, tokenizer, context_layer, "hook")
    with torch.no_grad():
        out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
                 batch["hyper_attention_mask"], labels=batch["labels"],
                 context_mask=batch["context_mask"])
        hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=positions(batch["attention_mask"]), use_cache=False,
                      output_hidden_states=True).hidden_states
        read = hs.config.resolved_context_layer
        other = 0 if read != 0 else 1
        wrong_block = hs.hypernet(batch["hyper_input_ids"], batch["hyper_attention_mask"],
                                  context=hidden[other + 1], context_mask=batch["context_mask"])
        with_answers = hs.hypernet(batch["hyper_input_ids"], batch["hyper_attention_mask"],
                                   context=hidden[read + 1],
                                   context_mask=batch["attention_mask"].bool())
    assert not torch.allclose(out.steering_vectors, wrong_block, atol=1e-4)
    assert not torch.allclose(out.steering_vectors, with_answers, atol=1e-4)


@pytest.mark.parametrize("context_layer", [None, 1])
def test_greedy_generation_equals_two_pass(base, tokenizer, context_layer):
    hs = make(base, tokenizer, context_layer, "pyvene")
    prompts = hs.format_prompts([r["input"] for r in ROWS])
    ids, mask = encode_left(hs.tokenizer, prompts, hs.device)
    hyper_ids, hyper_mask = hs.encode_hypernet([r["concept"] for r in ROWS])
    factors = torch.tensor([4.0, -3.0, 6.0])
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    new, vectors = hs.generate_ids(ids, mask, hyper_ids, hyper_mask, factors,
                                   return_vectors=True, **gen)
    with torch.no_grad():
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                      use_cache=False, output_hidden_states=True).hidden_states
        delta = hs.hypernet(hyper_ids, hyper_mask, context=hidden[hs.config.resolved_context_layer
                                                                  + 1],
                            context_mask=mask.bool())
        with steering_hook(base, STEERING_LAYER, SteeringSource(factors, delta=delta)):
            ref = base.generate(input_ids=ids, attention_mask=mask, **gen)[:, ids.shape[1]:]
        plain = base.generate(input_ids=ids, attention_mask=mask, **gen)[:, ids.shape[1]:]
    torch.testing.assert_close(vectors, delta, atol=1e-5, rtol=0)
    assert torch.equal(new, ref)
    assert not torch.equal(new, plain)  # the factors are large enough to change the tokens
