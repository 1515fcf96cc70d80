"""Async LLM judge over any OpenAI-compatible chat endpoint.

The openai client's own retries are switched off (``max_retries=0``) and replaced by one loop here,
because the judge must also retry answers the SDK considers successful (an empty or non-JSON 200
body, a reply without a readable rating) and must end every judgement with a result: a judgement
that still fails after ``max_retries`` is recorded as failed (rating None) and counted, it does not
abort the evaluation. Only a judge that fails many judgements in a row (it is down, or the key or
model name is wrong) stops the run, with :class:`JudgeUnavailableError`.

The API key comes from ``OPENAI_API_KEY`` only and is handed straight to the SDK: it is never put
in a log line, an exception message, the cache or a result file. Error bodies from the server are
not logged either, since providers echo (partly masked) keys in 401 messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass

from axbench_hypersteer.model.config import ConfigError, JudgeConfig
from axbench_hypersteer.model.errors import HyperSteerError
from axbench_hypersteer.judge.cache import JudgeCache, cache_key
from axbench_hypersteer.judge.parsing import parse_rating

logger = logging.getLogger(__name__)

DUMMY_API_KEY = "EMPTY"
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class JudgeUnavailableError(HyperSteerError, RuntimeError):
    """The judge failed so many judgements in a row that carrying on would only burn time."""


@dataclass
class JudgeStats:
    """Counters for one judge instance. ``calls`` are HTTP requests actually sent."""

    judgements: int = 0
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    """One rubric answer. ``rating`` is None when the judgement failed; ``completion`` is the last
    text the judge returned (possibly unusable), ``error`` the last reason for a retry."""

    rating: float | None
    completion: str | None
    cached: bool = False
    error: str | None = None


class _AttemptFailed(Exception):
    """One attempt gave no usable rating; ``wait`` is a server-requested delay, if any."""

    def __init__(
        self,
        reason: str,
        completion: str | None = None,
        wait: float | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.completion = completion
        self.wait = wait
        self.retryable = retryable


def resolve_endpoint(config: JudgeConfig) -> tuple[str | None, str]:
    """(base_url, api_key) from the config and environment; the key is never a config field."""
    base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if api_key is None:
        if base_url is None:
            raise ConfigError(
                "OPENAI_API_KEY: not set, and no judge base_url (JudgeConfig.base_url or "
                "OPENAI_BASE_URL) is given; set the key, or point base_url at a local judge"
            )
        api_key = DUMMY_API_KEY
    return base_url, api_key


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: either delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard


def extract_content(body: str) -> str:
    """``choices[0].message.content`` from a raw response body, or a retryable reason why not."""
    if not body.strip():
        raise _AttemptFailed("empty response body")
    try:
        data = json.loads(body)
        content = data["choices"][0]["message"]["content"]
    except ValueError:
        raise _AttemptFailed("response body is not JSON") from None
    except (KeyError, IndexError, TypeError):
        raise _AttemptFailed("response JSON has no choices[0].message.content") from None
    if not isinstance(content, str) or not content.strip():
        raise _AttemptFailed("empty completion text")
    return content


class LLMJudge:
    """Rates prompts with bounded concurrency, retries, an optional cache and in-flight dedup."""

    def __init__(
        self,
        config: JudgeConfig,
        cache: JudgeCache | None = None,
        *,
        max_consecutive_failures: int | None = None,
        seed: int | None = None,
    ) -> None:
        import openai  # deferred: importing the SDK is slow and only the judge needs it

        self._openai = openai
        self.config = config
        self.cache = cache
        base_url, api_key = resolve_endpoint(config)
        self.base_url = base_url
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=config.timeout
        )
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._inflight: dict[str, asyncio.Future[Judgement]] = {}
        self._rng = random.Random(seed)
        self.max_consecutive_failures = max_consecutive_failures or max(8, 2 * config.concurrency)
        self._consecutive_failures = 0
        self._last_error: str | None = None
        self.stats = JudgeStats()

    async def __aenter__(self) -> LLMJudge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry number ``attempt`` (0-based): a server's Retry-After wins (capped by
        ``backoff_max``), else exponential backoff with jitter in [d/2, d] to spread retries."""
        cap = self.config.backoff_max
        if retry_after is not None:
            return min(retry_after, cap)
        delay = min(cap, self.config.backoff_base * (2.0**attempt))
        return delay * (0.5 + 0.5 * self._rng.random())

    async def judge(self, prompt: str) -> Judgement:
        """Rate one prompt. Identical prompts already answered, or being answered, are not sent
        again."""
        self.stats.judgements += 1
        model = self.config.lm_model
        if self.cache is not None:
            cached = self.cache.get(model, prompt)
            rating = parse_rating(cached)
            if rating is not None:
                self.stats.cache_hits += 1
                return Judgement(rating, cached, cached=True)
        key = cache_key(model, prompt)
        pending = self._inflight.get(key)
        if pending is not None:
            self.stats.cache_hits += 1
            result = await asyncio.shield(pending)
            return Judgement(result.rating, result.completion, cached=True, error=result.error)
        future: asyncio.Future[Judgement] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._judge_uncached(prompt)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:
            future.set_exception(err)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _judge_uncached(self, prompt: str) -> Judgement:
        self._check_available()
        completion: str | None = None
        reason: str | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._check_available()
                self.stats.retries += 1
            try:
                completion = await self._request(prompt)
                rating = parse_rating(completion)
                if rating is None:
                    raise _AttemptFailed("no rating in [0, 2] found in the reply", completion)
            except _AttemptFailed as answer:
                reason = answer.reason
                completion = answer.completion if answer.completion is not None else completion
                if not answer.retryable:
                    break
                if attempt < self.config.max_retries:
                    delay = self.backoff(attempt, answer.wait)
                    logger.debug("judge retry %d in %.3gs: %s", attempt + 1, delay, reason)
                    await asyncio.sleep(delay)
                continue
            self._consecutive_failures = 0
            if self.cache is not None:
                self.cache.put(self.config.lm_model, prompt, completion)
            return Judgement(rating, completion)
        self.stats.failures += 1
        self._consecutive_failures += 1
        self._last_error = reason
        logger.warning("judgement failed after %d attempt(s): %s", attempt + 1, reason)
        return Judgement(None, completion, error=reason)

    def _check_available(self) -> None:
        """Raise once too many judgements in a row have failed; checked again right before each
        send, because waiting requests all passed the first check before any failure was known."""
        if self._consecutive_failures < self.max_consecutive_failures:
            return
        where = self.base_url or "the default OpenAI endpoint"
        raise JudgeUnavailableError(
            f"judge at {where} (model {self.config.lm_model!r}) failed "
            f"{self._consecutive_failures} judgements in a row; last error: {self._last_error}. "
            "Completed concepts are saved; fix the judge and re-run to resume."
        )

    async def _request(self, prompt: str) -> str:
        """One HTTP attempt; every transient problem becomes :class:`_AttemptFailed`."""
        errors = self._openai
        async with self._semaphore:
            self._check_available()
            self.stats.calls += 1
            try:
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=self.config.lm_model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=self.config.temperature,
                )
            except errors.APITimeoutError:
                raise _AttemptFailed(f"timed out after {self.config.timeout}s") from None
            except errors.APIConnectionError as err:
                cause = type(err.__cause__).__name__ if err.__cause__ else "connection error"
                raise _AttemptFailed(f"connection failed ({cause})") from None
            except errors.APIStatusError as err:
                code = err.status_code
                if code in _RETRYABLE_STATUS or code >= 500:
                    wait = parse_retry_after(err.response.headers.get("retry-after"))
                    raise _AttemptFailed(f"HTTP {code}", wait=wait) from None
                # Other 4xx (bad key, unknown model, rejected prompt) will not heal by retrying.
                # The server's message is left out on purpose: it may quote the key.
                raise _AttemptFailed(f"HTTP {code} (not retryable)", retryable=False) from None
            body = raw.text
        return extract_content(body)
