"""The real experiment's data: every AxBench ``generate/`` set under one root, split into training
concepts and the held-out set, and each concept's positives into training and evaluation rows.

Why these splits: the paper's held-out claim is that the hypernetwork steers toward concepts it
never trained on, so the held-out set's concepts (and their rows) never reach training. Held-in
evaluation must still use prompts the hypernetwork never saw, so each training concept's first
``train_examples`` positives train and the next ``eval_examples`` are scored (steering loss on
their reference answers). Generations are judged on generic instructions from AxBench's shared
negative pool that no training row uses as its input.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..model.errors import DataError
from ..model.fileio import atomic_write, atomic_write_text
from ..stages.data import NEGATIVE_ID, load_metadata, read_parquet, train_parquet_files
from .config import RealConfig

GET_DATA = ("get it with `make data` (AxBench's public files, SHA-256 checked) or point "
            "--data_dir / $AXBENCH_DATA at a copy")


def find_data_root(data_dir: str | None) -> Path:
    """``data_dir``, else ``$AXBENCH_DATA``, else ``../shared/axbench-data`` or
    ``.cache/axbench-data`` (where ``make data`` writes) next to the working directory."""
    if data_dir:
        candidates = [Path(data_dir)]
    elif os.environ.get("AXBENCH_DATA"):
        candidates = [Path(os.environ["AXBENCH_DATA"])]
    else:
        here = Path.cwd()
        candidates = [here.parent / "shared" / "axbench-data", here / ".cache" / "axbench-data"]
    for candidate in candidates:
        if list(candidate.glob("*/*/generate/metadata.jsonl")):
            return candidate
    raise DataError(f"AxBench data not found in {', '.join(map(str, candidates))}: {GET_DATA}")


@dataclass
class RealData:
    """Concept ids are renumbered 0..N-1 over all sets (training concepts first), so one
    metadata file and one id space serve training, evaluation and the report."""

    concepts: list[dict]          # AxBench metadata records, renumbered
    train: pd.DataFrame           # training positives (held-in concepts only)
    eval: pd.DataFrame            # positives scored by steering loss (held-in and held-out)
    negatives: pd.DataFrame       # the shared negative pool (DiffMean's other side)
    prompts: list[str]            # generic instructions for generation, unseen in training
    heldin_ids: list[int]
    heldout_ids: list[int]
    heldout_fit: pd.DataFrame     # held-out positives outside ``eval``: DiffMean's data only

    def concept(self, concept_id: int) -> str:
        return self.concepts[concept_id]["concept"]

    def fit_rows(self, concept_id: int) -> pd.DataFrame:
        """The rows a per-concept method (DiffMean) is fitted on: a held-in concept's training
        rows; for a held-out concept, its own rows outside the evaluation ones (an oracle: the
        hypernetwork never sees them)."""
        source = self.heldout_fit if concept_id in self.heldout_ids else self.train
        return source[source["concept_id"] == concept_id]


def _sets(root: Path) -> list[Path]:
    sets = sorted(p.parent for p in root.glob("*/*/generate/metadata.jsonl")
                  if not p.parts[-4].startswith("concept500"))  # Concept500: a list, no rows
    return [s for s in sets if train_parquet_files(s)]


def load_real_data(cfg: RealConfig) -> RealData:
    """Read every set under the data root; the set named ``cfg.heldout_set`` is held out."""
    root = find_data_root(cfg.data_dir)
    sets = _sets(root)
    heldout_dir = root / cfg.heldout_set / "generate"
    if heldout_dir not in sets:
        raise DataError(f"{heldout_dir}: held-out set not found under {root} "
                        f"(sets: {[str(s.parent.relative_to(root)) for s in sets]}); {GET_DATA}")
    ordered = [s for s in sets if s != heldout_dir] + [heldout_dir]
    concepts, positives, negatives, seen = [], [], [], {}
    for gen in ordered:
        frame = pd.concat([read_parquet(p) for p in train_parquet_files(gen)], ignore_index=True)
        negatives.append(frame[frame["concept_id"] == NEGATIVE_ID])
        held_out = gen == heldout_dir
        for meta in load_metadata(gen / "metadata.jsonl"):
            if meta["concept"] in seen:  # the same concept in two sets: keep the first
                continue
            if cfg.concept_limit is not None and sum(
                    p["held_out"].iloc[0] == held_out for p in positives) >= cfg.concept_limit:
                continue
            new_id = len(concepts)
            seen[meta["concept"]] = new_id
            rows = frame[(frame["concept_id"] == meta["concept_id"])
                         & (frame["input"].str.len() <= cfg.max_prompt_chars)].copy()
            need = cfg.train_examples + (cfg.heldout_eval_examples if held_out
                                         else cfg.eval_examples)
            if len(rows) < need:
                raise DataError(f"{gen}: concept {meta['concept_id']} has {len(rows)} positives "
                                f"with instructions of <= max_prompt_chars={cfg.max_prompt_chars} "
                                f"characters, fewer than the {need} the split needs "
                                "(train_examples + eval_examples or heldout_eval_examples)")
            rows["concept_id"] = new_id
            rows["concept"] = meta["concept"]
            rows["held_out"] = held_out
            positives.append(rows)
            concepts.append({**meta, "concept_id": new_id,
                             "source": f"{gen.parent.relative_to(root)}#{meta['concept_id']}"})
    heldout_ids = [int(p["concept_id"].iloc[0]) for p in positives if p["held_out"].iloc[0]]
    heldin_ids = [int(p["concept_id"].iloc[0]) for p in positives if not p["held_out"].iloc[0]]
    if not heldin_ids:
        raise DataError(f"{root}: no training concepts outside {cfg.heldout_set}")
    train, evaluation, heldout_fit = [], [], []
    for rows in positives:
        if rows["held_out"].iloc[0]:
            evaluation.append(rows.head(cfg.heldout_eval_examples))
            heldout_fit.append(rows.iloc[cfg.heldout_eval_examples:
                                         cfg.heldout_eval_examples + cfg.train_examples])
        else:
            train.append(rows.head(cfg.train_examples))
            evaluation.append(rows.iloc[cfg.train_examples:cfg.train_examples + cfg.eval_examples])
    train_frame = pd.concat(train, ignore_index=True)
    negative_frame = pd.concat(negatives, ignore_index=True).drop_duplicates("input")
    used = set(train_frame["input"]) | set(pd.concat(evaluation)["input"])
    prompts = sorted({p for p in negative_frame["input"]
                      if p not in used and len(p) <= cfg.max_prompt_chars})
    return RealData(concepts, train_frame, pd.concat(evaluation, ignore_index=True),
                    negative_frame, prompts, heldin_ids, heldout_ids,
                    pd.concat(heldout_fit, ignore_index=True))


def judged_concepts(data: RealData, cfg: RealConfig) -> list[int]:
    """The concepts that get generations and the judge: every held-out one and an evenly
    spaced subset of the held-in ones (the judge is the expensive metric)."""
    step = max(1, len(data.heldin_ids) // max(1, cfg.heldin_judge_concepts))
    return data.heldin_ids[::step][:cfg.heldin_judge_concepts] + data.heldout_ids


def concept_prompts(data: RealData, concept_id: int, n: int) -> list[str]:
    """``n`` generic instructions for a concept, drawn seeded by its id (as AxBench draws
    AlpacaEval prompts per concept)."""
    if n > len(data.prompts):
        raise DataError(f"eval_prompts={n} but only {len(data.prompts)} unused instructions exist")
    return random.Random(concept_id).sample(data.prompts, n)


def write_training_layout(data: RealData, dump_dir: Path) -> Path:
    """``generate/train_data.parquet`` + ``metadata.jsonl`` in AxBench's layout, training concepts
    only, for the standard train stage (which takes a data directory)."""
    gen = dump_dir / "generate"
    columns = ["input", "output", "output_concept", "concept_genre", "category",
               "dataset_category", "concept_id"]
    frame = data.train.assign(output_concept=data.train["concept"])[columns]
    atomic_write(gen / "train_data.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    meta = [{k: c[k] for k in ("concept_id", "concept", "ref", "concept_genres_map")}
            for c in data.concepts if c["concept_id"] in set(data.heldin_ids)]
    atomic_write_text(gen / "metadata.jsonl", "".join(json.dumps(m) + "\n" for m in meta))
    all_meta = [{k: c[k] for k in ("concept_id", "concept", "ref", "concept_genres_map", "source")}
                for c in data.concepts]
    atomic_write_text(dump_dir / "concepts.jsonl", "".join(json.dumps(m) + "\n" for m in all_meta))
    return gen
