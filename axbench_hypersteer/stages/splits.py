"""Held-in / held-out concept splits of AxBench training data.

HyperSteer's held-out number (Concept500-HO) is only meaningful if no evaluation concept was
trained on. AxBench has no split flag, so this writes a filtered copy of a dump's ``generate/``
directory (the layout every stage already reads) plus ``split.json``, a record of what was
removed and of how many evaluation concepts the training data actually contained. Concepts are
matched by normalised text, as in AxBench's own held-out notebook, because concept ids are only
meaningful within one metadata file (Concept16K's ids are not Concept500's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow.parquet as pq

from ..model.errors import DataError
from ..model.fileio import atomic_write, atomic_write_json, atomic_write_text
from .data import (NEGATIVE_ID, generate_dir, load_metadata, normalise_concept, read_parquet,
                   train_parquet_files, write_parquet_like)

__all__ = ["DataError", "SplitSummary", "load_eval_concepts", "main", "make_split",
           "normalise_concept", "overlapping_concepts", "positive_mask"]

SPLIT_MODES = ("heldin", "heldout")  # which concepts train (common.MODES: prompt splits)
SPLIT_COLUMNS = ("output_concept", "category", "concept_id")


@dataclass
class SplitSummary:
    """What :func:`make_split` did; saved as ``split.json`` next to the data it describes."""

    mode: str
    data_dir: str
    out_dir: str
    removed: list[dict] = field(default_factory=list)  # [{concept_id, concept}]
    training_concepts_before: int = 0
    training_concepts_after: int = 0
    rows_before: int = 0
    rows_after: int = 0
    eval_concepts: int = 0
    eval_matched: int = 0
    eval_not_found: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.mode} split: {self.eval_matched} of {self.eval_concepts} evaluation "
                f"concepts found in training data, {len(self.removed)} removed; "
                f"{self.training_concepts_after} training concepts remain "
                f"({self.rows_after} of {self.rows_before} rows) -> {self.out_dir}")


def _parse_item(item: int | str) -> int | str:
    """A concept id (int, or a string of digits) or a concept text."""
    if isinstance(item, bool):
        raise DataError(f"evaluation concept {item!r}: expected a concept id or text")
    if isinstance(item, int):
        return item
    text = str(item).strip()
    if not text:
        raise DataError("evaluation concepts: empty entry")
    return int(text) if text.lstrip("-").isdigit() else text


def load_eval_concepts(spec: str | Path | Sequence[int | str],
                       metadata: list[dict] | None = None) -> list[str]:
    """Evaluation concept texts from ``spec``, in order, duplicates dropped.

    ``spec`` is a metadata.jsonl path (or a dump / ``generate`` dir holding one), a list of
    concept ids or texts, or a comma-separated string of them (the CLI form, e.g. ``"0,3"``).
    Ids are looked up in ``metadata`` (the training data's, so ids mean what they mean there).
    """
    if isinstance(spec, Path) or (isinstance(spec, str) and Path(spec).exists()):
        path = Path(spec)
        if path.is_dir():
            path = generate_dir(path) / "metadata.jsonl"
        items: list[int | str] = [e["concept"]
                                  for e in load_metadata(path, required=("concept",))]
    elif isinstance(spec, str):
        if spec.endswith((".jsonl", ".json")):
            raise DataError(f"{spec}: evaluation concepts file not found")
        items = [_parse_item(s) for s in spec.split(",")]
    else:
        items = [_parse_item(s) for s in spec]
    if not items:
        raise DataError("no evaluation concepts given")
    by_id = {e["concept_id"]: e["concept"] for e in metadata or []}
    texts, seen = [], set()
    for item in items:
        if isinstance(item, int):
            if metadata is None:
                raise DataError(f"evaluation concept id {item}: ids need a metadata file to "
                                "resolve against")
            if item not in by_id:
                raise DataError(f"evaluation concept id {item} is not in the training metadata")
            item = by_id[item]
        key = normalise_concept(item)
        if key not in seen:
            seen.add(key)
            texts.append(item)
    return texts


def _clear_stale_shards(out_gen: Path, keep: set[str]) -> None:
    """Old shards left in ``out_dir`` would be read back as training data by the next stage."""
    for path in out_gen.glob("train_data*.parquet"):
        if path.name not in keep:
            path.unlink()


def positive_mask(frame: pd.DataFrame) -> pd.Series:
    """Positives as load_train_frame counts them; the shared negative pool (id -1) is not one."""
    return (frame["concept_id"] != NEGATIVE_ID) & (frame["category"] == "positive")


def overlapping_concepts(metadata: list[dict], eval_keys: set[str]) -> list[dict]:
    """``[{concept_id, concept}]`` of the metadata concepts whose normalised text is an
    evaluation concept's: ids are only meaningful within one metadata file, texts are not."""
    return [{"concept_id": e["concept_id"], "concept": e["concept"]} for e in metadata
            if normalise_concept(e["concept"]) in eval_keys]


def make_split(data_dir: str | Path, eval_concepts: str | Path | Sequence[int | str],
               mode: str, out_dir: str | Path) -> SplitSummary:
    """Write ``out_dir/generate/{train_data*.parquet, metadata.jsonl, split.json}``.

    ``heldout`` removes every positive row whose ``output_concept`` (or concept id) belongs to an
    evaluation concept, and those concepts' metadata lines; negatives are kept, concept ids are
    not renumbered. ``heldin`` copies the files unchanged. Shards keep their file names.
    """
    if mode not in SPLIT_MODES:
        raise DataError(f"mode must be one of {list(SPLIT_MODES)}, got {mode!r}")
    gen_dir = generate_dir(data_dir)
    out_gen = Path(out_dir) / "generate"
    if out_gen.resolve() == gen_dir.resolve():
        raise DataError(f"{out_gen}: out_dir must differ from data_dir (it would overwrite it)")
    metadata = load_metadata(gen_dir / "metadata.jsonl")
    evals = load_eval_concepts(eval_concepts, metadata)
    frames = {p: read_parquet(p, SPLIT_COLUMNS) for p in train_parquet_files(gen_dir)}
    summary, drop = _plan_split(mode, gen_dir, out_gen, metadata, evals, frames)
    _write_split(out_gen, mode, frames, drop, metadata, summary)
    return summary


def _concept_ids(frames: dict[Path, pd.DataFrame], masks: dict[Path, pd.Series]) -> list:
    return sorted(set().union(*(set(f["concept_id"][masks[p]]) for p, f in frames.items())))


def _plan_split(mode: str, gen_dir: Path, out_gen: Path, metadata: list[dict],
                evals: list[str], frames: dict[Path, pd.DataFrame]
                ) -> tuple[SplitSummary, dict[Path, pd.Series]]:
    """What the split removes (the summary, and the rows to drop per shard), refused before
    anything is written if it would leave nothing to train on."""
    positive = {p: positive_mask(f) for p, f in frames.items()}
    train_ids = _concept_ids(frames, positive)
    train_texts = {normalise_concept(e["concept"]) for e in metadata
                   if e["concept_id"] in train_ids}
    train_texts |= {normalise_concept(t) for p, f in frames.items()
                    for t in f["output_concept"][positive[p]].unique()}
    if not train_ids:
        raise DataError(f"{gen_dir}: no positive training rows (category 'positive', "
                        "concept_id != -1) to split")
    matched = [c for c in evals if normalise_concept(c) in train_texts]

    removed: list[dict] = []
    drop = {p: pd.Series(False, index=f.index) for p, f in frames.items()}
    if mode == "heldout":
        eval_keys = {normalise_concept(c) for c in evals}
        removed = overlapping_concepts(metadata, eval_keys)
        removed_ids = {e["concept_id"] for e in removed}
        # Negative-category rows of a removed concept go too; the shared pool (id -1) stays.
        drop = {p: (f["concept_id"] != NEGATIVE_ID)
                & (f["output_concept"].map(normalise_concept).isin(eval_keys)
                   | f["concept_id"].isin(removed_ids))
                for p, f in frames.items()}
    remaining = _concept_ids(frames, {p: positive[p] & ~drop[p] for p in frames})
    if not remaining:
        raise DataError(f"{gen_dir}: a held-out split against these evaluation concepts removes "
                        f"all {len(train_ids)} training concepts; nothing would be left to train on")
    summary = SplitSummary(
        mode=mode, data_dir=str(gen_dir), out_dir=str(out_gen), removed=removed,
        training_concepts_before=len(train_ids), training_concepts_after=len(remaining),
        rows_before=sum(len(f) for f in frames.values()),
        rows_after=sum(int((~drop[p]).sum()) for p in frames),
        eval_concepts=len(evals), eval_matched=len(matched),
        eval_not_found=[c for c in evals if normalise_concept(c) not in train_texts])
    return summary, drop


def _write_split(out_gen: Path, mode: str, frames: dict[Path, pd.DataFrame],
                 drop: dict[Path, pd.Series], metadata: list[dict],
                 summary: SplitSummary) -> None:
    """A held-in split copies the shards byte for byte, so it is the source data exactly."""
    out_gen.mkdir(parents=True, exist_ok=True)
    _clear_stale_shards(out_gen, {p.name for p in frames})
    for path, frame in frames.items():
        target = out_gen / path.name
        if mode == "heldin":
            atomic_write(target, lambda tmp, src=path: shutil.copyfile(src, tmp))
        else:
            write_parquet_like(target, frame[~drop[path]], pq.read_schema(path))
    removed_ids = {e["concept_id"] for e in summary.removed}
    kept_meta = [e for e in metadata if e["concept_id"] not in removed_ids]
    atomic_write_text(out_gen / "metadata.jsonl",
                      "".join(json.dumps(e) + "\n" for e in kept_meta))
    atomic_write_json(out_gen / "split.json", summary.to_dict())


def main(argv: Sequence[str] | None = None) -> int:
    """``hypersteer split``: thin CLI over :func:`make_split`; errors are one line, exit 2."""
    parser = argparse.ArgumentParser(
        prog="hypersteer split",
        description="Write a held-in or held-out copy of AxBench training data.")
    parser.add_argument("--data_dir", required=True,
                        help="AxBench dump dir (containing generate/) or its generate/ dir")
    parser.add_argument("--eval_concepts", required=True,
                        help="metadata.jsonl of the evaluation concepts (e.g. Concept500's), or "
                             "comma-separated concept ids/texts of the training metadata")
    parser.add_argument("--mode", choices=SPLIT_MODES, default="heldout")
    parser.add_argument("--out_dir", required=True, help="where generate/ is written")
    args = parser.parse_args(argv)
    try:
        summary = make_split(args.data_dir, args.eval_concepts, args.mode, args.out_dir)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
