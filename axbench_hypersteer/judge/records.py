"""Durable files of the evaluate stage: the per-concept ``{mode}.jsonl`` records and atomic
whole-file writes.

A kill must never cost finished work: a record line is flushed and fsynced before the next concept
is reported done, whole files are replaced by rename (readers see the old or the new file, never
half of one), and a torn final line left by a kill is detected and cut on the next load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from axbench_hypersteer.model.fileio import atomic_write  # noqa: F401  (re-exported for evaluate)
from axbench_hypersteer.judge.aggregate import JUDGE_EVALUATOR, parquet_columns

logger = logging.getLogger(__name__)


def append_record(path: Path, record: dict) -> None:
    """Append one concept line and fsync it before returning."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def parse_record(line: str) -> tuple[int, dict]:
    """``(concept_id, record)`` of one ``{mode}.jsonl`` line; ``ValueError`` says what is wrong.
    The one reader of the format: evaluate (resuming) and report both go through it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("results"), dict):
        raise ValueError("expected an object with a 'results' object")
    concept_id = record.get("concept_id")
    if isinstance(concept_id, bool) or not isinstance(concept_id, int):
        raise ValueError(f"'concept_id' must be an integer, got {concept_id!r}")
    return concept_id, record


def load_records(path: Path) -> tuple[dict[int, dict], bool]:
    """Concept lines of an existing ``{mode}.jsonl`` (last line per concept wins), and whether the
    file needs rewriting (a torn last line from a kill, or duplicate concepts)."""
    records: dict[int, dict] = {}
    dirty = False
    if not path.exists():
        return records, dirty
    text = path.read_bytes().decode("utf-8", errors="replace")
    if text and not text.endswith("\n"):
        dirty = True  # a kill cut the last line short: appending after it would corrupt a record
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            concept_id, record = parse_record(line)
        except ValueError as err:
            logger.warning("%s:%d: dropping an unreadable line (%s; interrupted write?)", path,
                           number, err)
            dirty = True
            continue
        dirty = dirty or concept_id in records
        records[concept_id] = record
    return records, dirty


def rewrite_records(path: Path, records: dict[int, dict]) -> None:
    """Replace the file with exactly one line per concept, atomically."""
    text = "".join(json.dumps(records[c], allow_nan=False) + "\n" for c in sorted(records))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_data_parquet(
    path: Path, split: pd.DataFrame, records: dict[int, dict], methods: list[str]
) -> None:
    """``{mode}_data.parquet``: the split's rows plus each method's per-row judge columns, rebuilt
    from the jsonl records (so a resumed run writes the same file as an uninterrupted one).
    Concepts without a record yet are left out until a re-run judges them."""
    frames = []
    for concept_id, rows in split.groupby("concept_id", sort=True):
        record = records.get(int(concept_id))
        if record is None:
            continue  # unfinished concept: it will appear after the re-run
        rows = rows.reset_index(drop=True).copy()
        for method in methods:
            metrics = record["results"][JUDGE_EVALUATOR].get(method)
            if metrics is None or len(metrics["raw_aggregated_ratings"]) != len(rows):
                continue
            for column, values in parquet_columns(method, metrics).items():
                rows[column] = values
        frames.append(rows)
    table = pd.concat(frames, ignore_index=True) if frames else split.iloc[0:0]
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
