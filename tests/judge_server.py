"""A scriptable OpenAI-compatible HTTP server for judge tests: real sockets on 127.0.0.1, with the
faults a hosted judge actually shows (5xx, 429 + Retry-After, hangs, empty or non-JSON bodies,
dying mid-run), and a record of every request received so tests can count calls and inspect
headers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from axbench_hypersteer.judge.prompts import detect_criterion


@dataclass(frozen=True)
class Action:
    """How to answer one request. kind: ok | status | sleep | empty | nonjson | drop."""

    kind: str
    content: str = "Fine.\nRating: [[2]]"
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0


def ok(content: str = "Fine.\nRating: [[2]]") -> Action:
    return Action("ok", content=content)


def status(code: int, retry_after: str | None = None) -> Action:
    return Action("status", status=code, retry_after=retry_after)


def hang(seconds: float, content: str = "Late.\nRating: [[2]]") -> Action:
    """Answer only after ``seconds``: longer than the client's timeout, it reads as a hang."""
    return Action("sleep", content=content, delay=seconds)


def empty() -> Action:
    return Action("empty")


def non_json() -> Action:
    return Action("nonjson")


def drop() -> Action:
    """Close the connection without any response, as a crashed server would."""
    return Action("drop")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict
    prompt: str


Responder = Callable[[str], Action]


def by_criterion(scores: dict[str, float]) -> Responder:
    """A healthy judge whose score depends only on the rubric: makes expected means easy to know."""

    def respond(prompt: str) -> Action:
        criterion = detect_criterion(prompt)
        return ok(f"Scored by test judge.\nRating: [[{scores.get(criterion, 0)}]]")

    return respond


class FaultJudgeServer(ThreadingHTTPServer):
    """Answers ``POST /v1/chat/completions`` from ``script`` (one action per request, in arrival
    order), then from ``default``; after ``die_after`` requests every further request is dropped.
    """

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        script: list[Action] | None = None,
        default: Responder | Action | None = None,
        die_after: int | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script or [])
        self.default = default if default is not None else ok()
        self.die_after = die_after
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FaultJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def next_action(self, record: Received) -> Action:
        with self._lock:
            self.received.append(record)
            if self.die_after is not None and len(self.received) > self.die_after:
                return drop()
            if self.script:
                return self.script.pop(0)
        return self.default(record.prompt) if callable(self.default) else self.default

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def completion_body(content: str, model: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class _Handler(BaseHTTPRequestHandler):
    server: FaultJudgeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real API front ends speak
    disable_nagle_algorithm = True  # headers and body are separate writes: don't stall on ACKs

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        messages = body.get("messages") or [{}]
        record = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                          str(messages[-1].get("content", "")))
        action = self.server.next_action(record)
        self.server.enter()
        try:
            self._answer(action, body.get("model", "test"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing left to answer
        finally:
            self.server.leave()

    def _answer(self, action: Action, model: str) -> None:
        if action.kind == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if action.kind == "sleep":
            time.sleep(action.delay)
        if action.kind in ("ok", "sleep"):
            self._send(200, json.dumps(completion_body(action.content, model)).encode())
        elif action.kind == "status":
            extra = {"Retry-After": action.retry_after} if action.retry_after is not None else {}
            error = {"error": {"message": f"test status {action.status}", "type": "test"}}
            self._send(action.status, json.dumps(error).encode(), extra)
        elif action.kind == "empty":
            self._send(200, b"")
        elif action.kind == "nonjson":
            self._send(200, b"<html>gateway hiccup</html>", content_type="text/html")
        else:
            raise ValueError(f"unknown fault action kind {action.kind!r}")
