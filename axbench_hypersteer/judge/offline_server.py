"""A local, offline, OpenAI-compatible stand-in judge for the demo.

It speaks ``POST /v1/chat/completions`` with the same JSON shape as the real API, so the demo runs
the exact client, retry, cache and evaluate code a real judge would use; only the scores differ
(they come from a scorer: :mod:`offline_rules` by default, or the sentence-embedding
:class:`~.embedding_rules.EmbeddingScorer`; every answer says which). It binds to 127.0.0.1 on a
free port and never reads or logs request headers (so never the API key).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from axbench_hypersteer.judge import offline_rules
from axbench_hypersteer.judge.prompts import detect_criterion, extract_fields

OFFLINE_NOTICE = "Offline rule-based stand-in judge (not an LLM)."


class Scorer(Protocol):
    notice: str

    def score(self, criterion: str, fields: dict[str, str]) -> tuple[float, str]: ...


class RuleScorer:
    """The word-overlap rules of :mod:`offline_rules` (no model, no extra install)."""

    notice = OFFLINE_NOTICE

    def score(self, criterion: str, fields: dict[str, str]) -> tuple[float, str]:
        return offline_rules.score(criterion, fields)


def answer_prompt(prompt: str, scorer: Scorer | None = None) -> str:
    """The judge's reply text for one filled rubric prompt."""
    scorer = scorer or RuleScorer()
    criterion = detect_criterion(prompt)
    if criterion is None:
        return f"{scorer.notice} No '### Criterion:' marker line found in the prompt."
    value, reason = scorer.score(criterion, extract_fields(prompt))
    return f"{scorer.notice} Criterion {criterion}: {reason}.\nRating: [[{value}]]"


def _completion(content: str, model: str, prompt: str) -> dict:
    prompt_tokens = len(prompt.split())
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-offline-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class _OfflineJudgeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the judge client reuses its connections
    disable_nagle_algorithm = True  # headers and body are separate writes: don't stall on ACKs

    def log_message(self, format: str, *args: object) -> None:
        pass  # stay quiet: the demo's output is the evaluation, not an access log

    def _reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._reply(code, {"error": {"message": message, "type": "invalid_request_error"}})

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"unknown path {self.path}; this server only serves chat completions")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            messages = body["messages"]
            user_turns = [m for m in messages if m.get("role") == "user"]
            prompt = "\n".join(str(m.get("content", "")) for m in user_turns)
        except (ValueError, KeyError, TypeError, AttributeError):
            self._error(400, "request body must be JSON with a 'messages' list")
            return
        content = answer_prompt(prompt, self.server.scorer)
        self._reply(200, _completion(content, str(body.get("model", "offline-judge")), prompt))

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": "offline-judge", "object": "model", "owned_by": "local"}
            self._reply(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"unknown path {self.path}")


class OfflineJudgeServer(ThreadingHTTPServer):
    """Threaded so that the judge client's concurrent requests are served side by side; the large
    listen backlog keeps bursts of connections from being refused."""

    request_queue_size = 256
    daemon_threads = True

    def __init__(self, port: int = 0, scorer: Scorer | None = None) -> None:
        super().__init__(("127.0.0.1", port), _OfflineJudgeHandler)
        self.scorer = scorer or RuleScorer()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self.serve_forever, name="offline-judge", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


def start_offline_judge(port: int = 0,
                        scorer: Scorer | None = None) -> tuple[OfflineJudgeServer, str]:
    """Start the stand-in judge in a background thread; returns (server, base_url)."""
    server = OfflineJudgeServer(port, scorer)
    return server, server.start()


def stop_offline_judge(server: OfflineJudgeServer) -> None:
    server.stop()
