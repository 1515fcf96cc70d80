"""The model step: prefill newcomers, splice their KV cache into the running batch's, decode.

Why splice: a request that arrives while a batch decodes must not start a batch of its own
(each batch costs a forward per step) nor make the running rows read their tokens again. Its
prompt is prefilled alone, and its KV cache rows are then joined to the running batch's along
the batch axis. Both caches are left padded (every row's last token is the rightmost column),
so joining them is aligning their right edges: the narrower one gets zero keys/values on the
left, under attention-mask zeros, which is exactly the state a batch left padded to the wider
width would be in. Position ids come from the mask (``mask.sum - 1``), so padding never moves a
row's positions, and a row decodes as it would alone (greedy rows equal ``HyperSteer.generate``,
tested).

The cache is the model's own (HF ``DynamicCache``); a sliding-window layer keeps only the last
``window - 1`` columns, so each layer is aligned to its own width and its token count is set to
the mask's width. A forward runs on a fork of the cache (new layer objects over the same
tensors, which HF replaces rather than writes into), so a forward that raises leaves the batch
as it was: the engine can then run the same step on halves of the rows to find the one at
fault, without re-reading any prompt.

Steering goes through ``Steerer.forward`` with a ``SteeringSource`` holding each row's vector
[B, d] and factor [B]: the package's own arithmetic, applied at prefill and at every decode step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from ..model.steering import Steerer, SteeringSource
from ..model.tokens import position_ids
from .jobs import Row


@dataclass
class Batch:
    """Rows decoding together and their model state, row i everywhere at index i."""
    rows: list[Row]
    mask: torch.Tensor      # [B, W] long: 1 = a token, left padded
    vectors: torch.Tensor   # [B, d]
    factors: torch.Tensor   # [B] fp32
    cache: object           # HF cache; each layer's keys/values [B, heads, W_l, head_dim]

    def select(self, indices: Sequence[int]) -> Batch | None:
        """The batch of ``rows[indices]`` (None if none), its leading all-padding columns
        dropped: when a long row leaves, the rest decode over their own width."""
        if not indices:
            return None
        if list(indices) == list(range(len(self.rows))):
            return self
        index = torch.tensor(list(indices), device=self.mask.device)
        mask = self.mask[index]                                                  # [b, W]
        width = int(mask.shape[1] - mask.any(0).long().argmax()) if mask.any() else 1
        return Batch([self.rows[i] for i in indices], mask[:, -width:], self.vectors[index],
                     self.factors[index], reshape_cache(self.cache, width, index=index))

    def __len__(self) -> int:
        return len(self.rows)


def splice(running: Batch | None, joining: Batch | None) -> Batch | None:
    """``running`` then ``joining`` as one batch: masks and every cache layer right-aligned to
    the wider of the two (zeros on the left of the narrower), then concatenated on rows."""
    if running is None or joining is None:
        return running or joining
    width = max(running.mask.shape[1], joining.mask.shape[1])
    mask = torch.cat([fit_left(running.mask, width), fit_left(joining.mask, width)])  # [B, W]
    return Batch(running.rows + joining.rows, mask,
                 torch.cat([running.vectors, joining.vectors]),
                 torch.cat([running.factors, joining.factors]),
                 reshape_cache(running.cache, width, other=joining.cache))


def fit_left(t: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """``t`` with its ``dim`` axis made ``width`` long at the left end: zeros prepended, or the
    leading entries dropped; the right end (the latest token) stays where it is."""
    have = t.shape[dim]
    if have >= width:
        return t.narrow(dim, have - width, width)
    shape = list(t.shape)
    shape[dim] = width - have
    return torch.cat([t.new_zeros(shape), t], dim)


def cache_layers(cache) -> list:
    """The cache's per-layer objects, each holding ``keys``/``values`` [B, heads, W_l, head_dim]
    (HF's ``DynamicLayer`` and its sliding-window kind)."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") for layer in layers):
        raise TypeError(f"the serve loop needs a layered dynamic KV cache, got "
                        f"{type(cache).__name__}")
    return layers


def fork(cache):
    """A cache object of its own over the same tensors: a forward on it leaves ``cache`` as it
    was (HF replaces a layer's tensors on update rather than writing into them)."""
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache_layers(cache)]
    return twin


