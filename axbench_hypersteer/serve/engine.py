"""The decode loop behind the server: schedule -> execute -> process, on one worker thread.

Why a loop of its own rather than ``HyperSteer.generate``: HF ``generate`` runs a batch to its
slowest row with one set of sampling settings. Here every row carries its own steering vector,
factor, temperature, top-p, seed, stop strings and token budget; a row leaves the batch the step
it finishes, and a request that arrives while the batch decodes joins it at the next step.

Each step (``Engine.step``) is three parts with a seam between them, as in vLLM:
  1. ``Scheduler.schedule`` (policy): which waiting requests join, which running rows leave;
  2. the ``Executor`` (the model): the newcomers' prompt forward, their KV cache spliced into
     the running batch's, then one decode forward for every row;
  3. the ``OutputProcessor``: each row's token, text, stop checks and events.
``InputProcessor.prepare`` turns the admitted requests into rows (tokens and vectors) first.
The parts share nothing but rows and tensors, so each can be tested, timed or replaced alone
(the tests count forwards by wrapping the executor).

Fault isolation: a request whose preparation, vector or sampling fails gets ``Failed`` alone
(``inputs.py``, ``output.py``). A batched forward that raises fails nobody yet: a forward never
changes the batch it reads (``executor.fork``), so the same step is run again on each half of
the rows, and again on the half that still fails, until the request at fault is alone and fails
alone (at most log2(rows) splits); the halves that succeed are spliced back into one batch and
carry on, with the tokens they would have had. The log names the request.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

import torch

from ..model.hypersteer import HyperSteer
from .executor import Batch, Executor, splice
from .inputs import InputProcessor
from .jobs import Failed, Job, Row, fail_alone
from .output import OutputProcessor
from .scheduler import Scheduler

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Engine:
    """Owns the model and the worker thread; ``submit``, ``stats`` and ``close`` are for other
    threads, everything else runs on the worker (the tokenizer is not thread safe)."""

    def __init__(self, hs: HyperSteer, max_prompt_tokens: int = 2048,
                 vector_cache_size: int = 4096, max_batch: int = 32, max_queue: int = 256,
                 gather_s: float = 0.01, max_wait_s: float = 0.1):
        self.hs = hs
        self.inputs = InputProcessor(hs, max_prompt_tokens, vector_cache_size)
        self.scheduler = Scheduler(max_batch, max_queue, gather_s, max_wait_s)
        self.executor = Executor(hs.steerer, hs.tokenizer.pad_token_id)
        self.outputs = OutputProcessor.for_model(hs.base_model, hs.tokenizer)
        self.batch: Batch | None = None  # the running batch (worker thread only)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def prompt_independent(self) -> bool:
        return self.inputs.prompt_independent

    # ----- other threads -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job`` (``QueueFull`` when the queue is full); the worker starts on first use."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hypersteer-decode",
                                                daemon=True)
                self._thread.start()
        self.scheduler.submit(job)

    def stats(self) -> dict:
        return self.scheduler.stats()

    def close(self) -> None:
        self.scheduler.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ----- the worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while self.scheduler.wait():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a bug outside any one request: end the batch
                logger.exception("a decode step failed outside any one request; ending the "
                                 "%d running requests", len(self.scheduler.running()))
                self._fail_running()

    @torch.no_grad()
    def step(self) -> None:
        """One step: admit and drop rows, prefill and splice newcomers, decode everyone."""
        plan = self.scheduler.schedule()
        if plan.cancelled and self.batch is not None:
            gone = set(plan.cancelled)  # as the scheduler saw them: both drop the same rows
            self.batch = self.batch.select(
                [i for i, r in enumerate(self.batch.rows) if r not in gone])
        joining = self._prepare(plan.admitted)
        if joining:
            self.batch = splice(self.batch, self._run_isolated(
                joining, self.executor.prefill, "prefilling"))
        if self.batch is not None:
            running = self.batch
            self.batch = self._run_isolated(
                running.rows, lambda rows: self.executor.decode(select_rows(running, rows)),
                "decoding")

    def _prepare(self, jobs: list[Job]) -> list[Row]:
        """Admitted jobs -> rows, counted as running before their first token is sent."""
        if not jobs:
            return []
        try:
            rows = self.inputs.prepare(jobs)  # fails the jobs it cannot run, one by one
        except Exception as err:  # noqa: BLE001 - a bug outside any one request
            logger.exception("preparing %d requests failed", len(jobs))
            for job in jobs:
                job.sink(Failed(500, f"internal error while preparing: {type(err).__name__}"))
            return []
        self.scheduler.start(rows)
        return rows

    def _run_isolated(self, rows: list[Row],
                      forward: Callable[[list[Row]], tuple[torch.Tensor, Batch]],
                      stage: str) -> Batch | None:
        """``forward(rows)``, its logits through the output processor; the rows that go on, as
        one batch. A failing forward is run again on halves (see the module docstring)."""
        merged = None
        for part, (logits, batch) in isolate(rows, forward, stage, self._fail_row):
            going = self.outputs.process(batch.rows, logits)
            self.scheduler.finish([r for r, g in zip(batch.rows, going) if not g])
            merged = splice(merged, batch.select([i for i, g in enumerate(going) if g]))
        return merged

    def _fail_row(self, row: Row, stage: str, err: Exception) -> None:
        fail_alone(row.job, stage, err)
        self.scheduler.finish([row])

    def _fail_running(self) -> None:
        rows, self.batch = self.scheduler.running(), None
        for row in rows:
            row.job.sink(Failed(500, "internal error while decoding: the step failed"))
        self.scheduler.finish(rows)


def select_rows(batch: Batch, rows: list[Row]) -> Batch:
    """The part of ``batch`` holding ``rows`` (in the batch's order)."""
    wanted = set(rows)
    return batch.select([i for i, r in enumerate(batch.rows) if r in wanted])


def isolate(rows: list[Row], forward: Callable[[list[Row]], T], stage: str,
            fail: Callable[[Row, str, Exception], None]) -> list[tuple[list[Row], T]]:
    """``[(rows, forward(rows))]``; if that raises, the same on each half of ``rows``,
    recursively, and ``fail`` for a row that fails alone."""
    try:
        return [(rows, forward(rows))]
    except Exception as err:  # noqa: BLE001 - isolate the row that caused it
        if len(rows) == 1:
            fail(rows[0], stage, err)
            return []
        logger.warning("a batched forward of %d requests failed while %s (%s: %s); retrying "
                       "them in halves to isolate the request that caused it", len(rows),
                       stage, type(err).__name__, err)
        half = len(rows) // 2
        return (isolate(rows[:half], forward, stage, fail)
                + isolate(rows[half:], forward, stage, fail))
