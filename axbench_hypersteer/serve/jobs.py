"""What the HTTP layer and the decode loop exchange: a request (``Job``), its running state
(``Row``) and the events it answers with.

Kept apart from the loop so that every stage (inputs, scheduler, executor, output processor)
can name these types without importing the others: the stages only meet in ``engine.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..model.errors import HyperSteerError

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


@dataclass(eq=False)  # compared and hashed by identity: the engine tracks rows in sets
class Row:
    """A started request: its prompt, vector and what it generated so far."""
    job: Job
    prompt_ids: list[int]
    vector: torch.Tensor                 # [d]; zeros for the plain model
    generator: torch.Generator | None    # own RNG per row: sampling independent of batch mates
    generated: list[int] = field(default_factory=list)
    emitted: int = 0                     # characters of the text already sent
    logprobs: list[dict] = field(default_factory=list)  # entries not sent yet


def fail_alone(job: Job, stage: str, err: BaseException) -> None:
    """End one request on an unexpected error (a bug, or an input the edge let through), and say
    in the log which request it was: its batch mates are not affected."""
    logger.error("request %s failed during %s and was ended alone (%s: %s)", job.id, stage,
                 type(err).__name__, err, exc_info=err)
    job.sink(Failed(500, f"internal error while {stage} this request: {type(err).__name__}"))
