"""The bad-request table of ``hypersteer serve``: every case is sent to the real server on
127.0.0.1 by ``tests/test_serve.py``, which requires its status and OpenAI's error JSON and
checks that the serve section of ``docs/bad-inputs.md`` lists each case with the message the
server gives today. Rewrite that section (in place; the CLI table above it is kept) with

    python tests/serve_bad_requests.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
SECTION = "## `hypersteer serve` requests"
MODEL_ID = "HyperSteerTest"
SERVER_OPTIONS = {"max_tokens": 2000, "max_prompt_tokens": 200}  # the test server's limits
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class BadRequest:
    id: str
    what: str
    body: dict | bytes
    status: int


def ok(**fields) -> dict:
    """A valid body with ``fields`` changed."""
    return {"model": MODEL_ID, "messages": HI, **fields}


CASES = [
    BadRequest("json-syntax", "`{not json`", b"{not json", 400),
    BadRequest("json-not-object", "`[1, 2]`", b"[1, 2]", 400),
    BadRequest("json-not-utf8", "bytes `ff fe`", b"\xff\xfe", 400),
    BadRequest("json-nan", "`NaN` (Python's JSON extension, not JSON)",
               b'{"model": "HyperSteerTest", "temperature": NaN, "messages": []}', 400),
    BadRequest("json-huge-integer", "an integer of 5000 digits",
               b'{"model": "HyperSteerTest", "max_tokens": ' + b"9" * 5000 + b"}", 400),
    BadRequest("json-deep-array", "arrays nested 50,000 deep", b"[" * 50_000 + b"]" * 50_000, 400),
    BadRequest("json-deep-object", "objects nested 50,000 deep",
               b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, 400),
    BadRequest("body-too-large", "a body over 1 MiB", b"{" + b" " * (1 << 20) + b"}", 413),
    BadRequest("model-missing", "no `model`", {"messages": HI}, 422),
    BadRequest("model-unknown", "`model: gpt-4o`", ok(model="gpt-4o"), 404),
    BadRequest("messages-empty", "`messages: []`", ok(messages=[]), 422),
    BadRequest("messages-not-list", "`messages: \"hi\"`", ok(messages="hi"), 422),
    BadRequest("role-unknown", "`role: robot`", ok(messages=[{"role": "robot", "content": "hi"}]),
               422),
    BadRequest("content-missing", "a message without `content`",
               ok(messages=[{"role": "user"}]), 422),
    BadRequest("content-surrogate", "content `\"\\ud800\"` (a lone surrogate, not text)",
               ok(messages=[{"role": "user", "content": "\ud800"}]), 422),
    BadRequest("content-too-long", "35,000 characters of messages",
               ok(messages=[{"role": "user", "content": "word " * 7000}]), 413),
    BadRequest("prompt-too-many-tokens", "a prompt over the server's token limit",
               ok(messages=[{"role": "user", "content": "word " * 400}]), 413),
    BadRequest("temperature-range", "`temperature: 5`", ok(temperature=5), 422),
    BadRequest("top-p-zero", "`top_p: 0`", ok(top_p=0), 422),
    BadRequest("n-above-1", "`n: 2`", ok(n=2), 422),
    BadRequest("max-tokens-zero", "`max_tokens: 0`", ok(max_tokens=0), 422),
    BadRequest("max-tokens-over-limit", "`max_tokens: 9999`", ok(max_tokens=9999), 422),
    BadRequest("max-tokens-huge", "`max_tokens: 2**40`", ok(max_tokens=2 ** 40), 422),
    BadRequest("seed-out-of-range", "`seed: 2**80` (used to fail its whole batch with a 500)",
               ok(seed=2 ** 80), 422),
    BadRequest("stop-too-many", "five stop strings", ok(stop=list("abcde")), 422),
    BadRequest("top-logprobs-alone", "`top_logprobs: 3` without `logprobs: true`",
               ok(top_logprobs=3), 422),
    BadRequest("top-logprobs-over-20", "`top_logprobs: 21`", ok(logprobs=True, top_logprobs=21),
               422),
    BadRequest("field-unknown", "`steer: x` (a typo of `steering`)", ok(steer="x"), 422),
    BadRequest("steering-factor-type", "`factor: \"strong\"`",
               ok(steering={"prompt": "x", "factor": "strong"}), 422),
    BadRequest("steering-factor-range", "`factor: 1e9`",
               ok(steering={"prompt": "x", "factor": 1e9}), 422),
    BadRequest("steering-prompt-blank", "steering prompt `\"  \"`", ok(steering={"prompt": "  "}),
               422),
    BadRequest("steering-too-many", "nine steering prompts", ok(steering={"prompt": ["x"] * 9}),
               422),
    BadRequest("steering-surrogate", "steering prompt `\"\\udfff\"`",
               ok(steering={"prompt": "\udfff"}), 422),
    BadRequest("steering-path", "`steering.path` (nothing in a request names a file)",
               ok(steering={"prompt": "x", "path": "/etc/passwd"}), 422),
    BadRequest("steering-too-long", "a 3000-character steering prompt",
               ok(steering={"prompt": "x" * 3000}), 413),
]
ROUTES = [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405),
          ("DELETE", "/v1/models", 405)]


def raw(case: BadRequest) -> bytes:
    return case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def doc_row(case: BadRequest, message: str) -> str:
    """Rows start with ``| serve:`` (not ``| ```): the CLI table's test counts those."""
    return f"| serve:{case.id} | {cell(case.what)} | {case.status} | `{cell(message)}` |"


def section(messages: dict[str, str]) -> str:
    lines = [
        SECTION,
        "",
        "Every body below is sent to the real server (`hypersteer serve` on a tiny model, on",
        "127.0.0.1) by `tests/test_serve.py`, from the table in `tests/serve_bad_requests.py`.",
        "Each gets OpenAI's error JSON (`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`)",
        "with the status shown and a one-line message; the server keeps serving. Regenerate",
        "this section (in place) with",
        "",
        "    python tests/serve_bad_requests.py",
        "",
        "Beyond the table, `tests/test_serve_fuzz.py` sends up to 100 bodies generated by",
        "hypothesis (seeded) while well-formed steered greedy requests are in flight: a valid",
        "body with up to three fields replaced by wrong types, huge and tiny integers and floats",
        "(`2**80`, `-2**63-1`, `1e-300`, `5e-324`, `1e308`), unicode text with lone surrogates,",
        "nested JSON, extra or missing fields (`tools`, `frequency_penalty`, `__proto__`,",
        "`steering.layer`), and raw bytes (junk, truncated JSON, nesting up to 60,000 deep,",
        "`NaN`, 5000-digit integers). It requires no 5xx for any of them, every concurrent good",
        "request answered exactly as when sent alone, and the server healthy and idle after;",
        "valid bodies (including `stream`, `logprobs`, `top_logprobs`, `ignore_eos`, `seed`, and",
        "temperatures down to `1e-300`, which are greedy) must be answered. Bounded: at most 20 s",
        "of requests and 8 generated tokens each.",
        "",
        "A request the edge lets through but the engine still fails on ends alone (500,",
        "`internal error while <stage> this request: <error>`); its batch mates are answered,",
        "and the log names the request (`tests/test_serve_isolation.py`).",
        "",
        f"{len(CASES)} cases.",
        "",
        "| case | body | status | error message |",
        "|---|---|---|---|",
    ]
    lines += [doc_row(c, messages[c.id]) for c in CASES]
    return "\n".join(lines) + "\n"


def with_section(doc: str, text: str) -> str:
    """``doc`` with the serve section (from its heading to the end) replaced by ``text``."""
    head = doc.split(SECTION)[0].rstrip("\n")
    return head + "\n\n" + text


def send_all(url: str) -> dict[str, tuple[int, dict]]:
    """case id -> (status, JSON body) from the server at ``url``."""
    import httpx

    out = {}
    with httpx.Client(timeout=60) as http:
        for case in CASES:
            r = http.post(url + "/v1/chat/completions", content=raw(case),
                          headers={"Content-Type": "application/json"})
            out[case.id] = (r.status_code, r.json())
    return out


def main() -> int:
    import tempfile

    import torch

    from axbench_hypersteer.serve.cli import build_server
    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer
    from serve_helpers import RunningServer, write_hypernet

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hypersteer-serve-bad-") as tmp:
        hypernet = write_hypernet(Path(tmp), build_tiny_tokenizer(), "xattn")
        app, scheduler = build_server(hypernet, device="cpu", **SERVER_OPTIONS)
        running = RunningServer(app, scheduler)
        try:
            answers = send_all(running.url)
        finally:
            running.stop()
    wrong = [(cid, status) for cid, (status, _) in answers.items()
             if status != next(c.status for c in CASES if c.id == cid)]
    if wrong:
        print(f"unexpected statuses: {wrong}", file=sys.stderr)
        return 1
    messages = {cid: body["error"]["message"] for cid, (_, body) in answers.items()}
    DOC_PATH.write_text(with_section(DOC_PATH.read_text(encoding="utf-8"), section(messages)),
                        encoding="utf-8")
    print(f"wrote the serve section of {DOC_PATH} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
