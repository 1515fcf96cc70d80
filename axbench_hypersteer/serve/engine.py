"""The decode loop behind the server: concurrent requests as rows of one steered generation.

Why a loop of its own rather than ``HyperSteer.generate``: HF ``generate`` runs a batch to its
slowest row with one set of sampling settings. Here every row carries its own steering vector,
factor, temperature, top-p, seed, stop strings and token budget; a row leaves the batch the step
it finishes (its KV-cache rows are dropped, so the rest decode cheaper), and requests that arrive
while a batch is decoding start at the next step as a new *cohort* decoded in the same loop,
instead of waiting for the running batch to end (``scheduler.py`` decides when).

The arithmetic is the package's: vectors come from ``HyperSteer.steering_vectors`` /
``compute_vectors`` and are added by ``Steerer.forward`` with a ``SteeringSource``, so a greedy
row equals ``HyperSteer.generate`` on the same prompt token for token (tested).

Fault isolation: a request whose preprocessing, vector or sampling fails gets ``Failed`` alone
and leaves; its batch mates carry on (``prepare``, ``Cohort._advance``). A failed batched forward
is the scheduler's to split (``scheduler.Scheduler._launch``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..model.errors import HyperSteerError
from ..model.hypersteer import HyperSteer
from ..model.steering import SteeringSource

logger = logging.getLogger(__name__)

GREEDY_BELOW = 1e-5  # temperatures under this are greedy (as vLLM): logits / 1e-300 overflow


class RequestError(HyperSteerError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False   # always max_tokens tokens (load tests; vLLM's extension)
    logprobs: int | None = None  # None: none; k: each token's log-prob and its top k rivals


@dataclass(frozen=True)
class Steering:
    prompts: tuple[str, ...] = ()  # their vectors are added; none = the plain model
    factor: float = 1.0

    @property
    def active(self) -> bool:
        return bool(self.prompts) and self.factor != 0.0


# Events a job's sink receives, in order: Started, Delta*, then Finished or Failed.
@dataclass
class Started:
    prompt_tokens: int
    vector_norm: float   # ‖Σ vectors‖ before the factor (0 for the plain model)


@dataclass
class Delta:
    text: str
    logprobs: list[dict] | None = None  # OpenAI's entries for the tokens this text completes


@dataclass
class Finished:
    reason: str          # "stop" (EOS or a stop string) | "length"
    completion_tokens: int


@dataclass
class Failed:
    status: int
    message: str


@dataclass
class Job:
    """One request. ``sink`` is called from the worker thread; ``cancelled`` is set by the client
    side (e.g. on disconnect) and frees the row at the next step."""
    messages: list[dict]
    steering: Steering
    sampling: Sampling
    sink: Callable[[object], None]
    cancelled: bool = False
    id: str = "request"  # named in the log when this request is the one that failed


def fail_alone(job: Job, stage: str, err: BaseException) -> None:
    """End one request on an unexpected error (a bug, or an input the edge let through), and say
    in the log which request it was: its batch mates are not affected."""
    logger.error("request %s failed during %s and was ended alone (%s: %s)", job.id, stage,
                 type(err).__name__, err, exc_info=err)
    job.sink(Failed(500, f"internal error while {stage} this request: {type(err).__name__}"))


@dataclass
class Row:
    job: Job
    prompt_ids: list[int]
    vector: torch.Tensor                 # [d]; zeros for the plain model
    generator: torch.Generator | None    # own RNG per row: sampling independent of batch mates
    generated: list[int] = field(default_factory=list)
    emitted: int = 0                     # characters of the text already sent
    logprobs: list[dict] = field(default_factory=list)  # entries not sent yet


class Engine:
    """Owns the model; every method runs on the scheduler's single worker thread (the tokenizer
    is not thread safe: padding settings live on it)."""

    def __init__(self, hs: HyperSteer, max_prompt_tokens: int = 2048,
                 vector_cache_size: int = 4096):
        self.hs = hs
        self.model = hs.base_model
        self.tokenizer = hs.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [self.tokenizer.eos_token_id])
        self._vector_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._vector_cache_size = vector_cache_size
        self.lock = threading.Lock()  # held by the worker while it uses model and tokenizer

    @property
    def prompt_independent(self) -> bool:
        """Only the no-context variant's vector is a function of the steering prompt alone."""
        return self.hs.config.variant == "nocontext"

    # ----- request -> rows ---------------------------------------------------------------------
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
        that cannot run gets a ``Failed`` event and no row."""
        accepted: list[tuple[Job, list[int], torch.Generator | None]] = []
        for job in jobs:
            try:
                ids = self.tokenizer(self.chat_prompt(job.messages),
                                     add_special_tokens=True)["input_ids"]
                if len(ids) > self.max_prompt_tokens:
                    raise RequestError(413, f"messages: the prompt has {len(ids)} tokens, more "
                                       f"than this server's limit of {self.max_prompt_tokens}",
                                       "messages")
                accepted.append((job, ids, self._generator(job.sampling)))
            except RequestError as err:
                job.sink(Failed(err.status, str(err)))
            except Exception as err:  # noqa: BLE001 - this request's alone
                fail_alone(job, "preparing", err)
        try:
            vectors = self._vectors([(job, ids) for job, ids, _ in accepted])
        except Exception:  # noqa: BLE001 - find the request that caused it, serve the others
            logger.warning("a batched vector computation for %d requests failed; computing "
                           "them one by one", len(accepted), exc_info=True)
            vectors = []
            for job, ids, _ in accepted:
                try:
                    vectors.append(self._vectors([(job, ids)])[0])
                except Exception as err:  # noqa: BLE001
                    fail_alone(job, "computing the steering vector of", err)
                    vectors.append(None)
        rows = []
        for (job, ids, generator), vector in zip(accepted, vectors):
            if vector is not None:
                rows.append(Row(job, ids, vector, generator))
                job.sink(Started(len(ids), float(vector.float().norm())))
        return rows

    def _generator(self, sampling: Sampling) -> torch.Generator | None:
        if sampling.temperature < GREEDY_BELOW:
            return None
        generator = torch.Generator(device=self.model.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        return generator

    def _vectors(self, jobs: Sequence[tuple[Job, list[int]]]) -> list[torch.Tensor]:
        """Σ of each job's steering vectors, [d] per job."""
        d = self.model.config.hidden_size
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

    # ----- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                vectors: torch.Tensor, factors: torch.Tensor, cache=None):
        """One steered forward; returns (last-position logits [B, vocab] fp32, KV cache)."""
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions,
                      past_key_values=cache, use_cache=True)
        if bool((factors != 0).any()):
            out = self.hs.steerer.forward(SteeringSource(factors, delta=vectors), **kwargs)
        else:  # nobody steered: adding 0·Δ is exact, skipping it is cheaper
            out = self.model(**kwargs)
        return out.logits[:, -1].float(), out.past_key_values

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logprob_entry(self, logits: torch.Tensor, token: int, top: int) -> dict:
        """OpenAI's ``logprobs.content`` entry for ``token`` given one row's logits [vocab]:
        the model's own log-probabilities (before temperature and top-p, as vLLM reports them)
        and the ``top`` most likely tokens; ``bytes`` are the UTF-8 of the token's text."""
        logprobs = torch.log_softmax(logits.float(), -1)
        values, ids = logprobs.topk(min(top, logprobs.numel())) if top else ((), ())

        def item(tid: int, value: float) -> dict:
            text = self.tokenizer.decode([tid])
            return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

        return {**item(token, float(logprobs[token])),
                "top_logprobs": [item(int(t), float(v)) for t, v in zip(ids, values)]}


