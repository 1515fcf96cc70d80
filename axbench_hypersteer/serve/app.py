"""The HTTP face of the server: OpenAI's chat-completions API, plus steering, plus the playground.

Every refusal is OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``) with
the status a client can act on: 400 unreadable JSON, 422 invalid fields, 401 bad key, 404
unknown model or route, 413 too long, 429 queue full, 500 a request the engine failed on. The body
is parsed by hand rather than by a FastAPI parameter so that each of those is under this module's
control, and so that its size and nesting depth are checked before the parser sees it (Python's
JSON parser recurses once per level and a 50,000-level body overflows the interpreter stack).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine
from .jobs import GREEDY_BELOW, Delta, Failed, Finished, Job, RequestError, Sampling, Steering
from .scheduler import QueueFull
from .schemas import ChatRequest

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error"}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024           # per request, completion
    default_max_tokens: int = 128
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 32_000   # all messages; tokens are checked again by the engine
    max_steering_chars: int = 2_000  # per steering prompt
    max_json_depth: int = 32         # a valid request nests 5 deep


# A JSON string (escapes included), or an unterminated one running to the end: matched
# possessively, so that a body of many escaped quotes is still scanned in linear time.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw``, brackets inside strings ignored;
    a regex and a cumulative sum (tens of milliseconds per MiB), so a body is measured before
    the parser, which recurses once per level, sees it."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS),
                             dtype=np.uint8)
    if not brackets.size:
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(max(0, steps.cumsum().max()))


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes, limits: Limits) -> dict:
    """Bytes -> the request object, or ``RequestError`` (400, 413); never another exception."""
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, f"request body over {limits.max_body_bytes} bytes")
    if json_depth(raw) > limits.max_json_depth:
        raise RequestError(400, "the request body nests deeper than "
                           f"{limits.max_json_depth} levels")
    try:
        # NaN and Infinity are Python's extensions, not JSON; integers over 4300 digits and
        # bad UTF-8 raise ValueError too.
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (a chunked upload names no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
        "param": param, "code": code}})


# pydantic names the member of a union (``str``, ``list[TextPart]``, ``function-after[...]``)
# in an error's location; the client wants the field's path only.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*)$")


def validation_message(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]
                   if isinstance(p, int) or not _UNION_TAG.match(p)) or "body"
    msg = first["msg"] if first["type"] != "extra_forbidden" else "unknown field"
    return f"{loc}: {msg.removeprefix('Value error, ')}", loc


def create_app(engine: Engine, model_id: str, api_key: str | None = None,
               limits: Limits = Limits(), examples: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="HyperSteer server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    _add_error_handlers(app)
    _add_guard(app, api_key, limits)
    _add_info_routes(app, engine, model_id, examples)
    _add_chat_route(app, engine, model_id, limits)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Starlette's own refusals (404 route, 405 method) and crashes in OpenAI's error JSON too."""
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}")


def _add_guard(app: FastAPI, api_key: str | None, limits: Limits) -> None:
    """Key and declared size are checked before any body is read."""
    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer ...)",
                                      code="invalid_api_key")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_body_bytes:
            return error_response(413, f"request body over {limits.max_body_bytes} bytes")
        return await call_next(request)


def _add_info_routes(app: FastAPI, engine: Engine, model_id: str,
                     examples: list[str] | None) -> None:
    hs = engine.hs

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": model_id, "object": "model", "created": 0, "owned_by": "axbench-hypersteer",
            "steering": {"variant": hs.config.variant, "layer": hs.config.steering_layer,
                         "prompt_independent_vectors": engine.prompt_independent}}]}

    @app.get("/v1/steering/examples")
    async def steering_examples():
        return {"examples": list(examples or [])}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        page = resources.files("axbench_hypersteer.serve").joinpath("static/playground.html")
        return HTMLResponse(page.read_text(encoding="utf-8").replace("{{MODEL_ID}}", model_id))


