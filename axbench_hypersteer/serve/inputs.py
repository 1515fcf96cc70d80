"""Requests -> rows: the prompt tokens and the steering vector each row decodes with.

Kept out of the model step because it is per request and may fail per request: a prompt over
the limit, a chat template that refuses the messages, a steering text the hypernetwork cannot
read. Such a request gets ``Failed`` here and never reaches the running batch; the others are
prepared together (one hypernetwork call for all of them).

The vectors are the package's: ``HyperSteer.steering_vectors`` / ``compute_vectors``, so a row
steers exactly as ``HyperSteer.generate`` does. Only the no-context variant's vector is a
function of the steering text alone, so only it is cached (LRU, keyed by the text).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import torch

from ..model.hypersteer import HyperSteer
from .executor import left_pad
from .jobs import GREEDY_BELOW, Failed, Job, RequestError, Row, Sampling, Started, fail_alone

logger = logging.getLogger(__name__)


class InputProcessor:
    """Tokenises requests and computes their vectors; runs on the engine's worker thread (the
    tokenizer is not thread safe: padding settings live on it)."""

    def __init__(self, hs: HyperSteer, max_prompt_tokens: int = 2048,
                 vector_cache_size: int = 4096):
        self.hs = hs
        self.tokenizer = hs.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self._vector_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._vector_cache_size = vector_cache_size

    @property
    def prompt_independent(self) -> bool:
        """Only the no-context variant's vector is a function of the steering prompt alone."""
        return self.hs.config.variant == "nocontext"

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """Chat-template text with the generation prompt, BOS stripped (the tokenizer adds it),
        formatted exactly as ``HyperSteer.format_prompts`` formats one user turn."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return "\n".join(m["content"] for m in messages)
        try:
            text = tok.apply_chat_template(list(messages), tokenize=False,
                                           add_generation_prompt=True)
        except Exception as err:  # the template's own checks (e.g. roles must alternate)
            raise RequestError(400, f"messages: the chat template refused them: {err}",
                               "messages") from None
        if tok.bos_token and text.startswith(tok.bos_token):
            text = text[len(tok.bos_token):]
        return text

    @torch.no_grad()
    def prepare(self, jobs: Sequence[Job]) -> list[Row]:
        """Tokenise and compute each job's vector (one hypernetwork call for all of them); a job
        that cannot run gets a ``Failed`` event and no row; each row gets ``Started``."""
        accepted = [a for a in map(self._tokenise, jobs) if a is not None]
        vectors = self._vectors_isolated([(job, ids) for job, ids, _ in accepted])
        rows = []
        for (job, ids, generator), vector in zip(accepted, vectors):
            if vector is not None:
                rows.append(Row(job, ids, vector, generator))
                job.sink(Started(len(ids), float(vector.float().norm())))
        return rows

    def _tokenise(self, job: Job) -> tuple[Job, list[int], torch.Generator | None] | None:
        try:
            ids = self.tokenizer(self.chat_prompt(job.messages),
                                 add_special_tokens=True)["input_ids"]
            if len(ids) > self.max_prompt_tokens:
                raise RequestError(413, f"messages: the prompt has {len(ids)} tokens, more "
                                   f"than this server's limit of {self.max_prompt_tokens}",
                                   "messages")
            return job, ids, self._generator(job.sampling)
        except RequestError as err:
            job.sink(Failed(err.status, str(err)))
        except Exception as err:  # noqa: BLE001 - this request's alone
            fail_alone(job, "preparing", err)
        return None

    def _vectors_isolated(self, jobs: list[tuple[Job, list[int]]]) -> list[torch.Tensor | None]:
        """``_vectors``; if the batched call fails, one by one, and None for a job that fails."""
        try:
            return self._vectors(jobs)
        except Exception:  # noqa: BLE001 - find the request that caused it, serve the others
            logger.warning("a batched vector computation for %d requests failed; computing "
                           "them one by one", len(jobs), exc_info=True)
        vectors: list[torch.Tensor | None] = []
        for job, ids in jobs:
            try:
                vectors.append(self._vectors([(job, ids)])[0])
            except Exception as err:  # noqa: BLE001
                fail_alone(job, "computing the steering vector of", err)
                vectors.append(None)
        return vectors

    def _generator(self, sampling: Sampling) -> torch.Generator | None:
        if sampling.temperature < GREEDY_BELOW:
            return None
        generator = torch.Generator(device=self.hs.base_model.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        return generator

    def _vectors(self, jobs: Sequence[tuple[Job, list[int]]]) -> list[torch.Tensor]:
        """Σ of each job's steering vectors, [d] per job."""
        d = self.hs.base_model.config.hidden_size
        dtype = next(self.hs.hypernet.parameters()).dtype
        zero = torch.zeros(d, dtype=dtype, device=self.hs.device)
        pairs = [(i, s) for i, (job, _) in enumerate(jobs) for s in job.steering.prompts]
        if not pairs:
            return [zero for _ in jobs]
        if self.prompt_independent:
            per_pair = self._cached_vectors([s for _, s in pairs])
        else:
            per_pair = self._context_vectors([(s, jobs[i][0], jobs[i][1]) for i, s in pairs])
        sums = [zero.clone() for _ in jobs]
        for (i, _), v in zip(pairs, per_pair):
            sums[i] += v
        return sums

    def _cached_vectors(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """No-context vectors depend on the steering text alone: an LRU cache keyed by it."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._vector_cache))
        if missing:
            for text, vector in zip(missing, self.hs.steering_vectors(missing)):
                self._vector_cache[text] = vector
        for p in prompts:
            self._vector_cache.move_to_end(p)
        out = [self._vector_cache[p] for p in prompts]
        while len(self._vector_cache) > self._vector_cache_size:
            self._vector_cache.popitem(last=False)
        return out

    def _context_vectors(self, triples: Sequence[tuple[str, Job, list[int]]]) -> torch.Tensor:
        """In-context: the hypernetwork reads steering + last user turn; cross-attention: it
        reads the base model's residual over the exact prompt tokens this row generates from."""
        texts = [self.hs.hypernet_text(s, last_user_turn(job.messages)) for s, job, _ in triples]
        hyper_ids, hyper_mask = self.hs.encode_hypernet(texts)
        ids = mask = None
        if self.hs.config.variant == "xattn":
            ids, mask = left_pad([p for _, _, p in triples], self.tokenizer.pad_token_id,
                                 self.hs.device)
        return self.hs.compute_vectors(hyper_ids, hyper_mask, ids, mask)


def last_user_turn(messages: Sequence[dict]) -> str:
    """The raw base prompt the in-context hypernetwork reads: the last user message."""
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"]