class Cohort:
    """Rows prefilled together and decoded in lockstep; a finished or cancelled row leaves.

    A row may join with tokens already generated (merged from a young cohort, see the
    scheduler): its prefill covers prompt + those tokens, and the prefill's last logits give its
    next token, exactly as the decode step it replaces would."""

    def __init__(self, engine: Engine, rows: list[Row]):
        self.engine = engine
        self.rows = rows
        device = engine.hs.device
        # Rows carried over from a young cohort re-read what they generated so far.
        ids, self.mask = left_pad([r.prompt_ids + r.generated for r in rows],
                                  engine.tokenizer.pad_token_id, device)
        self.vectors = torch.stack([r.vector for r in rows])                     # [B, d]
        self.factors = torch.tensor([r.job.steering.factor for r in rows],
                                    dtype=torch.float32, device=device)          # [B]
        self._prompt_ids = ids
        self.cache = None

    def prefill(self) -> None:
        """The prompt forward and each row's first token."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        logits, self.cache = self.engine.forward(self._prompt_ids, self.mask, positions,
                                                 self.vectors, self.factors)
        self._prompt_ids = None
        self._advance(logits)

    def step(self) -> None:
        """One decoded token for every row still running."""
        self._keep([i for i, r in enumerate(self.rows) if not r.job.cancelled])
        if not self.rows:
            return
        device = self.mask.device
        ids = torch.tensor([[r.generated[-1]] for r in self.rows], device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], 1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits, self.cache = self.engine.forward(ids, self.mask, positions, self.vectors,
                                                 self.factors, self.cache)
        self._advance(logits)

    def _advance(self, logits: torch.Tensor) -> None:
        """Each row's next token; a row whose sampling or decoding fails leaves alone."""
        greedy = logits.argmax(-1).tolist()
        keep = []
        for i, row in enumerate(self.rows):
            try:
                token = next_token(logits[i], greedy[i], row)
                reason = self._push(row, token, logits[i])
            except Exception as err:  # noqa: BLE001 - this row's alone
                fail_alone(row.job, "sampling", err)
                continue
            if reason is None:
                keep.append(i)
            else:
                row.job.sink(Finished(reason, len(row.generated)))
        self._keep(keep)

    def _keep(self, indices: list[int]) -> None:
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            self.cache = None
            return
        index = torch.tensor(indices, device=self.mask.device)
        self.mask, self.vectors, self.factors = (self.mask[index], self.vectors[index],
                                                 self.factors[index])
        self.cache.batch_select_indices(index)

    def _push(self, row: Row, token: int, logits: torch.Tensor) -> str | None:
        """Append a token, send the text that is now certain; the finish reason, or None."""
        sampling = row.job.sampling
        if token in self.engine.eos_ids and not sampling.ignore_eos:
            self._emit(row, self.engine.decode(row.generated), final=True)
            return "stop"
        row.generated.append(token)
        if sampling.logprobs is not None:
            row.logprobs.append(self.engine.logprob_entry(logits, token, sampling.logprobs))
        text = self.engine.decode(row.generated)
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


def next_token(logits: torch.Tensor, greedy: int, row: Row) -> int:
    """One row's logits [vocab] -> its token: ``greedy`` (the argmax) for a greedy row, else
    temperature and nucleus (top-p) sampling with the row's own generator."""
    s = row.job.sampling
    if s.temperature < GREEDY_BELOW:
        return greedy
    probs = torch.softmax(logits / s.temperature, -1)
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


def last_user_turn(messages: Sequence[dict]) -> str:
    """The raw base prompt the in-context hypernetwork reads: the last user message."""
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"]
