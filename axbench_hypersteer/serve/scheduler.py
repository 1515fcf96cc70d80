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

Fault isolation: a batched forward (prefill or decode step) that raises does not fail its
batch. The rows are split in halves and each half is prefilled again over prompt + tokens so
far (the merge path above, exact for greedy rows), so a poisoned row ends up alone and fails
alone, in at most log2(rows) splits, while the rest continue; the log names the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..model.errors import HyperSteerError
from .engine import Cohort, Engine, Failed, Job, Row, fail_alone

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
                    self._step(cohort)
            with self._cv:
                self._cohorts = [c for c in self._cohorts if c.rows]

    def _start(self, jobs: list[Job]) -> None:
        """Vectors and prefill of a new cohort; it then steps with the others."""
        try:
            rows = self.engine.prepare(jobs)  # fails the jobs it cannot run, one by one
        except Exception as err:  # noqa: BLE001 - a bug outside any one request
            logger.exception("preparing %d requests failed", len(jobs))
            for job in jobs:
                job.sink(Failed(500, f"internal error while preparing: {type(err).__name__}"))
            return
        for young in [c for c in self._cohorts if c.rows and max(
                len(r.generated) for r in c.rows) <= self.merge_tokens]:
            rows = young.rows + rows
            young.rows = []  # dropped from the list after this loop turn
        self._launch(rows)

    def _step(self, cohort: Cohort) -> None:
        try:
            cohort.step()
        except Exception as err:  # noqa: BLE001 - isolate the row that caused it
            rows = [r for r in cohort.rows if not r.job.cancelled]
            cohort.rows = []  # its KV cache may be half updated: never step it again
            self._split(rows, "decoding", err)

    def _launch(self, rows: list[Row]) -> None:
        """Prefill ``rows`` as one cohort that then steps with the others."""
        if not rows:
            return
        try:
            cohort = Cohort(self.engine, rows)
        except Exception as err:  # noqa: BLE001 - isolate the row that caused it
            self._split(rows, "batching", err)
            return
        with self._cv:  # listed before its first token is sent: stats() counts its rows
            self._cohorts.append(cohort)
        try:
            cohort.prefill()  # raises before any row advanced, or not at all
        except Exception as err:  # noqa: BLE001
            cohort.rows = []  # dropped from the list after this loop turn
            self._split(rows, "prefilling", err)

    def _split(self, rows: list[Row], stage: str, err: Exception) -> None:
        """A batched forward failed: one row alone is the cause and fails; more are retried
        in halves (each prefilled over prompt + tokens so far, as a merge is)."""
        if len(rows) == 1:
            fail_alone(rows[0].job, stage, err)
            return
        if rows:
            logger.warning("a batched forward of %d requests failed while %s (%s: %s); retrying "
                           "them in halves to isolate the request that caused it", len(rows),
                           stage, type(err).__name__, err)
        half = len(rows) // 2
        self._launch(rows[:half])
        self._launch(rows[half:])
