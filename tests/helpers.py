"""Shared test helpers: a small HyperSteer builder, tokenisation with a chosen padding side, a tiny
random Llama (the second architecture) and a few comparison utilities."""

from __future__ import annotations

from typing import Sequence

import torch

from axbench_hypersteer.model.config import HyperSteerConfig
from axbench_hypersteer.model.hypersteer import HyperSteer

VARIANTS = ("nocontext", "incontext", "xattn")
LAYER = 2  # steering layer used throughout (the tiny models have 3-4 blocks)

# Three rows that differ in steering prompt, base prompt length and factor.
STEER = [
    "references to legal terminology and court procedure",
    "the ocean",
    "cats, kittens and other small furry animals that purr",
]
BASE = [
    "Write a poem.",
    "Tell me about the history of the Roman empire, its emperors and its long decline.",
    "Explain recursion to a child",
]
FACTORS = [0.0, 2.5, -4.0]  # row 0 unsteered; the others visibly steered


def make_hs(model, tokenizer, variant: str, backend: str = "hook", **overrides) -> HyperSteer:
    kw = dict(variant=variant, steering_layer=LAYER, num_blocks=2, cross_attention_heads=4)
    kw.update(overrides)
    return HyperSteer.from_base(model, tokenizer, HyperSteerConfig(**kw), backend=backend)


def encode(tokenizer, texts: Sequence[str], padding_side: str = "left"):
    """(input_ids, attention_mask) with the given padding side; the tokenizer is left as found."""
    old = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=True)
    finally:
        tokenizer.padding_side = old
    return enc["input_ids"], enc["attention_mask"]


def batch_inputs(hs: HyperSteer, base: Sequence[str], steer: Sequence[str],
                 padding_side: str = "left", hyper_padding_side: str = "left"):
    """Base prompt tokens (chat formatted) and hypernetwork tokens for rows (base[i], steer[i]).
    Left-padded hypernetwork tokens come from the package's own encoder (the training one)."""
    ids, mask = encode(hs.tokenizer, hs.format_prompts(base), padding_side)
    texts = [hs.hypernet_text(s, b) for s, b in zip(steer, base)]
    if hyper_padding_side == "left":
        hyper_ids, hyper_mask = hs.encode_hypernet(texts)
    else:
        hyper_ids, hyper_mask = encode(hs.tokenizer, texts, hyper_padding_side)
    return ids, mask, hyper_ids, hyper_mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def real_logits(logits: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    """[n_real, vocab] logits of the non-pad positions of one row (either padding side)."""
    return logits[row][mask[row].bool()]


def strip_after_eos(tokens: torch.Tensor, eos_id: int) -> list[int]:
    """Generated ids up to and including the first EOS (what generate emits before padding)."""
    out = []
    for t in tokens.tolist():
        out.append(t)
        if t == eos_id:
            break
    return out


def perturb_(module: torch.nn.Module, seed: int = 123, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter, so weights differ from any fresh initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def build_tiny_llama(tokenizer, num_layers: int = 3, hidden_size: int = 64, seed: int = 0):
    """A randomly initialised Llama causal LM (eager, fp32, eval) sized to ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
