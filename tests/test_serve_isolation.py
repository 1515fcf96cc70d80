"""One request's failure ends that request alone: its batch mates answer exactly as they would
without it (greedy, equal to ``HyperSteer.generate``), and the log names the request at fault.

The poisoned jobs go straight to the scheduler, past the HTTP edge that now refuses them, so
that the engine's own isolation is what is tested. Their failures are real (an out-of-range
seed, a lone surrogate in a steering prompt, a NaN temperature), except a failing batched
forward, which no valid input causes: ``poison_forwards`` makes the executor raise it on purpose.
"""

from __future__ import annotations

import logging
import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")

from axbench_hypersteer.serve.engine import Engine  # noqa: E402
from axbench_hypersteer.serve.jobs import (  # noqa: E402
    Delta, Failed, Finished, Job, Sampling, Steering)
from axbench_hypersteer.serve.loading import load_hypersteer  # noqa: E402
from serve_helpers import CONCEPTS, write_hypernet  # noqa: E402

GOOD = [("Tell me about the history of the Roman empire.", CONCEPTS[0], 8.0, 14),
        ("Write a poem.", CONCEPTS[1], -6.0, 9),
        ("Explain recursion to a child.", CONCEPTS[2], 3.0, 12),
        ("Say hello.", CONCEPTS[0], 0.0, 11)]
POISON_FACTOR = 6.5  # poison_forwards' marker


@pytest.fixture(scope="module")
def hs(tmp_path_factory, tokenizer):
    return load_hypersteer(write_hypernet(tmp_path_factory.mktemp("isolation"), tokenizer),
                           device="cpu")


@pytest.fixture(scope="module")
def expected(hs):
    bases, steers, factors, lengths = zip(*GOOD)
    return [hs.generate([b], [s], [f], max_new_tokens=n)[0]
            for b, s, f, n in zip(bases, steers, factors, lengths)]


class Collector:
    """A job's sink: its text, and how it ended."""

    def __init__(self):
        self.text, self.end, self.done = [], None, threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Delta):
            self.text.append(event.text)
        elif isinstance(event, (Finished, Failed)):
            self.end = event
            self.done.set()


def job(content: str, steering: Steering, sampling: Sampling, name: str) -> tuple[Job, Collector]:
    sink = Collector()
    return Job([{"role": "user", "content": content}], steering, sampling, sink, id=name), sink


def run_batch(engine: Engine, poisoned: list[tuple[Job, Collector]]):
    """The good jobs and the poisoned ones submitted together (``engine`` gathers them for
    0.3 s), so they are prefilled as one batch."""
    good = [job(b, Steering((s,), f), Sampling(n), f"good-{i}")
            for i, (b, s, f, n) in enumerate(GOOD)]
    jobs = good[:2] + poisoned + good[2:]
    try:
        for j, _ in jobs:
            engine.submit(j)
        for _, sink in jobs:
            assert sink.done.wait(120), "a request never ended"
    finally:
        engine.close()
    return good


def gathering(hs) -> Engine:
    return Engine(hs, gather_s=0.3, max_wait_s=1.0)


def test_a_poisoned_request_fails_alone_and_its_batch_mates_answer(hs, expected, caplog):
    poisoned = [
        job("What is a cat?", Steering((CONCEPTS[1],), 2.0),
            Sampling(8, temperature=0.7, seed=2 ** 80), "bad-seed"),        # preparing
        job("What is a dog?", Steering(("\ud800",), 2.0), Sampling(8), "bad-steering"),  # vector
        job("What is a cow?", Steering((CONCEPTS[2],), 2.0),
            Sampling(8, temperature=float("nan")), "bad-temperature"),      # sampling
    ]
    with caplog.at_level(logging.WARNING, logger="axbench_hypersteer.serve"):
        good = run_batch(gathering(hs), poisoned)
    assert ["".join(sink.text) for _, sink in good] == expected
    assert all(isinstance(sink.end, Finished) for _, sink in good)
    for (j, sink), stage in zip(poisoned, ["preparing", "computing the steering vector of",
                                           "sampling"]):
        assert isinstance(sink.end, Failed) and sink.end.status == 500, j.id
        assert sink.end.message.startswith(f"internal error while {stage} this request"), j.id
        assert any(j.id in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog.records), j.id
    assert not any(r.getMessage().startswith("request good-") for r in caplog.records)


