"""The LLM judge used by the evaluate stage: rubric prompts, rating parsing, an on-disk answer
cache, a retrying async client for any OpenAI-compatible endpoint, and an offline stand-in judge
server for the demo."""

from axbench_hypersteer.judge.cache import JudgeCache, cache_key
from axbench_hypersteer.judge.client import (
    Judgement,
    JudgeStats,
    JudgeUnavailableError,
    LLMJudge,
    resolve_endpoint,
)
from axbench_hypersteer.judge.offline_server import (
    OfflineJudgeServer,
    start_offline_judge,
    stop_offline_judge,
)
from axbench_hypersteer.judge.parsing import harmonic_mean, parse_rating
from axbench_hypersteer.judge.prompts import CRITERIA, build_prompt, load_templates

__all__ = [
    "CRITERIA",
    "JudgeCache",
    "JudgeStats",
    "JudgeUnavailableError",
    "Judgement",
    "LLMJudge",
    "OfflineJudgeServer",
    "build_prompt",
    "cache_key",
    "harmonic_mean",
    "load_templates",
    "parse_rating",
    "resolve_endpoint",
    "start_offline_judge",
    "stop_offline_judge",
]
