"""The ``evaluate`` stage: judge steered generations and write AxBench's ``evaluate/`` layout.

Input is ``{dump_dir}/inference/steering_data.parquet``; output is ``evaluate/{mode}.jsonl`` (one
line per concept, AxBench's metric keys) and ``evaluate/{mode}_data.parquet`` (the rows plus the
per-row judge columns). Prompts are split by ``input_id`` exactly as AxBench does, so ``steering``
picks the factor and ``steering_test`` reports it; the split is the one inference recorded in the
dump (:class:`~.common.PromptSplit`), never re-derived from the ids a file holds.

Resumable by design: each concept's line is fsynced as soon as the concept is judged, a concept
whose line is complete (no failed judgement) is skipped on a re-run, and every successful judge
answer is cached, so a killed or aborted run costs no judge call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Protocol, Sequence

import pandas as pd
from tqdm.auto import tqdm

from axbench_hypersteer.model.config import JudgeConfig
from axbench_hypersteer.model.errors import HyperSteerError
from axbench_hypersteer.judge.aggregate import (
    JUDGE_EVALUATOR, PPL_EVALUATOR, RowJudgements, is_complete, lm_judge_metrics,
    perplexity_metrics)
from axbench_hypersteer.judge.cache import JudgeCache
from axbench_hypersteer.judge.client import Judgement, JudgeStats, LLMJudge
from axbench_hypersteer.judge.prompts import RUBRICS, Rubric, build_prompt, resolve_rubric
from axbench_hypersteer.judge.records import (
    append_record, load_records, rewrite_records, write_data_parquet)
from axbench_hypersteer.stages.common import MODES, PromptSplit, add_progress_flags, check_split

logger = logging.getLogger(__name__)

BASE_COLUMNS = ("concept_id", "input_concept", "input_id", "factor", "input", "original_prompt")
GENERATION_SUFFIX = "_steered_generation"
# Concepts judged at once: 2 keeps the judge busy across a concept boundary without holding
# hundreds of thousands of pending requests in memory.
CONCEPT_WINDOW = 2


class EvaluateError(HyperSteerError, ValueError):
    """The inference output cannot be evaluated as asked (missing file, column or method)."""


class SupportsJudge(Protocol):
    """What evaluate needs from a judge (an :class:`LLMJudge`, or a test double)."""

    stats: JudgeStats

    async def judge(self, prompt: str) -> Judgement: ...


@dataclass
class EvaluateSummary:
    mode: str
    methods: list[str]
    concepts_total: int
    concepts_judged: int
    concepts_skipped: int
    concepts_unfinished: int
    judgements: int
    calls: int
    cache_hits: int
    retries: int
    failed_judgements: int
    jsonl_path: str
    parquet_path: str
    rubric: str = "package"

    def format(self) -> str:
        text = (
            f"evaluate[{self.mode}] methods={','.join(self.methods)} rubric={self.rubric}: "
            f"{self.concepts_judged} concept(s) judged, {self.concepts_skipped} already done, "
            f"{self.concepts_unfinished} unfinished of {self.concepts_total}; "
            f"{self.calls} judge call(s), {self.cache_hits} cache hit(s), {self.retries} "
            f"retr{'y' if self.retries == 1 else 'ies'}, {self.failed_judgements} failed "
            f"judgement(s) -> {self.jsonl_path}"
        )
        if self.failed_judgements:
            text += (f"; the failed ones are scored 0 (as AxBench does): re-run `hypersteer "
                     f"evaluate --mode {self.mode}` to re-judge them")
        return text


def load_steering_data(
    path: Path, methods: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Read inference output and resolve the methods (every ``X`` with ``X_steered_generation``)."""
    if not path.exists():
        raise EvaluateError(f"{path}: steering inference output not found (run inference first)")
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        reason = str(err).splitlines()[0] if str(err) else ""
        raise EvaluateError(f"{path}: cannot read parquet ({type(err).__name__}: {reason})") from None
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise EvaluateError(f"{path}: missing column(s) {missing}")
    found = [c[: -len(GENERATION_SUFFIX)] for c in df.columns if c.endswith(GENERATION_SUFFIX)]
    if methods is None:
        if not found:
            raise EvaluateError(f"{path}: no '<Method>{GENERATION_SUFFIX}' column found")
        return df, found
    methods = list(methods)
    for method in methods:
        if f"{method}{GENERATION_SUFFIX}" not in df.columns:
            raise EvaluateError(
                f"{path}: method {method!r} has no column '{method}{GENERATION_SUFFIX}' "
                f"(methods present: {found})"
            )
    return df, methods


