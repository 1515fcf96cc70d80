"""Fuzzed request bodies against the real server on 127.0.0.1, with well-formed steered requests
in flight at the same time.

Properties: no body gets a 5xx (every one gets 2xx or OpenAI's error JSON with a 4xx); every
concurrent well-formed greedy request answers exactly as it does alone; the server is healthy
and idle after. Bodies come from the request schema and beyond it: each field valid or wild
(wrong types, huge and tiny numbers, unicode with lone surrogates, nesting, extra fields), plus
raw bytes (deep nesting, NaN, 5000-digit integers, truncated JSON, junk).

Bounded: ``EXAMPLES`` bodies, at most ``BUDGET_S`` seconds of them (later examples are skipped
once it is spent: about 5 bodies a second on 2 cores at load 10, under 1 at load 16; the
``@example`` bodies, the issue's cases, always run), 30 s per body (hypothesis's
deadline), 8 generated tokens at most per request (the server's ``max_tokens``). Seeded
(``derandomize``): the same bodies in the same order every run.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from axbench_hypersteer.serve.cli import build_server  # noqa: E402
from serve_helpers import CONCEPTS, RunningServer, write_hypernet  # noqa: E402

MODEL_ID = "HyperSteerTest"
MAX_TOKENS = 8
EXAMPLES = 100
BUDGET_S = 20.0
GOOD = [  # well-formed steered greedy requests sent alongside the fuzz
    {"messages": [{"role": "user", "content": "Tell me about the Roman empire."}],
     "steering": {"prompt": CONCEPTS[0], "factor": 8.0}},
    {"messages": [{"role": "user", "content": "Write a poem."}],
     "steering": {"prompt": CONCEPTS[1], "factor": -6.0}, "max_tokens": 6},
    {"messages": [{"role": "user", "content": "Explain recursion."}],
     "steering": {"prompt": [CONCEPTS[2], CONCEPTS[0]], "factor": 3.0}, "max_tokens": 7},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer):
    hypernet = write_hypernet(tmp_path_factory.mktemp("fuzz"), tokenizer, "xattn")
    app, engine = build_server(hypernet, device="cpu", max_tokens=MAX_TOKENS,
                               max_prompt_tokens=200)
    running = RunningServer(app, engine)
    yield running
    running.stop()


def post(url: str, body: dict | bytes, http: httpx.Client | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (http or httpx).post(url + "/v1/chat/completions", content=raw, timeout=60,
                                headers={"Content-Type": "application/json"})


def good_body(i: int) -> dict:
    return {"model": MODEL_ID, "temperature": 0, "max_tokens": MAX_TOKENS, **GOOD[i]}


# ----- bodies ----------------------------------------------------------------------------------
SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc80b"])
TEXT = st.one_of(st.text(max_size=40), st.text(st.characters(codec="utf-8"), max_size=40),
                 SURROGATES, st.sampled_from(["", " ", "\x00", "\u202e", "🙂" * 30, "x" * 2500]))
INTS = st.one_of(st.integers(-10, 10), st.integers(-2 ** 70, 2 ** 70),
                 st.sampled_from([2 ** 31 - 1, 2 ** 31, 2 ** 63 - 1, 2 ** 63, -2 ** 63,
                                  -2 ** 63 - 1, 2 ** 64, 2 ** 80, 10 ** 30]))
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-6, 1e-5, 2.0, 2.0000001, 1e308,
                                    -1e308]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
WILD = st.one_of(SCALARS, JSON)


# A valid body, then 0-3 mutations: most bodies get deep into the server (and many are answered,
# batched with the well-formed traffic), and each refusal is about one field that is wrong.
VALID_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
VALID_STEERING = st.fixed_dictionaries(
    {"prompt": st.one_of(st.sampled_from(CONCEPTS), st.lists(st.sampled_from(CONCEPTS),
                                                             min_size=1, max_size=3))},
    optional={"factor": st.one_of(st.floats(-100, 100), st.integers(-100, 100))})
VALID_OPTIONAL = {
    "max_tokens": st.integers(1, MAX_TOKENS),
    "temperature": st.one_of(st.sampled_from([0, 1e-300, 1e-6, 2]), st.floats(0, 2)),
    "top_p": st.floats(0.01, 1.0),
    "seed": st.integers(-2 ** 63, 2 ** 63 - 1),
    "stop": st.one_of(VALID_TEXT, st.lists(st.text(max_size=12), max_size=4)),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "user": VALID_TEXT,
    "ignore_eos": st.booleans(),
    "steering": VALID_STEERING,
}
VALID_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]),
     "content": st.one_of(VALID_TEXT, st.lists(st.fixed_dictionaries(
         {"type": st.just("text"), "text": VALID_TEXT}), max_size=2))})
VALID_BODY = st.fixed_dictionaries(
    {"model": st.just(MODEL_ID), "messages": st.lists(VALID_MESSAGE, min_size=1, max_size=3)},
    optional=VALID_OPTIONAL)
PATHS = [  # where a mutation lands
    ("model",), ("messages",), ("messages", 0), ("messages", 0, "role"),
    ("messages", 0, "content"), ("messages", 0, "name"), ("messages", 0, "tool_calls"),
    ("steering",), ("steering", "prompt"), ("steering", "factor"), ("steering", "layer"),
    *[(name,) for name in VALID_OPTIONAL],
    ("max_completion_tokens",), ("n",),
    ("frequency_penalty",), ("tools",), ("extra",), ("",), ("__proto__",),  # not taken: 4xx
]
WILD_FOR = {"seed": INTS, "max_tokens": INTS, "max_completion_tokens": INTS, "top_logprobs": INTS,
            "temperature": FLOATS, "top_p": FLOATS, "factor": FLOATS, "content": TEXT,
            "prompt": st.one_of(TEXT, st.lists(TEXT, max_size=10)), "stop": st.lists(TEXT)}


def container(body: dict, keys: tuple) -> dict | list | None:
    """The dict or list at ``keys`` (a missing ``steering`` is added), or None."""
    node = body
    for key in keys:
        if isinstance(node, dict) and isinstance(key, str):
            if key == "steering" and not isinstance(node.get(key), dict):
                node[key] = {"prompt": CONCEPTS[0]}
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node if isinstance(node, (dict, list)) else None


@st.composite
def mutated_body(draw) -> dict:
    body = draw(VALID_BODY)
    for _ in range(draw(st.integers(0, 3))):
        *keys, last = draw(st.sampled_from(PATHS))
        wild = WILD_FOR.get(last) if isinstance(last, str) else None
        value = draw(WILD if wild is None else st.one_of(wild, WILD))
        node = container(body, tuple(keys))
        if isinstance(node, dict):
            if draw(st.integers(0, 9)) == 0:
                node.pop(last, None)                                       # a field left out
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
    return body


def nested(depth: int, obj: bool) -> bytes:
    return (b'{"a":' * depth + b"1" + b"}" * depth) if obj else b"[" * depth + b"]" * depth


RAW_BODY = st.one_of(
    st.binary(max_size=64),
    st.builds(nested, st.integers(20, 60_000), st.booleans()),
    VALID_BODY.map(lambda b: json.dumps(b).encode()).flatmap(
        lambda raw: st.integers(0, len(raw)).map(lambda n: raw[:n])),         # truncated
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999", b'{"model": NaN}',
                     b'{"model": Infinity}', b"\xef\xbb\xbf{}", b'{"a":' + b"9" * 5000 + b"}",
                     b'{"model": "HyperSteerTest", "messages": [{"role": "user", '
                     b'"content": "hi"}], "max_tokens": 1e400}']),
)
BODY = st.one_of(mutated_body(), mutated_body(), mutated_body(), RAW_BODY)


# ----- the property ----------------------------------------------------------------------------
class Traffic:
    """Well-formed steered greedy requests sent in rounds, concurrently, until stopped; each
    answer must equal the same request's answer alone."""

    def __init__(self, url: str, alone: list[str]):
        self.url, self.alone = url, alone
        self.answered, self.wrong = 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(len(GOOD))]
        for t in self._threads:
            t.start()

    def _loop(self, i: int) -> None:
        with httpx.Client() as http:
            while not self._stop.is_set():
                try:
                    r = post(self.url, good_body(i), http)
                except httpx.HTTPError as err:
                    self.wrong.append((i, repr(err)))
                    return
                text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 \
                    else None
                if text != self.alone[i]:
                    self.wrong.append((i, r.status_code, r.text[:200]))
                self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def check_response(body, r: httpx.Response) -> None:
    shown = body if isinstance(body, dict) else body[:80]
    assert r.status_code < 500, (shown, r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and "\n" not in error["message"] and error["type"], (shown, r.text)
        return
    assert r.status_code == 200, (shown, r.text[:300])
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", (shown, r.text[-300:])  # an error ends early
        assert not any("error" in json.loads(event) for event in events[:-1]), shown
    else:
        choice = r.json()["choices"][0]
        assert isinstance(choice["message"]["content"], str), shown
        assert choice["finish_reason"] in ("stop", "length"), shown


def test_fuzzed_bodies_never_5xx_and_concurrent_good_requests_are_unchanged(server):
    url = server.url
    alone = [post(url, good_body(i)).json()["choices"][0]["message"]["content"]
             for i in range(len(GOOD))]
    traffic = Traffic(url, alone)
    statuses: dict[int, int] = {}
    started: list[float] = []  # the budget starts at the first body (not at hypothesis's
    #                            one-off unicode table, built on a fresh checkout)
    explicit = 5  # the @example bodies, run first and always
    http = httpx.Client()

    @settings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), derandomize=True,
              database=None, suppress_health_check=list(HealthCheck), print_blob=False)
    @given(body=BODY)
    @example(body={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                   "seed": 2 ** 80, "temperature": 0.7, "steering": {"prompt": CONCEPTS[0]}})
    @example(body=nested(50_000, obj=False))
    @example(body=nested(50_000, obj=True))
    @example(body={"model": MODEL_ID, "messages": [{"role": "user", "content": "\ud800"}]})
    @example(body={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                   "temperature": 1e-300})
    def fuzz(body):
        started[:] = started or [time.monotonic()]
        if sum(statuses.values()) >= explicit and time.monotonic() - started[0] > BUDGET_S:
            return
        r = post(url, body, http)
        check_response(body, r)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    try:
        fuzz()
    finally:
        traffic.stop()
        http.close()
    print(f"fuzz: {sum(statuses.values())} bodies in {time.monotonic() - started[0]:.1f} s, "
          f"statuses {dict(sorted(statuses.items()))}; {traffic.answered} well-formed requests "
          "alongside")
    assert sum(statuses.values()) > explicit, f"no generated body ran in {BUDGET_S} s"
    assert traffic.wrong == [], traffic.wrong[:3]
    assert traffic.answered >= len(GOOD), "no well-formed request ran alongside the fuzz"
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok"
    deadline = time.monotonic() + 10
    while server.engine.stats() != {"queued": 0, "active_rows": 0} and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.engine.stats() == {"queued": 0, "active_rows": 0}
    assert post(url, good_body(0)).json()["choices"][0]["message"]["content"] == alone[0]


def test_json_depth_counts_brackets_outside_strings_only():
    from axbench_hypersteer.serve.app import json_depth

    inside = {"a": "[" * 100 + '\\"{' * 50 + "\\", "b": [[[]]], "c": "]]]"}
    assert json_depth(json.dumps(inside).encode()) == 4
    assert json_depth(b"[" * 33 + b"]" * 33) == 33
    assert json_depth(b'{"a": "[[[[') == 1 and json_depth(b"]]") == 0 and json_depth(b"") == 0