class PoisonedForward:
    """Wraps an engine's executor: every model forward holding the poisoned row raises, at
    prefill or from its ``after``-th decode forward on (a stand-in for a kernel failure or an
    out-of-memory that only this request's row brings about)."""

    def __init__(self, engine: Engine, phase: str, after: int = 3):
        self.forward = engine.executor.forward
        self.phase, self.after, self.decode_steps, self.failures = phase, after, 0, 0
        self.calls: list[tuple[int, bool]] = []  # (rows, failed) of every decode forward
        engine.executor.forward = self

    def __call__(self, ids, mask, positions, vectors, factors, cache=None):
        poisoned = bool((factors == POISON_FACTOR).any())
        if poisoned and cache is not None:
            self.decode_steps += 1
        fail = poisoned and (self.phase == "prefill" and cache is None or self.phase == "decode"
                             and cache is not None and self.decode_steps >= self.after)
        if cache is not None:
            self.calls.append((ids.shape[0], fail))
        if fail:
            self.failures += 1
            raise RuntimeError("injected forward failure")
        return self.forward(ids, mask, positions, vectors, factors, cache)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_failed_batched_forward_is_split_until_the_culprit_is_alone(hs, expected, phase,
                                                                     caplog):
    poisoned = [job("What is a cat?", Steering((CONCEPTS[1],), POISON_FACTOR), Sampling(10),
                    "bad-forward")]
    engine = gathering(hs)
    poison = PoisonedForward(engine, phase)
    with caplog.at_level(logging.WARNING, logger="axbench_hypersteer.serve"):
        good = run_batch(engine, poisoned)
    assert ["".join(sink.text) for _, sink in good] == expected
    [(bad, sink)] = poisoned
    assert isinstance(sink.end, Failed) and sink.end.status == 500
    stage = "prefilling" if phase == "prefill" else "decoding"
    assert sink.end.message == f"internal error while {stage} this request: RuntimeError"
    if phase == "decode":
        assert "".join(sink.text), "the poisoned row decoded a few tokens before it failed"
    splits = [r for r in caplog.records if "retrying them in halves" in r.getMessage()]
    blamed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert splits and len(splits) <= 3                    # 5 rows: at most ceil(log2 5) splits
    assert [r.getMessage().split()[1] for r in blamed] == ["bad-forward"]
    assert poison.failures == len(splits) + 1
    # The halves that went on are one batch again at the next step's decode (in the decode
    # phase, after the failing step's last half): the 4 good rows in one forward.
    last_failure = max((i for i, (_, failed) in enumerate(poison.calls) if failed), default=-1)
    after = [rows for rows, _ in poison.calls[last_failure + 1:]]
    assert after[0 if phase == "prefill" else 1] == len(GOOD), poison.calls


def test_a_stop_string_longer_than_the_text_so_far_sends_nothing_early(hs):
    """The held-back tail was ``len(text) - (len(stop) - 1)``: negative while the text is short,
    and ``text[:negative]`` sent a prefix that the stop string later cut away."""
    def serve(stop: tuple[str, ...]) -> Collector:
        j, sink = job(GOOD[0][0], Steering((CONCEPTS[0],), 8.0), Sampling(12, stop=stop), "s")
        engine = Engine(hs)
        try:
            engine.submit(j)
            assert sink.done.wait(60)
        finally:
            engine.close()
        return sink

    full = "".join(serve(()).text)
    assert len(full) >= 12
    cut = serve((full[:12],))
    assert cut.text == [] and cut.end.reason == "stop"
