"""Length-bucketed training batches: less padding for the same examples per epoch.

A batch is padded to its longest row, so a random batch of Concept10 examples (a few dozen to a few
hundred tokens each) spends a large share of the base pass on pad tokens. Sorting the whole epoch by
length would make batches homogeneous in length *and* in time (every long batch at the end), which
biases the learning-rate schedule. The usual compromise (fairseq, HF ``group_by_length``): cut the
epoch's shuffled order into mega-batches of ``group`` batches, sort each mega-batch by length, cut
it into batches, then shuffle the order of all batches. Every example is still seen once per epoch,
and the order is a function of (seed, epoch) alone, so resuming from a checkpoint replays it.
"""

from __future__ import annotations

from typing import Sequence

import torch


def plain_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive slices of ``order``: the trainer's batches without bucketing."""
    order = list(order)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def bucketed_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, group: int,
                     seed: int, epoch: int) -> list[list[int]]:
    """Batches of ``order`` (a shuffled epoch of example indices) sorted by ``lengths`` within
    mega-batches of ``group`` batches, the batch order then shuffled with (seed, epoch).

    ``group=1`` keeps every batch's examples as :func:`plain_batches` has them (only the row order
    inside a batch changes), which is what makes bucketing testable against the plain trainer.
    """
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    order = list(order)
    span = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        # Longest first within the mega-batch; ties keep the shuffled order (stable sort).
        chunk = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches += plain_batches(chunk, batch_size)
    if group == 1:
        return batches
    # A short batch stays last, as in plain_batches: the trainer cuts bucketed updates into
    # micro-batches and groups them by count, which a short one mid-epoch would shift.
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()] + short


def pad_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the base model's [B, T] batch positions that are padding, over an epoch."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - real / total if total else 0.0
