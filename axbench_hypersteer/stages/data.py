"""AxBench training data for HyperSteer: load, validate, tokenise.

HyperSteer trains ONE hypernetwork over every concept, on positives only, with batches that mix
concepts. The steering prompt of a row is its concept's text in ``metadata.jsonl`` (what AxBench's
inference feeds the hypernetwork), so the training text must be the same string; we check that
each row's ``output_concept`` agrees with it instead of trusting either silently.

Bad input stops with a one-line :class:`DataError` naming the file and the column or value: a
corrupt row found here costs seconds, the same row found by a KeyError deep inside a training
step costs a GPU job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

from ..model.errors import DataError
from ..model.fileio import atomic_write

METADATA_FIELDS = ("concept_id", "concept", "ref", "concept_genres_map")
TRAIN_COLUMNS = ("input", "output", "output_concept", "category", "concept_id")
NEGATIVE_ID = -1  # AxBench's shared negative pool (output_concept "EEEEE")


def normalise_concept(text: str) -> str:
    """Casefold, collapse whitespace and strip: concept strings are compared this way because the
    same concept reaches us re-typed (YAML, CLI, another dump) with different case or spacing."""
    return re.sub(r"\s+", " ", str(text)).strip().casefold()


# ---------------------------------------------------------------------------------- files


def generate_dir(data_dir: str | Path) -> Path:
    """The AxBench ``generate/`` directory, given either a dump directory or ``generate/`` itself."""
    data_dir = Path(data_dir)
    if (data_dir / "generate").is_dir():
        return data_dir / "generate"
    if data_dir.is_dir():
        return data_dir
    raise DataError(f"{data_dir}: data directory not found")


def train_parquet_files(gen_dir: str | Path) -> list[Path]:
    """``train_data.parquet`` then ``train_data_<k>.parquet`` shards in k order: AxBench's
    generator rotates to a new file every 500 concepts and keeps the negatives in the first."""
    gen_dir = Path(gen_dir)

    def key(path: Path) -> tuple[int, str]:
        suffix = path.stem[len("train_data_"):]
        return (int(suffix), "") if suffix.isdigit() else (1 << 30, suffix)

    files = [gen_dir / "train_data.parquet"] if (gen_dir / "train_data.parquet").is_file() else []
    files += sorted(gen_dir.glob("train_data_*.parquet"), key=key)
    if not files:
        raise DataError(f"{gen_dir}: no train_data.parquet or train_data_*.parquet found")
    return files


def read_parquet(path: Path, columns: Sequence[str] = TRAIN_COLUMNS) -> pd.DataFrame:
    """Read one parquet file and check that ``columns`` exist, naming the file on failure."""
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    if "concept_id" in columns:
        ids = pd.to_numeric(frame["concept_id"], errors="coerce")
        bad = ids.isna() | (ids != ids.round())
        if bad.any():
            row = bad.idxmax()
            raise DataError(f"{path}: column 'concept_id' row {row}: expected an integer id, "
                            f"got {frame.at[row, 'concept_id']!r}")
        frame["concept_id"] = ids.astype("int64")
    return frame


def write_parquet_like(path: str | Path, frame: pd.DataFrame, schema: "pa.Schema | None") -> Path:
    """Write ``frame`` atomically with ``schema``'s column types and order (a source file's, so
    the output is the same kind of file AxBench wrote: pandas 3 would otherwise turn ``string``
    into ``large_string``), without a stored index. Schema columns ``frame`` lacks are left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.reset_index(drop=True)
    if schema is not None and not set(schema.names) <= set(frame.columns):
        schema = pa.schema([f for f in schema if f.name in frame.columns])
    if schema is not None:
        frame = frame[schema.names]
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def load_metadata(path: str | Path, required: Sequence[str] = METADATA_FIELDS) -> list[dict]:
    """Read AxBench's ``metadata.jsonl``: one JSON object per line, in concept order.

    Duplicate concept ids are refused because rows are joined to metadata by id; a duplicate
    would make the steering prompt of those rows depend on which line wins.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found")
    entries: list[dict] = []
    first_line: dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(entry, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                                f"{type(entry).__name__}")
            missing = [k for k in required if k not in entry]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {missing}")
            if "concept_id" in entry:
                cid = entry["concept_id"]
                if isinstance(cid, bool) or not isinstance(cid, int):
                    raise DataError(f"{path}:{lineno}: concept_id must be an integer, got {cid!r}")
                if cid in first_line:
                    raise DataError(f"{path}:{lineno}: duplicate concept_id {cid} "
                                    f"(first on line {first_line[cid]})")
                first_line[cid] = lineno
            if "concept" in entry and (not isinstance(entry["concept"], str)
                                       or not entry["concept"].strip()):
                raise DataError(f"{path}:{lineno}: concept must be a non-empty string, "
                                f"got {entry['concept']!r}")
            entries.append(entry)
    if not entries:
        raise DataError(f"{path}: metadata file is empty")
    return entries


# ---------------------------------------------------------------------------------- frame


def _check_text(frame: pd.DataFrame, path: Path, column: str) -> None:
    ok = frame[column].map(lambda v: isinstance(v, str) and v.strip() != "")
    if not ok.all():
        row = ok.index[~ok.to_numpy()][0]
        raise DataError(f"{path}: column {column!r} row {row}: expected non-empty text, "
                        f"got {frame.at[row, column]!r}")


def _positives(path: Path, meta_path: Path, concepts: dict[int, str]) -> pd.DataFrame:
    """Positive rows of one parquet file, validated, with the metadata concept attached."""
    frame = read_parquet(path)
    keep = (frame["concept_id"] != NEGATIVE_ID) & (frame["category"] == "positive")
    frame = frame[keep]
    unknown = sorted(set(frame["concept_id"]) - set(concepts))
    if unknown:
        raise DataError(f"{path}: concept_id {unknown[0]} is not in {meta_path}"
                        + (f" ({len(unknown)} unknown ids)" if len(unknown) > 1 else ""))
    _check_text(frame, path, "input")
    _check_text(frame, path, "output")
    concept = frame["concept_id"].map(concepts)
    same = [normalise_concept(a) == normalise_concept(b)
            for a, b in zip(frame["output_concept"], concept)]
    if not all(same):
        row = frame.index[same.index(False)]
        raise DataError(
            f"{path}: row {row}: output_concept {frame.at[row, 'output_concept']!r} does not "
            f"match concept {concepts[frame.at[row, 'concept_id']]!r} of concept_id "
            f"{frame.at[row, 'concept_id']} in {meta_path}")
    return pd.DataFrame({"concept_id": frame["concept_id"], "concept": concept,
                         "input": frame["input"], "output": frame["output"]})


def load_train_frame(data_dir: str | Path, max_concepts: int | None = None,
                     max_num_of_examples: int | None = None,
                     concept_ids: Iterable[int] | None = None,
                     seed: int | None = 42) -> pd.DataFrame:
    """All positive training examples of an AxBench dump, one row per example.

    Returns columns ``concept_id, concept, input, output`` where ``concept`` is the steering
    prompt (metadata text) and ``input`` the raw instruction (no chat template). Filters apply in
    this order: ``concept_ids``; ``max_concepts`` (lowest ids, AxBench's order; the public code
    ignored it); ``max_num_of_examples`` (first n rows per concept in file order). ``seed``
    shuffles the result across concepts; ``None`` keeps file order.
    """
    for name, value in (("max_concepts", max_concepts),
                        ("max_num_of_examples", max_num_of_examples)):
        if value is not None and value < 1:
            raise DataError(f"{name} must be >= 1 or None, got {value}")
    gen_dir = generate_dir(data_dir)
    meta_path = gen_dir / "metadata.jsonl"
    concepts = {e["concept_id"]: e["concept"] for e in load_metadata(meta_path)}
    files = train_parquet_files(gen_dir)
    frame = pd.concat([_positives(p, meta_path, concepts) for p in files], ignore_index=True)
    names = ", ".join(p.name for p in files)
    if frame.empty:
        raise DataError(f"{gen_dir}: no positive rows in {names} after dropping negatives "
                        "(category == 'negative' or concept_id == -1)")
    if concept_ids is not None:
        wanted = sorted({int(c) for c in concept_ids})
        absent = sorted(set(wanted) - set(frame["concept_id"]))
        if absent:
            raise DataError(f"{gen_dir}: concept_ids {absent} have no positive rows in {names}")
        frame = frame[frame["concept_id"].isin(wanted)]
        if frame.empty:
            raise DataError(f"{gen_dir}: the concept_ids filter {wanted} left no rows")
    if max_concepts is not None:
        kept = sorted(frame["concept_id"].unique())[:max_concepts]
        frame = frame[frame["concept_id"].isin(kept)]
    if max_num_of_examples is not None:
        frame = frame.groupby("concept_id", sort=False).head(max_num_of_examples)
    frame = frame.reset_index(drop=True)
    return frame if seed is None else shuffle_examples(frame, seed)


def shuffle_examples(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Shuffle rows of all concepts together (batches then mix concepts, as in HyperSteer);
    the same seed gives the same order on every machine."""
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