def split_by_input_id(df: pd.DataFrame, mode: str, split: PromptSplit) -> pd.DataFrame:
    """The rows of one split (AxBench's held-out factor selection: ``steering`` selects the
    factor, ``steering_test`` reports it), sorted by (concept_id, input_id, factor)."""
    if mode not in MODES:
        raise EvaluateError(f"mode: {mode!r} is not one of {list(MODES)}")
    out = df[df["input_id"].isin(list(split.ids(mode)))]
    out = out.sort_values(["concept_id", "input_id", "factor"], kind="stable")
    return out.reset_index(drop=True)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


async def _gather_all(awaitables: list) -> list:
    """Like ``gather`` but lets every call finish before re-raising the first error, so no
    orphaned request outlives the judge client (and every answer received still gets cached)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _judge_rows(
    judge: SupportsJudge, templates: dict[str, str], rows: pd.DataFrame, method: str
) -> list[RowJudgements]:
    """Three rubric judgements per row, all issued at once (the judge bounds concurrency)."""
    calls = []
    for sentence, concept, instruction in zip(
        rows[f"{method}{GENERATION_SUFFIX}"].map(_text),
        rows["input_concept"].map(_text),
        rows["original_prompt"].map(_text),
    ):
        calls += [
            judge.judge(build_prompt(templates, "concept", sentence=sentence, concept=concept)),
            judge.judge(build_prompt(templates, "instruction", sentence=sentence,
                                     instruction=instruction)),
            judge.judge(build_prompt(templates, "fluency", sentence=sentence)),
        ]
    done = await _gather_all(calls)
    return [RowJudgements(*done[i:i + 3]) for i in range(0, len(done), 3)]


async def _judge_concept(
    judge: SupportsJudge, rubric: Rubric, rows: pd.DataFrame, methods: list[str],
    previous: dict | None,
) -> dict:
    """One concept's jsonl record; methods not re-judged now keep their previous results."""
    results: dict[str, dict] = {JUDGE_EVALUATOR: {}, PPL_EVALUATOR: {}}
    for name, entries in ((previous or {}).get("results") or {}).items():
        results.setdefault(name, {}).update(entries)
    judged = await _gather_all([_judge_rows(judge, rubric.templates, rows, m) for m in methods])
    factors = [float(f) for f in rows["factor"]]
    for method, row_judgements in zip(methods, judged):
        results[JUDGE_EVALUATOR][method] = lm_judge_metrics(factors, row_judgements)
        ppl = perplexity_metrics(rows, method)
        if ppl is not None:
            results[PPL_EVALUATOR][method] = ppl
    # Which rubric produced the scores: only AxBench's own is comparable with its tables.
    return {"concept_id": int(rows["concept_id"].iloc[0]), "results": results,
            "rubric": rubric.describe()}


def _is_done(record: dict | None, methods: Sequence[str], n_rows: int) -> bool:
    """A stored concept line counts as done only if every requested method was judged on all
    ``n_rows`` rows without a failed judgement; anything else is judged (again)."""
    entries = ((record or {}).get("results") or {}).get(JUDGE_EVALUATOR) or {}
    return all(is_complete(entries.get(m), n_rows) for m in methods)