def _add_chat_route(app: FastAPI, engine: Engine, model_id: str, limits: Limits) -> None:
    hs = engine.hs

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _read_chat_request(request, limits)
        if isinstance(req, JSONResponse):
            return req
        try:
            job, channel = _make_job(req, model_id, limits)
        except RequestError as err:
            return error_response(err.status, str(err), err.param,
                                  "model_not_found" if err.status == 404 else None)
        try:
            engine.submit(job)
        except QueueFull as err:
            return error_response(429, str(err), code="queue_full")
        first = await channel.get()
        if isinstance(first, Failed):
            return error_response(first.status, first.message)
        echo = {"prompt": list(job.steering.prompts),
                "factor": job.steering.factor if job.steering.prompts else 0.0,
                "vector_norm": first.vector_norm, "variant": hs.config.variant,
                "layer": hs.config.steering_layer}
        meta = {"id": job.id, "created": int(time.time()), "model": model_id}
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return StreamingResponse(sse(job, channel, meta, echo, first.prompt_tokens, usage,
                                         req.logprobs),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _completion(channel, req, meta, echo, first.prompt_tokens)


async def _read_chat_request(request: Request, limits: Limits) -> ChatRequest | JSONResponse:
    """The validated request, or the refusal to send instead (400, 413, 422)."""
    try:
        raw = await read_body(request, limits.max_body_bytes)
        # Off the event loop: a 1 MiB body takes a while to measure and parse.
        body = await asyncio.to_thread(parse_body, raw, limits)
    except RequestError as err:
        return error_response(err.status, str(err))
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as err:
        message, param = validation_message(err)
        return error_response(422, message, param)


async def _completion(channel: asyncio.Queue, req: ChatRequest, meta: dict, echo: dict,
                      prompt_tokens: int) -> dict | JSONResponse:
    """A non-streamed answer: the job's deltas gathered until it finishes (or fails)."""
    parts: list[str] = []
    logprobs: list[dict] = []
    while True:
        event = await channel.get()
        if isinstance(event, Delta):
            parts.append(event.text)
            logprobs += event.logprobs or []
        elif isinstance(event, Failed):
            return error_response(event.status, event.message)
        elif isinstance(event, Finished):
            break
    return {**meta, "object": "chat.completion", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "".join(parts)},
        "logprobs": {"content": logprobs, "refusal": None} if req.logprobs else None,
        "finish_reason": event.reason}],
        "usage": usage_of(prompt_tokens, event.completion_tokens),
        "steering": echo}


def _make_job(req: ChatRequest, model_id: str, limits: Limits) -> tuple[Job, asyncio.Queue]:
    """The engine's job for ``req`` and the queue its events arrive on, or ``RequestError`` for
    what the schema cannot check (model, this server's limits)."""
    if req.model != model_id:
        raise RequestError(404, f"model {req.model!r} is not served here (this server "
                           f"serves {model_id!r})", "model")
    max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise RequestError(422, f"max_tokens: at most {limits.max_tokens} on this server",
                           "max_tokens")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    if sum(len(m["content"]) for m in messages) > limits.max_prompt_chars:
        raise RequestError(413, f"messages: over {limits.max_prompt_chars} characters",
                           "messages")
    steering = Steering()
    if req.steering is not None:
        prompts = req.steering.prompts()
        if any(len(p) > limits.max_steering_chars for p in prompts):
            raise RequestError(413, "steering.prompt: over "
                               f"{limits.max_steering_chars} characters", "steering.prompt")
        steering = Steering(prompts, req.steering.factor)
    # As vLLM: a temperature this small is greedy (dividing logits by 1e-300 overflows).
    temperature = req.temperature if req.temperature >= GREEDY_BELOW else 0.0
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=req.top_p,
                        seed=req.seed, stop=req.stops(), ignore_eos=req.ignore_eos,
                        logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    return _job_with_channel(messages, steering, sampling)


def _job_with_channel(messages: list[dict], steering: Steering,
                      sampling: Sampling) -> tuple[Job, asyncio.Queue]:
    """The engine calls the sink from its worker thread; events must reach the request's event
    loop, and nothing after the job's last event (a cancelled job may still emit one)."""
    loop = asyncio.get_running_loop()
    channel: asyncio.Queue = asyncio.Queue()
    ended = False

    def sink(event) -> None:  # worker thread -> this request's event loop
        nonlocal ended
        if ended:
            return
        ended = isinstance(event, (Finished, Failed))
        loop.call_soon_threadsafe(channel.put_nowait, event)

    job = Job(messages, steering, sampling, sink, id=f"chatcmpl-{uuid.uuid4().hex[:24]}")
    return job, channel


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def sse(job: Job, channel: asyncio.Queue, meta: dict, echo: dict, prompt_tokens: int,
              include_usage: bool, logprobs: bool = False):
    """Server-sent events in OpenAI's chunk format. If the client goes away, the job is
    cancelled and its row leaves the batch at the next decode step."""
    def chunk(delta: dict, finish: str | None = None, entries: list | None = None,
              **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish,
                  "logprobs": {"content": entries or [], "refusal": None} if logprobs
                  and entries is not None else None}
        body = {**meta, "object": "chat.completion.chunk", "choices": [choice], **extra}
        return f"data: {json.dumps(body)}\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""}, steering=echo)
        while True:
            event = await channel.get()
            if isinstance(event, Delta):
                yield chunk({"content": event.text}, entries=event.logprobs)
            elif isinstance(event, Finished):
                finished = True
                yield chunk({}, event.reason, steering=echo)
                if include_usage:
                    body = {**meta, "object": "chat.completion.chunk", "choices": [],
                            "usage": usage_of(prompt_tokens, event.completion_tokens)}
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                return
            elif isinstance(event, Failed):
                finished = True
                err = {"message": event.message, "type": ERROR_TYPES.get(event.status),
                       "param": None, "code": None}
                yield f"data: {json.dumps({'error': err})}\n\n"
                return
    finally:
        if not finished:
            job.cancelled = True
