"""When requests join the batch: one worker thread, a bounded queue, cohorts decoded together.

Policy (why): on CPU and GPU alike a decode step costs about the same for 1 row as for 32, so
throughput comes from rows sharing steps. Waiting requests start together once no new one has
arrived for ``gather_s`` (so a burst of clients becomes one cohort), after
``max_wait_s`` at the latest, or at once when they fill the free rows. While cohorts decode,
newcomers start the same way as a new cohort in the same loop, so nobody waits for a running
batch's slowest row; at most ``max_cohorts`` cohorts step side by side (each costs one forward
per step). A cohort still young (at most ``merge_tokens`` generated) is merged into the new one
instead: its rows are prefilled again over prompt + tokens so far, which costs one short prefill
and saves a forward on every later step (a burst that trickles in under load stays one batch). Finished and cancelled rows leave at once (``engine.Cohort``).
A full queue is refused (HTTP 429) rather than letting latency grow without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..model.errors import HyperSteerError
from .engine import Cohort, Engine, Failed, Job

logger = logging.getLogger(__name__)


class QueueFull(HyperSteerError, RuntimeError):
    """Every waiting slot is taken: the client should retry later (HTTP 429)."""


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int = 32, max_queue: int = 256,
                 gather_s: float = 0.01, max_wait_s: float = 0.1, max_cohorts: int = 4,
                 merge_tokens: int = 16):
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.gather_s = gather_s
        self.max_wait_s = max_wait_s
        self.max_cohorts = max_cohorts
        self.merge_tokens = merge_tokens
        self._pending: deque[tuple[float, Job]] = deque()
        self._cohorts: list[Cohort] = []
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hypersteer-decode", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting);"
                                " retry later")
            self._pending.append((time.monotonic(), job))
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {"queued": len(self._pending),
                    "active_rows": sum(len(c.rows) for c in self._cohorts),
                    "cohorts": len(self._cohorts)}

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ----- worker --------------------------------------------------------------------------------
    def _admissible(self) -> list[Job]:
        """Pending jobs to start now (called with the lock held); [] means wait."""
        while self._pending and self._pending[0][1].cancelled:
            self._pending.popleft()
        if not self._pending or len(self._cohorts) >= self.max_cohorts:
            return []
        free = self.max_batch - sum(len(c.rows) for c in self._cohorts)
        now = time.monotonic()
        quiet = now - self._pending[-1][0] >= self.gather_s
        overdue = now - self._pending[0][0] >= self.max_wait_s
        if free <= 0 or not (quiet or overdue or len(self._pending) >= free):
            return []
        take = min(free, len(self._pending))
        return [self._pending.popleft()[1] for _ in range(take)]

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._cohorts and not self._pending:
                    self._cv.wait()
                if self._stopped:
                    return
                jobs = self._admissible()
                if not jobs and not self._cohorts:  # only gathering: sleep until it is time
                    self._cv.wait(timeout=self.gather_s / 4)
                    continue
            with self.engine.lock:
                running = list(self._cohorts)
                if jobs:
                    self._start(jobs)
                for cohort in running:
                    self._guarded([r.job for r in cohort.rows], cohort.step, cohort)
            with self._cv:
                self._cohorts = [c for c in self._cohorts if c.rows]

    def _start(self, jobs: list[Job]) -> None:
        """Vectors and prefill of a new cohort; it then steps with the others."""
        rows: list = []
        self._guarded(jobs, lambda: rows.extend(self.engine.prepare(jobs)))
        if not rows:
            return
        for young in [c for c in self._cohorts if c.rows and max(
                len(r.generated) for r in c.rows) <= self.merge_tokens]:
            rows = young.rows + rows
            young.rows = []  # dropped from the list after this loop turn
        if rows:
            cohort = Cohort(self.engine, rows)
            with self._cv:
                self._cohorts.append(cohort)
            self._guarded([r.job for r in rows], cohort.prefill, cohort)

    def _guarded(self, jobs: list[Job], fn, cohort: Cohort | None = None) -> None:
        """A bug or an out-of-memory in one batch fails its requests, not the server."""
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - reported to every affected client
            logger.exception("decode step failed")
            for job in jobs:
                job.sink(Failed(500, f"internal error while generating: {type(err).__name__}"))
            if cohort is not None:
                cohort.rows = []
