"""The factor sweep's batched generation: vectors shared across a concept's factors."""

import pytest
import torch

from axbench_hypersteer.model.config import HyperSteerConfig
from axbench_hypersteer.model.generation import SteerRow, row_vectors, steer_rows
from axbench_hypersteer.model.hypersteer import HyperSteer

PROMPTS = ["Write a short poem.", "Describe your ideal morning routine in detail please."]
CONCEPTS = ["references to the ocean", "mentions of cooking and kitchen tools"]
FACTORS = [0.0, 1.0, 2.5]


def sweep_rows(hs):
    return [SteerRow(p, raw, c, f) for c in CONCEPTS for raw, p in
            zip(PROMPTS, hs.format_prompts(PROMPTS)) for f in FACTORS]


@pytest.fixture(params=["nocontext", "incontext", "xattn"])
def hs(request, tiny_model, tokenizer):
    config = HyperSteerConfig(variant=request.param, steering_layer=2, num_blocks=2,
                              cross_attention_heads=4)
    return HyperSteer.from_base(tiny_model, tokenizer, config).eval()


def test_row_vectors_equal_per_row_vectors(hs):
    rows = sweep_rows(hs)
    shared = row_vectors(hs, rows, batch_size=4)
    with torch.no_grad():
        alone = torch.cat([hs.steering_vectors([r.steering_prompt], [r.raw_prompt]) for r in rows])
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)
    # the same (concept, prompt) gets the same vector at every factor
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[1], shared[2])


def test_steer_rows_matches_vectors_computed_inside_generate(hs):
    """Sharing vectors across factors changes no greedy token against the path that lets the
    hypernetwork run at prefill for every row."""
    rows = sweep_rows(hs)
    out = steer_rows(hs, rows, batch_size=5, max_new_tokens=6, temperature=0.0)
    tok = hs.tokenizer
    for i, row in enumerate(rows):
        ids = tok([row.prompt], return_tensors="pt")
        hyper_ids, hyper_mask = hs.encode_hypernet([hs.hypernet_text(row.steering_prompt,
                                                                     row.raw_prompt)])
        new = hs.generate_ids(ids["input_ids"], ids["attention_mask"], hyper_ids, hyper_mask,
                              torch.tensor([row.factor]), max_new_tokens=6, do_sample=False)
        assert out["steered_generation"][i] == tok.batch_decode(new, skip_special_tokens=True)[0]
    assert out["strength"][0] == 0.0 and out["strength"][1] > 0.0


def test_perplexity_in_row_chunks_equals_one_pass(tiny_model, tokenizer, monkeypatch):
    """The perplexity pass splits rows to bound its logits; chunking changes no value."""
    from axbench_hypersteer.model import generation

    hs = HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(
        variant="nocontext", steering_layer=2, num_blocks=2)).eval()
    rows = sweep_rows(hs)
    whole = steer_rows(hs, rows, batch_size=len(rows), max_new_tokens=5, temperature=0.0)
    new_tokens_times_vocab = 5 * tiny_model.config.vocab_size
    monkeypatch.setattr(generation, "LOGITS_PER_CHUNK", 2 * new_tokens_times_vocab)  # 2 rows
    chunked = steer_rows(hs, rows, batch_size=len(rows), max_new_tokens=5, temperature=0.0)
    assert chunked["steered_generation"] == whole["steered_generation"]
    assert chunked["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-5)
    assert len(set(whole["perplexity"])) > 1