def _delta(after: JudgeStats, before: JudgeStats) -> JudgeStats:
    return JudgeStats(**{k: v - getattr(before, k) for k, v in after.as_dict().items()})


async def evaluate(
    dump_dir: str | Path,
    judge_config: JudgeConfig | None,
    mode: str,
    methods: Sequence[str] | None = None,
    judge: SupportsJudge | None = None,
    *,
    split: PromptSplit | None = None,
    templates_path: str | Path | None = None,
    cache_path: str | Path | None = None,
    progress: bool = True,
    rubric: str | None = None,
) -> EvaluateSummary:
    """Judge one split of ``{dump_dir}/inference/steering_data.parquet`` and write the evaluate
    files. ``judge`` (an :class:`LLMJudge`) is built from ``judge_config`` when not given, with its
    cache at ``cache_path`` (default ``{dump_dir}/evaluate/judge_cache.jsonl``). ``split`` (from
    the config) must match the one the dump's inference recorded; either one is enough.
    ``rubric`` (default: ``judge_config.rubric``): see
    :func:`~axbench_hypersteer.judge.prompts.resolve_rubric` (``auto``: AxBench's own templates
    when AxBench is installed); every record names the rubric that scored it.

    Raises :class:`~axbench_hypersteer.judge.client.JudgeUnavailableError` after saving every
    finished concept if the judge stops answering altogether.
    """
    dump_dir = Path(dump_dir)
    data_path = dump_dir / "inference" / "steering_data.parquet"
    df, methods = load_steering_data(data_path, methods)
    rows = split_by_input_id(df, mode, check_split(dump_dir, split, "evaluate"))
    rubric_used = resolve_rubric(rubric or (judge_config or JudgeConfig()).rubric, templates_path)
    out_dir = dump_dir / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl_path, parquet_path = out_dir / f"{mode}.jsonl", out_dir / f"{mode}_data.parquet"
    records, groups, todo = _resume(jsonl_path, rows, methods)
    previous = {c: records[c] for c in todo if c in records}

    async with _judge_for(judge, judge_config, cache_path or out_dir / "judge_cache.jsonl"
                          ) as judge:
        before = JudgeStats(**judge.stats.as_dict())
        outcomes = await _judge_concepts(judge, rubric_used, groups, todo, methods, previous,
                                         records, jsonl_path, f"evaluate {mode}", progress)
    if previous:
        rewrite_records(jsonl_path, records)  # one line per concept again (the newest wins)
    write_data_parquet(parquet_path, rows, records, methods)
    stats = _delta(judge.stats, before)
    summary = EvaluateSummary(
        mode=mode, methods=list(methods), concepts_total=len(groups),
        concepts_judged=sum(o is None for o in outcomes),
        concepts_skipped=len(groups) - len(todo),
        concepts_unfinished=sum(o is not None for o in outcomes),
        judgements=stats.judgements, calls=stats.calls, cache_hits=stats.cache_hits,
        retries=stats.retries, failed_judgements=stats.failures,
        jsonl_path=str(jsonl_path), parquet_path=str(parquet_path), rubric=rubric_used.name,
    )
    _report(summary, outcomes, progress)
    return summary


def _report(summary: EvaluateSummary, outcomes: list[BaseException | None],
            progress: bool) -> None:
    """The summary is shown even when a concept failed, since the finished ones were saved;
    then the first failure is raised."""
    logger.info("%s", summary.format())
    if progress:
        print(summary.format())
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise errors[0]


@contextlib.asynccontextmanager
async def _judge_for(judge: SupportsJudge | None, judge_config: JudgeConfig | None,
                     cache_path: str | Path) -> AsyncIterator[SupportsJudge]:
    """``judge`` as given (the caller's to close), or an :class:`LLMJudge` closed on exit."""
    if judge is not None:
        yield judge
        return
    own = LLMJudge(judge_config or JudgeConfig(), JudgeCache(cache_path))
    try:
        yield own
    finally:
        await own.aclose()


