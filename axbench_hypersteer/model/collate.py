"""Rows of text to the tensors of one steered training batch.

The model's side of the data: what a row of (concept, instruction, answer) becomes for
:class:`~axbench_hypersteer.model.hypersteer.HyperSteer`. Reading AxBench's files into such rows is
the pipeline's job (:mod:`axbench_hypersteer.stages.data`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .errors import DataError
from .tokens import IGNORE_INDEX, format_prompt

def steering_prompt_only(concept: str, instruction: str) -> str:
    """Default hypernetwork text: the steering prompt alone (no-context and cross-attn variants)."""
    return concept


class SteeringCollator:
    """Turns rows ``{concept_id, concept, input, output}`` into one training batch.

    The base sequence is ``tok(format_prompt(input))`` (with BOS) followed by ``tok(output)``
    (no specials), tokenised apart so the prompt/answer boundary is exact rather than guessed
    from a re-tokenised concatenation. No EOS is appended: AxBench answers are cut at a length
    limit, not at a natural end. Padding is done here, not by the tokenizer, so a shared
    tokenizer's ``padding_side`` (left for generation) cannot change training batches.
    """

    def __init__(self, tokenizer, max_length: int = 512,
                 hypernet_text: Callable[[str, str], str] | None = None):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token first")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.hypernet_text = hypernet_text or steering_prompt_only

    def encode_hypernet(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypernetwork input ``(ids [B,S], mask [B,S])``, LEFT padded so position -1 is every
        row's last real token (the readout), and starting with BOS (added if the tokenizer
        does not add it) so short prompts still have an attention sink."""
        tok, bos = self.tokenizer, self.tokenizer.bos_token_id
        encoded = tok(list(texts), add_special_tokens=True)["input_ids"]
        seqs = []
        for text, ids in zip(texts, encoded):
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
            if not ids:
                raise DataError(f"hypernetwork text {text!r} encodes to no tokens")
            seqs.append(ids[: self.max_length])
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
        return ids, mask

    def _tokenize(self, rows: Sequence[dict]) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """Prompt ids (with BOS), answer ids and the base sequence length of each row."""
        tok = self.tokenizer
        prompts = tok([format_prompt(tok, r["input"]) for r in rows],
                      add_special_tokens=True)["input_ids"]
        answers = tok([r["output"] for r in rows], add_special_tokens=False)["input_ids"]
        lengths = []
        for row, prompt, answer in zip(rows, prompts, answers):
            if len(prompt) >= self.max_length:
                raise DataError(
                    f"prompt of a concept_id {row['concept_id']} example is {len(prompt)} "
                    f"tokens, >= max_length {self.max_length}: no answer token would be "
                    f"scored (input starts {row['input'][:60]!r})")
            lengths.append(min(len(prompt) + len(answer), self.max_length))
        return prompts, answers, lengths

    def lengths(self, rows: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Prompt tokens and base sequence length (prompt + answer, cut at max_length) of each
        row: what the cross-attention reads, and the width the row pads a batch to."""
        if not rows:
            return [], []
        prompts, _, lengths = self._tokenize(rows)
        return [len(p) for p in prompts], lengths

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Returns ``input_ids, attention_mask, labels, context_mask`` [B,T] (right padded),
        ``hyper_input_ids, hyper_attention_mask`` [B,S] (left padded) and ``concept_ids`` [B].

        ``labels`` are -100 except on answer tokens; ``context_mask`` is True on prompt tokens
        (BOS and chat template included), the base positions cross-attention may read.
        """
        if not rows:
            raise DataError("cannot collate an empty batch")
        tok = self.tokenizer
        prompts, answers, lengths = self._tokenize(rows)
        batch, width = len(rows), max(lengths)
        input_ids = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        context_mask = torch.zeros((batch, width), dtype=torch.bool)
        for i, (prompt, answer, n) in enumerate(zip(prompts, answers, lengths)):
            seq = torch.tensor((prompt + answer)[:n], dtype=torch.long)
            input_ids[i, :n] = seq
            attention_mask[i, :n] = 1
            labels[i, len(prompt):n] = seq[len(prompt):]
            context_mask[i, : len(prompt)] = True
        hyper_ids, hyper_mask = self.encode_hypernet(
            [self.hypernet_text(r["concept"], r["input"]) for r in rows])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "context_mask": context_mask,
            "hyper_input_ids": hyper_ids,
            "hyper_attention_mask": hyper_mask,
            "concept_ids": torch.tensor([int(r["concept_id"]) for r in rows], dtype=torch.long),
        }
