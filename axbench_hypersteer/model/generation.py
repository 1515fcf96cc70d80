"""Batched steered generation over rows that may mix concepts, prompts and factors.

Shared by the standalone inference stage and the AxBench ``predict_steer``: one generate call
serves many (concept, prompt, factor) rows, because each row carries its own steering prompt and
factor. Rows are sorted by prompt length inside the call to cut padding, and returned in input
order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .hypersteer import HyperSteer
from .tokens import encode_left, position_ids


@dataclass
class SteerRow:
    prompt: str            # chat-formatted base prompt, BOS stripped (AxBench's `input` column)
    raw_prompt: str        # the raw instruction (AxBench's `original_prompt`; in-context text)
    steering_prompt: str   # the concept description
    factor: float


LOGITS_PER_CHUNK = 2 ** 28  # fp32 logits held at once by the perplexity pass (1 GiB)


@torch.no_grad()
def generation_perplexity(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          new_ids: torch.Tensor, pad_id: int) -> list[float]:
    """Perplexity of each row's generated tokens given its prompt, under the UNSTEERED model
    (the fluency proxy AxBench's PerplexityEvaluator averages). Rows go through in chunks so
    the ``[rows, new, vocab]`` logits stay under ``LOGITS_PER_CHUNK`` (Gemma's 256k vocabulary,
    128 rows × 128 tokens would be 17 GB at once)."""
    per_row = max(1, new_ids.shape[1] * model.config.vocab_size)
    chunk = max(1, LOGITS_PER_CHUNK // per_row)
    out: list[float] = []
    for start in range(0, new_ids.shape[0], chunk):
        rows = slice(start, start + chunk)
        out += _perplexity(model, prompt_ids[rows], prompt_mask[rows], new_ids[rows], pad_id)
    return out


def _perplexity(model, prompt_ids, prompt_mask, new_ids, pad_id) -> list[float]:
    new_mask = (new_ids != pad_id).long()
    ids = torch.cat([prompt_ids, new_ids], 1)
    mask = torch.cat([prompt_mask, new_mask], 1)
    positions = position_ids(mask)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   use_cache=False).logits[:, prompt_ids.shape[1] - 1:-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), new_ids, reduction="none")
    counts = new_mask.sum(-1).clamp(min=1)
    return torch.exp((nll * new_mask).sum(-1) / counts).tolist()


@torch.no_grad()
def row_vectors(hs: HyperSteer, rows: Sequence[SteerRow], batch_size: int) -> torch.Tensor:
    """Steering vectors [N, d] for ``rows``, computed once per distinct hypernetwork input.

    A factor sweep repeats each (concept, prompt) once per factor and the vector does not depend
    on the factor; the no-context variant's vector does not even depend on the prompt. With 14
    factors this runs the hypernetwork on 1/14 of the rows (or fewer).
    """
    reads_prompt = hs.config.variant == "xattn"
    keys = [(hs.hypernet_text(r.steering_prompt, r.raw_prompt), r.prompt if reads_prompt else "")
            for r in rows]
    unique = list(dict.fromkeys(keys))
    chunks = []
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        hyper_ids, hyper_mask = hs.encode_hypernet([text for text, _ in chunk])
        ids = mask = None
        if reads_prompt:
            ids, mask = encode_left(hs.tokenizer, [prompt for _, prompt in chunk], hs.device)
        chunks.append(hs.compute_vectors(hyper_ids, hyper_mask, ids, mask))
    table = torch.cat(chunks)
    position = {key: i for i, key in enumerate(unique)}
    return table[torch.tensor([position[key] for key in keys], device=table.device)]


@torch.no_grad()
def steer_rows(hs: HyperSteer, rows: Sequence[SteerRow], batch_size: int, max_new_tokens: int,
               temperature: float = 1.0, seed: int = 42,
               compute_perplexity: bool = True) -> dict[str, list]:
    """Steered continuations for ``rows``; returns per-row lists ``steered_generation``,
    ``perplexity`` and ``strength`` (factor × ‖Δ‖, the norm actually added), in row order."""
    tok = hs.tokenizer
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
    generations: list[str | None] = [None] * len(rows)
    perplexities: list[float] = [float("nan")] * len(rows)
    strengths: list[float] = [float("nan")] * len(rows)
    sampling = temperature > 0
    vectors = row_vectors(hs, rows, batch_size)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [rows[i] for i in idx]
        ids, mask = encode_left(tok, [r.prompt for r in batch], hs.device)
        factors = torch.tensor([r.factor for r in batch], dtype=torch.float32, device=hs.device)
        gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sampling,
                          pad_token_id=tok.pad_token_id)
        if sampling:
            gen_kwargs["temperature"] = temperature
            torch.manual_seed(seed + start)
        batch_vectors = vectors[torch.tensor(idx, device=vectors.device)]
        new = hs.generate_ids(ids, mask, None, None, factors, vectors=batch_vectors, **gen_kwargs)
        texts = tok.batch_decode(new, skip_special_tokens=True)
        ppl = (generation_perplexity(hs.base_model, ids, mask, new, tok.pad_token_id)
               if compute_perplexity else [float("nan")] * len(batch))
        norms = (factors.abs() * batch_vectors.float().norm(dim=-1)).tolist()
        for j, i in enumerate(idx):
            generations[i], perplexities[i], strengths[i] = texts[j], ppl[j], norms[j]
    return {"steered_generation": generations, "perplexity": perplexities, "strength": strengths}
