"""`hypersteer serve`: the API through the real `openai` client, streaming, batching, bad input.

The server runs on 127.0.0.1 with a tiny random base and an untrained cross-attention
hypernetwork; the reference is ``HyperSteer.generate`` on a second copy of the same weights.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")

from axbench_hypersteer.serve.cli import build_server  # noqa: E402
from axbench_hypersteer.serve.loading import load_hypersteer  # noqa: E402
from serve_bad_requests import CASES as BAD_CASES  # noqa: E402
from serve_bad_requests import (DOC_PATH, ROUTES, SECTION, SERVER_OPTIONS,  # noqa: E402
                                section, send_all)
from serve_helpers import CONCEPTS, RunningServer, write_hypernet  # noqa: E402

MODEL_ID = "HyperSteerTest"
BASE = "Tell me about the history of the Roman empire."
STEER = CONCEPTS[0]
FACTOR = 8.0  # an untrained hypernetwork's vector is small: a large factor makes it visible


@pytest.fixture(scope="module")
def hypernet(tmp_path_factory, tokenizer):
    return write_hypernet(tmp_path_factory.mktemp("serve"), tokenizer, "xattn")


@pytest.fixture(scope="module")
def server(hypernet):
    app, engine = build_server(hypernet, device="cpu", **SERVER_OPTIONS)
    running = RunningServer(app, engine)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reference(hypernet):
    """A second copy of the served weights, for ``HyperSteer.generate``."""
    return load_hypersteer(hypernet, device="cpu")


@pytest.fixture()
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat(client, content=BASE, steering=None, **kw):
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0.0)
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(model=MODEL_ID, extra_body=extra,
                                          messages=[{"role": "user", "content": content}], **kw)


def test_models_health_and_greedy_answers_equal_generate(client, server, reference):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"

    plain = chat(client)
    steered = chat(client, steering={"prompt": STEER, "factor": FACTOR})
    zero = chat(client, steering={"prompt": STEER, "factor": 0.0})

    expected_plain, expected_steered = reference.generate(
        [BASE, BASE], [STEER, STEER], [0.0, FACTOR], max_new_tokens=24)
    assert plain.choices[0].message.content == expected_plain
    assert steered.choices[0].message.content == expected_steered
    assert zero.choices[0].message.content == expected_plain
    assert expected_steered != expected_plain
    assert plain.usage.completion_tokens == 24 and plain.choices[0].finish_reason == "length"

    echo = steered.model_extra["steering"]
    assert echo["prompt"] == [STEER] and echo["factor"] == FACTOR
    norm = reference.steering_vectors([STEER], base_prompts=[BASE])[0].norm().item()
    assert echo["vector_norm"] == pytest.approx(norm, rel=1e-4)
    assert plain.model_extra["steering"] == {"prompt": [], "factor": 0.0, "vector_norm": 0.0,
                                             "variant": "xattn", "layer": 2}


def test_several_steering_prompts_add_their_vectors(client, reference):
    prompts = [CONCEPTS[0], CONCEPTS[1]]
    both = chat(client, steering={"prompt": prompts, "factor": 1.0})
    vectors = reference.steering_vectors(prompts, base_prompts=[BASE, BASE])
    assert both.model_extra["steering"]["vector_norm"] == pytest.approx(
        vectors.sum(0).norm().item(), rel=1e-4)


def test_streaming_equals_non_streaming(client):
    steering = {"prompt": STEER, "factor": FACTOR}
    whole = chat(client, steering=steering, max_tokens=30).choices[0].message.content
    chunks = list(chat(client, steering=steering, max_tokens=30, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].model_extra["steering"]["prompt"] == [STEER]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == 30


def test_stop_string_cuts_the_answer(client):
    full = chat(client, steering={"prompt": STEER, "factor": FACTOR}, max_tokens=30)
    text = full.choices[0].message.content
    stop = text[10:13]
    cut = chat(client, steering={"prompt": STEER, "factor": FACTOR}, max_tokens=30, stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_batch_and_equal_each_alone(client, server):
    """Rows of different steering, factors, lengths and sampling settings share decode steps;
    each greedy row (and each seeded sampled row) equals the same request served alone."""
    requests = [
        dict(content=BASE, steering={"prompt": CONCEPTS[0], "factor": FACTOR}, max_tokens=30),
        dict(content="Write a poem.", steering={"prompt": CONCEPTS[1], "factor": -6.0},
             max_tokens=8),
        dict(content="Explain recursion to a child.", max_tokens=20),
        dict(content=BASE, steering={"prompt": CONCEPTS[2], "factor": 3.0}, max_tokens=16,
             temperature=0.9, top_p=0.8, seed=7),
        dict(content="Say hello.", steering={"prompt": [CONCEPTS[0], CONCEPTS[2]],
                                              "factor": 2.0}, max_tokens=25),
        dict(content="List three colours and why.", steering={"prompt": CONCEPTS[1],
                                                              "factor": FACTOR}, max_tokens=12),
    ]
    peak = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak.append(server.engine.stats()["active_rows"])
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(lambda r: chat(client, **r), requests))
    finally:
        stop.set()
        watcher.join()
    assert max(peak) >= 3, "concurrent requests were not decoded as rows of one batch"
    for r, batched in zip(requests, together):
        alone = chat(client, **r)
        assert batched.choices[0].message.content == alone.choices[0].message.content, r
        assert batched.usage.completion_tokens == alone.usage.completion_tokens <= r["max_tokens"]


def test_the_issue_25_batch_a_huge_seed_no_longer_fails_its_batch_mates(client, server):
    """Issue 25: a seed of 2**80 sent with four well-formed steered requests made all five 500.
    Now it is refused at the edge and the four are answered as when alone."""
    good = [dict(content=c, steering={"prompt": s, "factor": FACTOR}, max_tokens=12)
            for c, s in zip([BASE, "Write a poem.", "Say hello.", "Explain recursion."],
                            CONCEPTS + CONCEPTS[:1])]
    bad = {"model": MODEL_ID, "seed": 2 ** 80, "temperature": 0.7, "max_tokens": 12,
           "messages": [{"role": "user", "content": BASE}],
           "steering": {"prompt": STEER, "factor": FACTOR}}
    with ThreadPoolExecutor(5) as pool:
        refused = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=bad,
                              timeout=60)
        together = list(pool.map(lambda r: chat(client, **r), good))
    assert refused.result().status_code == 422
    assert refused.result().json()["error"]["param"] == "seed"
    for r, batched in zip(good, together):
        assert batched.choices[0].message.content == chat(client, **r).choices[0].message.content


def test_sampling_follows_the_seed(client):
    kw = dict(steering={"prompt": STEER, "factor": 2.0}, max_tokens=20, temperature=1.0)
    first = [chat(client, seed=s, **kw).choices[0].message.content for s in (1, 1, 2)]
    assert first[0] == first[1] != first[2]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    answers = send_all(server.url)
    for case in BAD_CASES:
        status, body = answers[case.id]
        assert status == case.status, (case.id, body)
        error = body["error"]
        assert error["message"] and "\n" not in error["message"] and error["type"], case.id
    for method, path, status in ROUTES:
        r = httpx.request(method, server.url + path)
        assert r.status_code == status and r.json()["error"]["message"]
    for body in [  # edge cases that are not errors
            {"model": MODEL_ID, "messages": [{"role": "assistant", "content": "hi"},
                                             {"role": "assistant", "content": "again"}],
             "max_tokens": 2},  # the tiny template accepts any order
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
             "temperature": 1e-300},  # greedy, as vLLM (logits / 1e-300 overflow)
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "[{" * 40}],
             "max_tokens": 2}]:  # brackets inside strings are not nesting
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
    assert chat(client).choices[0].finish_reason == "length"

    doc = DOC_PATH.read_text(encoding="utf-8")
    messages = {cid: body["error"]["message"] for cid, (_, body) in answers.items()}
    assert SECTION in doc and doc.split(SECTION)[1] == section(messages).split(SECTION)[1], (
        "the serve section of docs/bad-inputs.md is stale: python tests/serve_bad_requests.py")


def test_disconnect_mid_stream_frees_the_row(server):
    body = {"model": MODEL_ID, "stream": True, "max_tokens": 2000, "temperature": 0,
            "ignore_eos": True,  # still running when we hang up, however fast the machine
            "messages": [{"role": "user", "content": BASE}],
            "steering": {"prompt": STEER, "factor": FACTOR}}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the response
            for line in lines:      # the first text arrives after the row joined
                if line.startswith("data: ") and '"content": "' in line and \
                        '"content": ""' not in line:
                    break
            assert server.engine.stats()["active_rows"] == 1
    freed = {"queued": 0, "active_rows": 0}  # the row leaves at the next step
    deadline = time.monotonic() + 10
    while server.engine.stats() != freed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.engine.stats() == freed


def test_full_queue_answers_429_and_api_key_is_checked(hypernet):
    openai = pytest.importorskip("openai")
    app, engine = build_server(hypernet, device="cpu", max_batch=1, max_queue=1,
                               api_key="sesame", max_tokens=1500)
    running = RunningServer(app, engine)
    try:
        url, auth = running.url, {"Authorization": "Bearer sesame"}
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer x"}).status_code \
            == 401
        assert httpx.get(url + "/health").status_code == 200
        body = {"model": MODEL_ID, "max_tokens": 1500, "temperature": 0, "stream": True,
                "ignore_eos": True, "messages": [{"role": "user", "content": BASE}],
                "steering": {"prompt": STEER, "factor": FACTOR}}
        with httpx.Client(timeout=30, headers=auth) as http:
            with http.stream("POST", url + "/v1/chat/completions", json=body) as first:
                lines = first.iter_lines()  # kept: a dropped iterator closes the response
                next(lines)                                    # running: the only row
                waiting = ThreadPoolExecutor(1).submit(  # its own client: one per thread
                    httpx.post, url + "/v1/chat/completions", headers=auth, timeout=300,
                    json={**body, "stream": False, "max_tokens": 3})
                deadline = time.monotonic() + 60
                while engine.stats()["queued"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert engine.stats() == {"queued": 1, "active_rows": 1}
                refused = http.post(url + "/v1/chat/completions", json={**body, "stream": False})
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "queue_full"
            assert waiting.result(timeout=30).status_code == 200  # served once the first left
        client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert chat(client, max_tokens=2).usage.completion_tokens == 2
    finally:
        running.stop()


def test_nocontext_vectors_are_cached_by_steering_text(tmp_path, tokenizer):
    from axbench_hypersteer.serve.inputs import InputProcessor
    from axbench_hypersteer.serve.jobs import Job, Sampling, Steering

    hs = load_hypersteer(write_hypernet(tmp_path, tokenizer, "nocontext"), device="cpu")
    inputs = InputProcessor(hs)
    calls = []
    original = hs.steering_vectors
    hs.steering_vectors = lambda prompts, *a, **k: calls.append(list(prompts)) or original(prompts)
    events: list = []
    jobs = [Job([{"role": "user", "content": b}], Steering((s,), 1.0), Sampling(2), events.append)
            for b, s in [("a", "x"), ("b", "y"), ("c", "x")]]
    first = inputs.prepare(jobs)
    again = inputs.prepare(jobs[:1])
    assert calls == [["x", "y"]]
    torch.testing.assert_close(first[0].vector, again[0].vector)
    torch.testing.assert_close(first[0].vector, original(["x"])[0])


class Traced:
    """An engine whose steps and executor calls are recorded: ``steps[i]`` lists the model
    forwards of step i as (kind, request ids, cached width before it); every request of
    ``chain`` is submitted by the previous one's sink on its ``after``-th text delta, i.e. from
    inside a decode step, while that request is still decoding."""

    def __init__(self, hs, chain: list[tuple[str, str, str, float, int]], after: int = 2):
        from axbench_hypersteer.serve.engine import Engine
        from axbench_hypersteer.serve.jobs import Delta, Failed, Finished, Job, Sampling, Steering

        self.engine = engine = Engine(hs)
        self.steps: list[list[tuple[str, list[str], int]]] = []
        self.texts = {name: [] for name, *_ in chain}
        self.ends: dict[str, object] = {}
        self.done = threading.Event()
        step, prefill, decode = engine.step, engine.executor.prefill, engine.executor.decode

        def traced_step():
            self.steps.append([])
            step()

        def traced_prefill(rows):
            self.steps[-1].append(("prefill", [r.job.id for r in rows], 0))
            return prefill(rows)

        def traced_decode(batch):
            self.steps[-1].append(("decode", [r.job.id for r in batch.rows],
                                   batch.mask.shape[1]))
            return decode(batch)

        engine.step, engine.executor.prefill, engine.executor.decode = (
            traced_step, traced_prefill, traced_decode)
        self.jobs = []
        for i, (name, content, steer, factor, n) in enumerate(chain):
            def sink(event, name=name, i=i):
                if isinstance(event, Delta):
                    self.texts[name].append(event.text)
                    if len(self.texts[name]) == after and i + 1 < len(chain):
                        engine.submit(self.jobs[i + 1])
                elif isinstance(event, (Finished, Failed)):
                    self.ends[name] = event
                    if len(self.ends) == len(chain):
                        self.done.set()
            self.jobs.append(Job([{"role": "user", "content": content}],
                                 Steering((steer,), factor), Sampling(n), sink, id=name))

    def run(self) -> dict[str, str]:
        try:
            self.engine.submit(self.jobs[0])
            assert self.done.wait(120), "a request never ended"
        finally:
            self.engine.close()
        return {name: "".join(parts) for name, parts in self.texts.items()}


def test_a_request_arriving_mid_decode_joins_the_running_batch(reference):
    """Issue 22: B, submitted while A decodes, joins A's batch at the next step (its prompt
    prefilled alone and spliced in): from then on every step runs ONE forward, a decode holding
    both rows, never a second batch; both answers equal ``HyperSteer.generate`` alone."""
    chain = [("A", BASE, STEER, FACTOR, 24), ("B", "Write a poem.", CONCEPTS[1], -6.0, 12)]
    traced = Traced(reference, chain)
    texts = traced.run()
    forwards = [[(kind, ids) for kind, ids, _ in step] for step in traced.steps]
    joined = next(i for i, step in enumerate(forwards) if ("prefill", ["B"]) in step)
    assert forwards[:joined] == [[("prefill", ["A"]), ("decode", ["A"])]] + \
        [[("decode", ["A"])]] * (joined - 1)
    assert forwards[joined] == [("prefill", ["B"]), ("decode", ["A", "B"])]
    together = [step for step in forwards[joined + 1:] if step == [("decode", ["A", "B"])]]
    assert len(together) == 12 - 2  # B's other 10 tokens, each in a step shared with A
    assert all(len(step) == 1 and step[0][0] == "decode" for step in forwards[joined + 1:])
    for name, content, steer, factor, n in chain:
        assert texts[name] == reference.generate([content], [steer], [factor],
                                                 max_new_tokens=n)[0], name
        assert traced.ends[name].reason == "length"


def test_rows_of_different_lengths_joining_at_different_steps_decode_as_alone(reference):
    """A short prompt runs; a long one joins (the running row's cache is padded to the new,
    wider width); a short one joins later (its cache is padded to the running width); rows
    leave one by one (the batch narrows); the widths cross the tiny model's 32-token sliding
    window. Each greedy answer equals ``HyperSteer.generate`` on its prompt alone."""
    chain = [("short", "Hi.", CONCEPTS[0], FACTOR, 30),
             ("long", BASE + " Give dates, names and places, in great detail please.",
              CONCEPTS[1], -6.0, 14),
             ("medium", "Write a poem.", CONCEPTS[2], 3.0, 20)]
    traced = Traced(reference, chain)
    texts = traced.run()
    calls = [call for step in traced.steps for call in step]
    prompt_len = {name: len(traced.engine.inputs.tokenizer(traced.engine.inputs.chat_prompt(
        [{"role": "user", "content": content}]))["input_ids"]) for name, content, *_ in chain}
    for name, wider in [("long", True), ("medium", False)]:
        at = calls.index(("prefill", [name], 0))
        running_width = calls[at - 1][2] + 1  # the decode before it, one column later
        assert (prompt_len[name] > running_width) == wider, (name, running_width)
    assert max(width for _, _, width in calls) > 32
    assert [ids for kind, ids, _ in calls if kind == "decode"][-1] == ["short"]
    for name, content, steer, factor, n in chain:
        assert texts[name] == reference.generate([content], [steer], [factor],
                                                 max_new_tokens=n)[0], name


def test_logprobs_are_the_steered_models_own(client, reference):
    """``logprobs``/``top_logprobs`` as OpenAI defines them: per generated token its text, bytes
    and log-probability, with the top k rivals; the numbers equal a cache-free full forward of
    the same steered model over prompt + tokens so far (greedy: the token is the top rival)."""
    from axbench_hypersteer.model.steering import SteeringSource
    from axbench_hypersteer.serve.inputs import InputProcessor

    r = chat(client, steering={"prompt": STEER, "factor": FACTOR}, max_tokens=10,
             logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    assert "".join(e.token for e in content) == r.choices[0].message.content

    tok = reference.tokenizer
    ids = tok(InputProcessor(reference).chat_prompt([{"role": "user", "content": BASE}]),
              add_special_tokens=True, return_tensors="pt")["input_ids"]
    vector = reference.steering_vectors([STEER], base_prompts=[BASE])
    with torch.no_grad():
        for entry in content:
            logits = reference.steerer.forward(
                SteeringSource(torch.tensor([FACTOR]), delta=vector), input_ids=ids,
                attention_mask=torch.ones_like(ids)).logits[0, -1]
            logprobs = torch.log_softmax(logits.float(), -1)
            top = logprobs.topk(3)
            assert [e.token for e in entry.top_logprobs] == [tok.decode([int(t)])
                                                            for t in top.indices]
            assert [e.logprob for e in entry.top_logprobs] == pytest.approx(
                top.values.tolist(), abs=1e-4)
            assert entry.token == entry.top_logprobs[0].token
            assert entry.logprob == pytest.approx(float(top.values[0]), abs=1e-4)
            assert bytes(entry.bytes).decode() == entry.token
            ids = torch.cat([ids, top.indices[:1].view(1, 1)], 1)

    streamed = list(chat(client, steering={"prompt": STEER, "factor": FACTOR}, max_tokens=10,
                         logprobs=True, top_logprobs=3, stream=True))
    entries = [e for c in streamed if c.choices and c.choices[0].logprobs
               for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in entries] == [(e.token, e.logprob) for e in content]
    plain = chat(client, max_tokens=3, logprobs=True)
    assert [e.top_logprobs for e in plain.choices[0].logprobs.content] == [[], [], []]
    assert chat(client, max_tokens=3).choices[0].logprobs is None
