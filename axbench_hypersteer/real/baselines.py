"""The baselines Table 1 puts beside HyperSteer.

- **Prompting** (AxBench's ``PromptSteering``, its strongest baseline): the concept is asked for
  in the prompt itself. AxBench has an LLM write that instruction; offline a fixed template
  stands in for it (:data:`PROMPT_TEMPLATE`).
- **DiffMean**: per concept, the mean steering-layer residual over the answer tokens of its
  training positives minus the same mean over AxBench's shared negatives; steered with that raw
  difference times a factor chosen per concept, like every other method's factor.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..model.steering import decoder_layers
from ..model.tokens import IGNORE_INDEX, hidden_of, position_ids
from .scoring import answer_batch

PROMPT_TEMPLATE = "{instruction}\n\nIn your answer, include content about {concept}."


def prompted(instruction: str, concept: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction, concept=concept)


@torch.no_grad()
def answer_token_means(model, tokenizer, layers: Sequence[int], prompts: Sequence[str],
                       answers: Sequence[str], batch_size: int = 8,
                       answer_tokens: int = 64) -> dict[int, torch.Tensor]:
    """Per layer: the mean output of decoder block ``layer`` over every answer token ([d])."""
    device = next(model.parameters()).device
    sums = {layer: torch.zeros(model.config.hidden_size, dtype=torch.float64) for layer in layers}
    count = 0
    captured: dict[int, torch.Tensor] = {}
    handles = [decoder_layers(model)[layer].register_forward_hook(
        lambda module, args, output, layer=layer: captured.__setitem__(layer, hidden_of(output)))
        for layer in layers]
    try:
        for start in range(0, len(prompts), batch_size):
            batch = answer_batch(tokenizer, prompts[start:start + batch_size],
                                 answers[start:start + batch_size], answer_tokens)
            mask = batch["attention_mask"].to(device)
            model.base_model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                             position_ids=position_ids(mask), use_cache=False)
            answer = (batch["labels"] != IGNORE_INDEX).to(device)
            count += int(answer.sum())
            for layer in layers:
                sums[layer] += captured[layer][answer].double().sum(0).cpu()
    finally:
        for handle in handles:
            handle.remove()
    return {layer: (total / max(count, 1)).float() for layer, total in sums.items()}


def diffmean_vectors(model, tokenizer, layers: Sequence[int], positives: dict[int, tuple[list, list]],
                     negatives: tuple[list, list], batch_size: int = 8,
                     answer_tokens: int = 64) -> dict[int, dict[int, torch.Tensor]]:
    """``{layer: {concept_id: vector [d]}}`` from ``positives[concept_id] = (prompts, answers)``
    and the shared ``negatives = (prompts, answers)``."""
    negative = answer_token_means(model, tokenizer, layers, *negatives, batch_size, answer_tokens)
    out: dict[int, dict[int, torch.Tensor]] = {layer: {} for layer in layers}
    for concept_id, (prompts, answers) in positives.items():
        positive = answer_token_means(model, tokenizer, layers, prompts, answers, batch_size,
                                      answer_tokens)
        for layer in layers:
            out[layer][concept_id] = positive[layer] - negative[layer]
    return out
