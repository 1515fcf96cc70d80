"""Every method of the real experiment, reduced to what the base model sees: a prompt, and
optionally a vector added (times a factor) to the output of the steering layer.

HyperSteer's vectors are computed once per (concept, prompt) and then applied as fixed vectors:
for the cross-attention variant that is the same vector the single steered pass would compute,
because the hypernetwork reads only prompt positions of a causal model. So one loss function and
one generation function serve HyperSteer, DiffMean, prompting and the unsteered model alike, and
every method is scored on exactly the same tokens.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from ..model.answer_loss import answer_loss, has_plain_head
from ..model.steering import SteeringSource, Steerer
from ..model.tokens import IGNORE_INDEX, encode_left, format_prompt, position_ids
from ..train.prefix_cache import FrozenPrefixCache


def answer_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str],
                 answer_tokens: int) -> dict[str, torch.Tensor]:
    """``input_ids, attention_mask, labels`` [B, T] (right padded): the chat-formatted prompt in
    full, then the first ``answer_tokens`` tokens of the answer, the only labelled positions.

    Cutting the answer, not the whole sequence, is what makes methods comparable: prompting
    lengthens the prompt, and a shared total length would score fewer of its answer tokens."""
    prompt_ids = tokenizer([format_prompt(tokenizer, p) for p in prompts],
                           add_special_tokens=True)["input_ids"]
    answer_ids = [ids[:answer_tokens] for ids in
                  tokenizer(list(answers), add_special_tokens=False)["input_ids"]]
    width = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
    batch = len(prompt_ids)
    input_ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
        n = len(prompt) + len(answer)
        input_ids[i, :n] = torch.tensor(prompt + answer, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, len(prompt):n] = torch.tensor(answer, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def shared_prefix(steerer: Steerer, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                  answer_tokens: int) -> FrozenPrefixCache:
    """A cache of the steering layer's residual for these (prompt, answer) rows, for
    :func:`answer_losses` to record on its first pass and replay on every later one.

    Every method that steers with a vector sees the same blocks ``0..l`` as the unsteered model
    (the vector is added to block ``l``'s output), so scoring DiffMean at four factors and three
    hypernetworks runs those blocks once instead of seven times: on SmolLM2 at layer 20 that is 21
    of its 30 blocks. The losses are the same (``tests/test_real_lm.py`` checks it)."""
    rows = answer_batch(tokenizer, prompts, answers, answer_tokens)["attention_mask"].sum(1)
    return FrozenPrefixCache(steerer.model, {steerer.layer: "all"}, rows.tolist(), rows.tolist(),
                             mode="memory")


def _source(vectors: torch.Tensor | None, factors: Sequence[float] | None, batch: int,
            width: int, device) -> SteeringSource:
    if vectors is None:  # unsteered: a zero vector at factor 0 adds exactly nothing
        return SteeringSource(torch.zeros(batch, device=device),
                              delta=torch.zeros(batch, width, device=device))
    return SteeringSource(torch.tensor(list(factors), dtype=torch.float32, device=device),
                          delta=vectors.to(device))


@torch.no_grad()
def answer_losses(steerer: Steerer, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                  vectors: torch.Tensor | None = None, factors: Sequence[float] | None = None,
                  batch_size: int = 8, answer_tokens: int = 64,
                  prefix: FrozenPrefixCache | None = None) -> list[float]:
    """Mean cross-entropy of the first ``answer_tokens`` tokens of each reference answer given
    its prompt (chat-formatted), with ``vectors[i] * factors[i]`` added at the steering layer
    (vectors [N, d]; None: unsteered). ``prefix``: a :func:`shared_prefix` made for exactly these
    prompts and answers, in this order."""
    model = steerer.model
    device = next(model.parameters()).device
    width = model.config.hidden_size
    losses: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start:start + batch_size]
        batch = answer_batch(tokenizer, rows, answers[start:start + batch_size], answer_tokens)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        chunk = slice(start, start + len(rows))
        source = _source(None if vectors is None else vectors[chunk],
                         None if factors is None else list(factors)[chunk], len(rows), width, device)
        labels = batch["labels"].to(device)
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                      use_cache=False)
        replay = (prefix.serving(range(chunk.start, chunk.start + len(rows)), batch)
                  if prefix is not None else contextlib.nullcontext())
        if has_plain_head(model):  # the LM head on the scored positions only
            with replay:
                hidden = steerer.forward(source, decoder_only=True, **kwargs).last_hidden_state
            losses += answer_loss(model, hidden, labels, per_row=True).tolist()
            continue
        with replay:
            logits = steerer.forward(source, **kwargs).logits[:, :-1].float()
        scored = labels[:, 1:] != IGNORE_INDEX
        nll = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:].clamp(min=0), reduction="none")
        losses += ((nll * scored).sum(-1) / scored.sum(-1).clamp(min=1)).tolist()
    return losses


@torch.no_grad()
def generate(steerer: Steerer, tokenizer, prompts: Sequence[str],
             vectors: torch.Tensor | None = None, factors: Sequence[float] | None = None,
             batch_size: int = 16, max_new_tokens: int = 48) -> list[str]:
    """Greedy continuations of chat-formatted ``prompts`` with the same steering as
    :func:`answer_losses`; rows are batched by prompt length and returned in input order."""
    model = steerer.model
    device = next(model.parameters()).device
    width = model.config.hidden_size
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = encode_left(tokenizer, [format_prompt(tokenizer, prompts[i]) for i in idx],
                                device)
        chosen = torch.tensor(idx)
        source = _source(None if vectors is None else vectors[chosen],
                         None if factors is None else [factors[i] for i in idx], len(idx), width,
                         device)
        out = steerer.generate(source, ids, mask, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
        for i, text in zip(idx, tokenizer.batch_decode(out[:, ids.shape[1]:],
                                                       skip_special_tokens=True)):
            texts[i] = text
    return texts
