"""Folding per-row judge answers into AxBench's metric dicts (``LMJudgeEvaluator`` and
``PerplexityEvaluator`` entries of ``evaluate/{mode}.jsonl``).

Key names and shapes follow AxBench's ``lm_judge.py`` / ``ppl.py`` so that its analysis notebook
and our own report code can read either. A failed judgement is ``null`` in the per-row lists and
counts as 0 in the per-factor means (AxBench scores an unreadable answer 0 as well), so failures can
only lower a score; ``failed_judgements`` (an extra key) says how many there were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from axbench_hypersteer.judge.client import Judgement
from axbench_hypersteer.judge.parsing import harmonic_mean

JUDGE_EVALUATOR = "LMJudgeEvaluator"
PPL_EVALUATOR = "PerplexityEvaluator"
CRITERION_KEYS = {
    "concept": "relevance_concept",
    "instruction": "relevance_instruction",
    "fluency": "fluency",
}


@dataclass
class RowJudgements:
    """The three judgements of one generated row."""

    concept: Judgement
    instruction: Judgement
    fluency: Judgement

    def get(self, criterion: str) -> Judgement:
        return getattr(self, criterion)

    @property
    def aggregate(self) -> float:
        return harmonic_mean(self.concept.rating, self.instruction.rating, self.fluency.rating)

    @property
    def failures(self) -> int:
        return sum(self.get(c).rating is None for c in CRITERION_KEYS)


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values: Sequence[float | None], none_as_zero: bool) -> float | None:
    if none_as_zero:
        values = [0.0 if v is None else v for v in values]
    else:
        values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def lm_judge_metrics(factors: Sequence[float], rows: Sequence[RowJudgements]) -> dict[str, Any]:
    """AxBench's ``LMJudgeEvaluator`` entry for one method of one concept (rows in file order)."""
    if len(factors) != len(rows):
        raise ValueError(f"{len(factors)} factors for {len(rows)} judged rows")
    raw: dict[str, list] = {
        f"raw_{key}_ratings": [r.get(c).rating for r in rows] for c, key in CRITERION_KEYS.items()
    }
    raw["raw_aggregated_ratings"] = [r.aggregate for r in rows]
    ordered = sorted({float(f) for f in factors})
    out: dict[str, Any] = {"lm_judge_rating": [], "factor": ordered}
    for key in CRITERION_KEYS.values():
        out[f"{key}_ratings"] = []
    for factor in ordered:
        idx = [i for i, f in enumerate(factors) if float(f) == factor]
        out["lm_judge_rating"].append(_mean([raw["raw_aggregated_ratings"][i] for i in idx], True))
        for key in CRITERION_KEYS.values():
            column = raw[f"raw_{key}_ratings"]
            out[f"{key}_ratings"].append(_mean([column[i] for i in idx], True))
    out.update(raw)
    for c, key in CRITERION_KEYS.items():
        out[f"{key}_completions"] = [r.get(c).completion for r in rows]
    out["failed_judgements"] = sum(r.failures for r in rows)
    return out


def perplexity_metrics(concept_rows: pd.DataFrame, method: str) -> dict[str, Any] | None:
    """AxBench's ``PerplexityEvaluator`` entry (per-factor means), or None when the inference
    output carries neither ``{method}_perplexity`` nor ``{method}_strength``."""
    columns = {name: f"{method}_{name}" for name in ("perplexity", "strength")}
    columns = {name: col for name, col in columns.items() if col in concept_rows.columns}
    if not columns:
        return None
    ordered = sorted({float(f) for f in concept_rows["factor"]})
    out: dict[str, Any] = {name: [] for name in columns}
    for factor in ordered:
        group = concept_rows[concept_rows["factor"].astype(float) == factor]
        for name, col in columns.items():
            out[name].append(_mean([_finite_or_none(v) for v in group[col]], none_as_zero=False))
    out["factor"] = ordered
    return out


def failed_judgements(metrics: dict[str, Any] | None) -> int:
    """Failed judgements in a stored ``LMJudgeEvaluator`` entry: our ``failed_judgements`` key,
    else (an entry written by AxBench itself) the nulls in its raw rating lists."""
    if not isinstance(metrics, dict):
        return 0
    if isinstance(metrics.get("failed_judgements"), int):
        return metrics["failed_judgements"]
    raws = [metrics.get(f"raw_{key}_ratings") for key in CRITERION_KEYS.values()]
    return sum(v is None for r in raws if isinstance(r, list) for v in r)


def is_complete(metrics: dict[str, Any] | None, n_rows: int) -> bool:
    """Whether a stored ``LMJudgeEvaluator`` entry covers ``n_rows`` rows with no failed judgement
    (an entry written by AxBench itself has no ``failed_judgements`` key: look for nulls)."""
    if not isinstance(metrics, dict):
        return False
    raws = [metrics.get(f"raw_{key}_ratings") for key in CRITERION_KEYS.values()]
    if any(not isinstance(r, list) or len(r) != n_rows for r in raws):
        return False
    return all(v is not None for r in raws for v in r) and not metrics.get("failed_judgements")


def parquet_columns(method: str, metrics: dict[str, Any]) -> dict[str, list]:
    """The per-row columns AxBench's evaluate adds to ``{mode}_data.parquet`` for one method."""
    prefix = f"{method}_LMJudgeEvaluator"
    out: dict[str, list] = {prefix: list(metrics["raw_aggregated_ratings"])}
    for key in CRITERION_KEYS.values():
        out[f"{prefix}_{key}_ratings"] = list(metrics[f"raw_{key}_ratings"])
        out[f"{prefix}_{key}_completions"] = list(metrics[f"{key}_completions"])
    return out