def reshape_cache(cache, width: int, index: torch.Tensor | None = None, other=None):
    """A fork of ``cache`` for a mask ``width`` columns wide: rows ``index`` of it, or it with
    ``other``'s rows appended. A full layer holds ``width`` columns; a sliding-window layer at
    most its window's, so each layer keeps min(width, its width) or, when joining, the wider of
    the two layers' widths."""
    out = fork(cache)
    others = cache_layers(other) if other is not None else [None] * len(out.layers)
    for layer, extra in zip(out.layers, others):
        if extra is None:
            keep = min(width, layer.keys.shape[2])
            layer.keys = fit_left(layer.keys[index], keep, dim=2)      # [b, heads, keep, hd]
            layer.values = fit_left(layer.values[index], keep, dim=2)
        else:
            keep = max(layer.keys.shape[2], extra.keys.shape[2])
            layer.keys = torch.cat([fit_left(layer.keys, keep, 2), fit_left(extra.keys, keep, 2)])
            layer.values = torch.cat([fit_left(layer.values, keep, 2),
                                      fit_left(extra.values, keep, 2)])
        if hasattr(layer, "cumulative_length"):  # a sliding layer counts the tokens it has seen
            layer.cumulative_length = width
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int,
             device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, T], mask [B, T]), left padded."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


class Executor:
    """Runs the steered model on a batch; holds no request state of its own."""

    def __init__(self, steerer: Steerer, pad_id: int):
        self.steerer = steerer
        self.model = steerer.model
        self.pad_id = pad_id

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                vectors: torch.Tensor, factors: torch.Tensor, cache=None):
        """One steered forward: ids/positions [B, S], mask [B, W + S], vectors [B, d],
        factors [B]; returns (last-position logits [B, vocab] fp32, the updated cache)."""
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions,
                      past_key_values=cache, use_cache=True)
        if bool((factors != 0).any()):
            out = self.steerer.forward(SteeringSource(factors, delta=vectors), **kwargs)
        else:  # nobody steered: adding 0·Δ is exact, skipping it is cheaper
            out = self.model(**kwargs)
        return out.logits[:, -1].float(), out.past_key_values

    def prefill(self, rows: list[Row]) -> tuple[torch.Tensor, Batch]:
        """The prompt forward of ``rows`` (a batch of their own): each row's first-token
        logits [N, vocab] and the batch, ready to splice into the running one."""
        device = rows[0].vector.device
        ids, mask = left_pad([r.prompt_ids for r in rows], self.pad_id, device)  # [N, T]
        vectors = torch.stack([r.vector for r in rows])                          # [N, d]
        factors = torch.tensor([r.job.steering.factor for r in rows], dtype=torch.float32,
                               device=device)                                    # [N]
        positions = position_ids(mask)                                           # [N, T]
        logits, cache = self.forward(ids, mask, positions, vectors, factors)
        return logits, Batch(list(rows), mask, vectors, factors, cache)

    def decode(self, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """One token for every row: feeds each row's last generated token; returns the logits
        [B, vocab] and the batch one column wider. ``batch`` itself is left unchanged."""
        device = batch.mask.device
        ids = torch.tensor([[r.generated[-1]] for r in batch.rows], device=device)  # [B, 1]
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], 1)     # [B, W + 1]
        positions = mask.sum(-1, keepdim=True) - 1                                # [B, 1]
        logits, cache = self.forward(ids, mask, positions, batch.vectors, batch.factors,
                                     fork(batch.cache))
        return logits, Batch(batch.rows, mask, batch.vectors, batch.factors, cache)
