"""Which requests run at each step: admission into the one running batch, and leaving it.

Policy (why): on CPU and GPU alike a decode step costs about the same for 1 row as for 32, so
throughput comes from rows sharing steps, and every row shares the one running batch. When
nothing is running, waiting requests start together once no new one has arrived for
``gather_s`` (a burst of clients becomes one prefill), after ``max_wait_s`` at the latest, or at
once when they fill the batch. While the batch decodes, a newcomer joins it at the next step
(its prompt is prefilled and spliced in, ``executor.py``): nobody waits for the slowest row, and
no step runs more than one decode forward. At most ``max_batch`` rows run; a full queue is
refused (HTTP 429) rather than letting latency grow without bound. A cancelled request (its
client went away) leaves at the next step, waiting or running.

Policy only: no model, no tensors. The engine asks ``schedule()`` what to run, and reports rows
that started (``start``) and ended (``finish``); ``stats()`` is read from other threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..model.errors import HyperSteerError
from .jobs import Job, Row


class QueueFull(HyperSteerError, RuntimeError):
    """Every waiting slot is taken: the client should retry later (HTTP 429)."""


@dataclass
class SchedulerOutput:
    admitted: list[Job] = field(default_factory=list)   # to prepare and prefill this step
    cancelled: list[Row] = field(default_factory=list)  # running rows to drop before it


class Scheduler:
    def __init__(self, max_batch: int = 32, max_queue: int = 256, gather_s: float = 0.01,
                 max_wait_s: float = 0.1):
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.gather_s = gather_s
        self.max_wait_s = max_wait_s
        self._waiting: deque[tuple[float, Job]] = deque()
        self._running: list[Row] = []
        self._cv = threading.Condition()
        self._stopped = False

    # ----- any thread --------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting);"
                                " retry later")
            self._waiting.append((time.monotonic(), job))
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {"queued": len(self._waiting), "active_rows": len(self._running)}

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    # ----- the engine's worker thread ----------------------------------------------------------
    def wait(self) -> bool:
        """Block until there is a step to run (rows running, or requests due to start); False
        once stopped."""
        with self._cv:
            while not self._stopped:
                if self._running or self._due(time.monotonic()):
                    return True
                # Gathering a burst: look again soon; nothing at all: sleep until a submit.
                self._cv.wait(timeout=self.gather_s / 4 if self._waiting else None)
            return False

    def schedule(self) -> SchedulerOutput:
        """This step's changes to the running batch: cancelled rows out, due requests in."""
        with self._cv:
            cancelled = [r for r in self._running if r.job.cancelled]
            if cancelled:
                self._running = [r for r in self._running if not r.job.cancelled]
            take = self._due(time.monotonic())
            return SchedulerOutput([self._waiting.popleft()[1] for _ in range(take)], cancelled)

    def start(self, rows: list[Row]) -> None:
        """``rows`` (prepared from admitted jobs) are in the batch from now on."""
        with self._cv:
            self._running.extend(rows)

    def running(self) -> list[Row]:
        with self._cv:
            return list(self._running)

    def finish(self, rows: list[Row]) -> None:
        """``rows`` finished or failed: their places are free."""
        if rows:
            gone = set(rows)
            with self._cv:
                self._running = [r for r in self._running if r not in gone]

    def _due(self, now: float) -> int:
        """How many waiting jobs start now (called with the lock held)."""
        if any(job.cancelled for _, job in self._waiting):
            self._waiting = deque(w for w in self._waiting if not w[1].cancelled)
        free = self.max_batch - len(self._running)
        if not self._waiting or free <= 0:
            return 0
        if not self._running:  # an idle batch gathers a burst, to prefill it as one
            quiet = now - self._waiting[-1][0] >= self.gather_s
            overdue = now - self._waiting[0][0] >= self.max_wait_s
            if not (quiet or overdue or len(self._waiting) >= free):
                return 0
        return min(free, len(self._waiting))
