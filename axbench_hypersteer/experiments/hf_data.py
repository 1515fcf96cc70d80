"""Turn AxBench's Hugging Face data files into the ``generate/`` layout every stage reads.

    python -m axbench_hypersteer.experiments.hf_data \\
        --parquet axbench-concept16k/2b/l20/train/data.parquet \\
        --out_dir axbench/concept16k/prod_2b_l20_v1 [--metadata METADATA.jsonl]

The HF datasets (``pyvene/axbench-concept10``, ``-concept500``, ``-concept16k``) ship one
``{2b,9b}/l{10,20}/train/data.parquet`` per model and layer with AxBench's training columns, but no
``metadata.jsonl``. With ``--metadata`` (e.g. Concept500's from the AxBench repository) that file
is copied; without it, one line per concept is rebuilt from the positive rows (``concept`` =
``output_concept``, ``concept_genres_map`` from ``concept_genre``, empty ``ref``). The result is
checked with the package's own loader before the command returns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow.parquet as pq

from ..model.errors import DataError
from ..stages.data import (NEGATIVE_ID, TRAIN_COLUMNS, load_metadata, load_train_frame,
                             read_parquet)
from .common import write_generate


def rebuild_metadata(frame: pd.DataFrame) -> list[dict]:
    """One metadata entry per concept id with positive rows, in id order."""
    positives = frame[(frame["concept_id"] != NEGATIVE_ID) & (frame["category"] == "positive")]
    if positives.empty:
        raise DataError("no positive rows: cannot rebuild metadata")
    entries = []
    for cid, group in positives.groupby("concept_id", sort=True):
        concepts = group["output_concept"].unique()
        if len(concepts) != 1:
            raise DataError(f"concept_id {cid}: several output_concept values {list(concepts)[:3]}")
        genre = (group["concept_genre"].iloc[0] if "concept_genre" in group else None) or "text"
        entries.append({"concept_id": int(cid), "concept": str(concepts[0]), "ref": "",
                        "concept_genres_map": {str(concepts[0]): [str(genre)]}})
    return entries


def hf_to_axbench(parquet_paths: Sequence[str | Path], out_dir: str | Path,
                  metadata_path: str | Path | None = None) -> Path:
    """Write ``out_dir/generate/{train_data.parquet, metadata.jsonl}``; returns ``out_dir``."""
    paths = [Path(p) for p in parquet_paths]
    if not paths:
        raise DataError("give at least one parquet file")
    frame = pd.concat([read_parquet(p, TRAIN_COLUMNS) for p in paths], ignore_index=True)
    metadata = load_metadata(metadata_path) if metadata_path else rebuild_metadata(frame)
    write_generate(out_dir, frame, metadata, pq.read_schema(paths[0]))
    load_train_frame(out_dir, seed=None)  # fails loudly if rows and metadata disagree
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axbench_hypersteer.experiments.hf_data",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--parquet", nargs="+", required=True, help="HF data.parquet file(s)")
    parser.add_argument("--out_dir", required=True, help="dump dir; generate/ is written in it")
    parser.add_argument("--metadata", default=None, help="metadata.jsonl to use as is")
    args = parser.parse_args(argv)
    out = hf_to_axbench(args.parquet, args.out_dir, args.metadata)
    meta = load_metadata(out / "generate" / "metadata.jsonl")
    print(json.dumps({"out_dir": str(out), "concepts": len(meta)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
