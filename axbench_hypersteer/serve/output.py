"""Logits -> tokens -> text: the output processor.

Why per row and not in the model step: every row carries its own temperature, top-p, seed,
stop strings, token budget and log-prob request, and its client wants text as soon as it is
certain. Here each row samples with its own generator (so a seeded answer does not depend on
its batch mates), its text is detokenised incrementally (held back while it could still turn
into a stop string or is half a UTF-8 character), and it ends on EOS, a stop string or
``max_tokens``. A row whose sampling or detokenising raises fails alone; the rest of the batch
goes on.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .jobs import GREEDY_BELOW, Delta, Finished, Row, fail_alone


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    @classmethod
    def for_model(cls, model, tokenizer) -> OutputProcessor:
        """EOS as the model's generation config names it (as ``generate`` stops on it)."""
        eos = model.generation_config.eos_token_id
        return cls(tokenizer, {eos} if isinstance(eos, int)
                   else set(eos or [tokenizer.eos_token_id]))

    def process(self, rows: Sequence[Row], logits: torch.Tensor) -> list[bool]:
        """Each row's next token from its logits [B, vocab]; sends its events. Returns, per row,
        whether it goes on (False: finished, or failed alone)."""
        greedy = logits.argmax(-1).tolist()
        going = []
        for i, row in enumerate(rows):
            try:
                token = next_token(logits[i], greedy[i], row)
                reason = self._push(row, token, logits[i])
            except Exception as err:  # noqa: BLE001 - this row's alone
                fail_alone(row.job, "sampling", err)
                going.append(False)
                continue
            if reason is not None:
                row.job.sink(Finished(reason, len(row.generated)))
            going.append(reason is None)
        return going

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _push(self, row: Row, token: int, logits: torch.Tensor) -> str | None:
        """Append a token, send the text that is now certain; the finish reason, or None."""
        sampling = row.job.sampling
        if token in self.eos_ids and not sampling.ignore_eos:
            self._emit(row, self.decode(row.generated), final=True)
            return "stop"
        row.generated.append(token)
        if sampling.logprobs is not None:
            row.logprobs.append(self.logprob_entry(logits, token, sampling.logprobs))
        text = self.decode(row.generated)
        cut = first_stop(text, sampling.stop)
        if cut is not None:
            self._emit(row, text[:cut], final=True)
            return "stop"
        if len(row.generated) >= sampling.max_tokens:
            self._emit(row, text, final=True)
            return "length"
        # Hold back what could still become a stop string, and a half-decoded UTF-8 character.
        safe = max(0, len(text) - max((len(s) - 1 for s in sampling.stop), default=0))
        while safe > 0 and text[safe - 1] == "\ufffd":
            safe -= 1
        self._emit(row, text[:safe])
        return None

    @staticmethod
    def _emit(row: Row, text: str, final: bool = False) -> None:
        """Send the text not sent yet, with the log-prob entries of the tokens behind it; the
        last call sends the remaining entries even without text (a token that completed a
        stop string is listed, its text cut, as vLLM does)."""
        if len(text) > row.emitted or (final and row.logprobs):
            entries = None
            if row.job.sampling.logprobs is not None:
                entries, row.logprobs = row.logprobs, []
            row.job.sink(Delta(text[row.emitted:], entries))
            row.emitted = max(row.emitted, len(text))

    def logprob_entry(self, logits: torch.Tensor, token: int, top: int) -> dict:
        """OpenAI's ``logprobs.content`` entry for ``token`` given one row's logits [vocab]:
        the model's own log-probabilities (before temperature and top-p, as vLLM reports them)
        and the ``top`` most likely tokens; ``bytes`` are the UTF-8 of the token's text."""
        logprobs = torch.log_softmax(logits.float(), -1)                         # [vocab]
        values, ids = logprobs.topk(min(top, logprobs.numel())) if top else ((), ())

        def item(tid: int, value: float) -> dict:
            text = self.tokenizer.decode([tid])
            return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

        return {**item(token, float(logprobs[token])),
                "top_logprobs": [item(int(t), float(v)) for t, v in zip(ids, values)]}


def next_token(logits: torch.Tensor, greedy: int, row: Row) -> int:
    """One row's logits [vocab] -> its token: ``greedy`` (the argmax) for a greedy row, else
    temperature and nucleus (top-p) sampling with the row's own generator."""
    s = row.job.sampling
    if s.temperature < GREEDY_BELOW:
        return greedy
    probs = torch.softmax(logits / s.temperature, -1)                            # [vocab]
    if s.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs   # mass of the tokens ranked above
        sorted_probs[before >= s.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=row.generator))


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts, or None."""
    hits = [text.find(s) for s in stops if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None