def _resume(jsonl_path: Path, rows: pd.DataFrame, methods: Sequence[str]
            ) -> tuple[dict[int, dict], dict[int, pd.DataFrame], list[int]]:
    """(records already written, rows per concept, concepts still to judge): a re-run judges
    only what a killed or failed run left unfinished."""
    records, dirty = load_records(jsonl_path)
    groups = {int(c): g for c, g in rows.groupby("concept_id", sort=True)}
    todo = [c for c in groups if not _is_done(records.get(c), methods, len(groups[c]))]
    if dirty:
        rewrite_records(jsonl_path, records)  # cut a torn line before appending after it
    return records, groups, todo


async def _judge_concepts(judge: SupportsJudge, rubric: Rubric,
                          groups: dict[int, pd.DataFrame], todo: list[int],
                          methods: Sequence[str], previous: dict[int, dict],
                          records: dict[int, dict], jsonl_path: Path, desc: str,
                          progress: bool) -> list[BaseException | None]:
    """Judge ``todo``, a few concepts at a time, appending each concept's record as soon as it is
    done so that a kill loses at most the concepts in flight. Returns each concept's outcome
    (``None`` or the exception that stopped it) rather than raising, so finished ones are kept."""
    window = asyncio.Semaphore(CONCEPT_WINDOW)
    bar = tqdm(total=len(todo), desc=desc, unit="concept", disable=not progress)

    async def run_one(concept_id: int) -> None:
        async with window:
            record = await _judge_concept(
                judge, rubric, groups[concept_id], methods, previous.get(concept_id)
            )
        append_record(jsonl_path, record)
        records[concept_id] = record
        bar.update(1)
        bar.set_postfix(calls=judge.stats.calls, failed=judge.stats.failures)

    try:
        return await asyncio.gather(*(run_one(c) for c in todo), return_exceptions=True)
    finally:
        bar.close()


def run_evaluate(*args: Any, **kwargs: Any) -> EvaluateSummary:
    """Synchronous wrapper around :func:`evaluate` (same arguments) for CLIs and scripts."""
    return asyncio.run(evaluate(*args, **kwargs))


def main(argv: list[str] | None = None) -> int:
    """``hypersteer evaluate``: judge one split. Methods come from ``--method``, else the config's
    ``evaluate.models``, else every ``*_steered_generation`` column of the inference output."""
    import argparse

    from axbench_hypersteer.stages.run_config import (canonical_method, is_hypersteer_method,
                                                        load_run_config)

    parser = argparse.ArgumentParser(prog="hypersteer evaluate",
                                     description="LLM judge -> evaluate/{mode}.jsonl")
    parser.add_argument("--dump_dir", required=True)
    parser.add_argument("--config", default=None,
                        help="run YAML (judge settings, split ratio, evaluate.models)")
    parser.add_argument("--mode", default="steering", choices=list(MODES))
    parser.add_argument("--method", action="append", default=None,
                        help="method(s) to judge (repeatable)")
    parser.add_argument("--rubric", default=None, choices=list(RUBRICS),
                        help="judge templates (default: the config's hypersteer.judge.rubric, "
                             "auto): AxBench's own, used automatically when AxBench is "
                             "importable (the only scores comparable with the paper's), or the "
                             "package's")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    judge_config, split, methods = JudgeConfig(), None, args.method
    if args.config is not None:
        run = load_run_config(args.config)
        judge_config, split = run.judge, PromptSplit.from_config(run.inference)
        methods = methods or (run.raw.get("evaluate") or {}).get("models")
    if methods:  # aliases such as hypersteer_xattn name the column HyperSteerXAttn_*
        methods = [canonical_method(m) if is_hypersteer_method(m) else m for m in methods]
    run_evaluate(args.dump_dir, judge_config, args.mode, methods, split=split,
                 progress=args.progress, rubric=args.rubric)
    return 0
