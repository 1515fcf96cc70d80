"""``hypersteer inference``: the steering-factor sweep, written as AxBench's steering_data.parquet.

For each concept, N evaluation prompts are drawn (seeded by the concept id, as AxBench does),
crossed with every factor, and generated with every HyperSteer method, many concepts per generate
call. Prompts ``0..k-1`` form the ``steering`` split (factor selection), the rest ``steering_test``
(:class:`~.common.PromptSplit`, recorded in ``inference/prompt_split.json`` for the later stages).
Each finished concept is written to ``inference/parts/<mode>/concept_<id>.parquet`` before the
next starts, so a killed run resumes with only the missing concepts; the merged
``inference/steering_data.parquet`` is written once, atomically, at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..model.tokens import format_prompt
from ..model.config import InferenceConfig
from ..model.errors import DataError
from ..model.fileio import atomic_write, remove_interrupted_writes
from ..model.generation import SteerRow, steer_rows
from .common import (PromptSplit, add_progress_flags, check_split, inference_methods, load_method,
                     load_stage_base, record_split, resolve_concepts)
from .run_config import canonical_method, load_run_config

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).parents[1] / "resources"
BASE_COLUMNS = ("dataset_name", "concept_id", "input_concept", "input_id", "factor",
                "original_prompt", "steered_input", "input")
CONCEPTS_PER_CALL = 8  # concepts whose rows share generate calls


def load_prompts(path: str | None) -> tuple[str, list[str]]:
    """Instructions from an AlpacaEval-format JSON list, or the built-in demo prompts."""
    source = Path(path) if path else RESOURCES / "demo_prompts.json"
    name = "AlpacaEval" if path else "DemoPrompts"
    try:
        items = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{source}: prompts file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"{source}: expected a non-empty JSON list of {{'instruction': ...}}")
    prompts = []
    for i, item in enumerate(items):
        text = item.get("instruction") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: item {i} has no non-empty 'instruction' string")
        prompts.append(text)
    return name, prompts


def concept_rows(concept: dict, prompts: list[str], dataset: str, cfg: InferenceConfig,
                 mode: str, tokenizer) -> pd.DataFrame:
    """The (prompt × factor) rows of one concept for one split, in AxBench's columns."""
    n = cfg.steering_num_of_examples
    if n > len(prompts):
        raise DataError(f"steering_num_of_examples={n} but only {len(prompts)} prompts exist")
    chosen = random.Random(int(concept["concept_id"])).sample(prompts, n)
    records = []
    for input_id in PromptSplit.from_config(cfg).ids(mode):
        formatted = format_prompt(tokenizer, chosen[input_id])
        for factor in cfg.steering_factors:
            records.append({
                "dataset_name": dataset, "concept_id": int(concept["concept_id"]),
                "input_concept": concept["concept"], "input_id": input_id,
                "factor": float(factor), "original_prompt": chosen[input_id],
                "steered_input": formatted, "input": formatted,
            })
    return pd.DataFrame.from_records(records, columns=list(BASE_COLUMNS))


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_parquet(p, index=False))


def merge_parts(dump_dir: Path) -> Path:
    """Rebuild ``inference/steering_data.parquet`` from every finished concept part."""
    parts = sorted((dump_dir / "inference" / "parts").glob("*/concept_*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame = frame.sort_values(["concept_id", "input_id", "factor"], kind="stable")
    out = dump_dir / "inference" / "steering_data.parquet"
    _write_parquet(out, frame.reset_index(drop=True))
    return out


def run_inference(config_path: str | Path, dump_dir: str | Path, mode: str = "steering",
                  methods: Sequence[str] | None = None, concepts_path: str | None = None,
                  base=None, progress: bool = True) -> Path:
    dump_dir = Path(dump_dir)
    run = load_run_config(config_path)
    cfg = run.inference
    names = inference_methods(run, methods)
    dataset, prompts = load_prompts(cfg.prompts_path)
    concepts = resolve_concepts(dump_dir, concepts_path)
    split = check_split(dump_dir, PromptSplit.from_config(cfg), "inference")  # before any work
    if base is None:
        base = load_stage_base(run)
    models = {name: load_method(dump_dir, name, base) for name in names}
    record_split(dump_dir, split)  # nothing is written before the inputs proved usable
    parts_dir = dump_dir / "inference" / "parts" / mode
    for directory in (parts_dir, dump_dir / "inference"):  # a killed run's half-written files
        remove_interrupted_writes(directory)
    todo = []
    for concept in concepts:
        part = parts_dir / f"concept_{int(concept['concept_id'])}.parquet"
        if part.exists():
            try:
                have = set(pd.read_parquet(part, columns=None).columns)
            except Exception as err:  # pyarrow raises several unrelated types for corrupt files
                raise DataError(f"{part}: cannot read this finished concept's part file "
                                f"({type(err).__name__}); delete it to regenerate the "
                                "concept") from None
            if all(f"{n}_steered_generation" in have for n in names):
                continue
        todo.append(concept)
    logger.info("%s: %d of %d concepts to generate (%s)", mode, len(todo), len(concepts), names)
    bar = tqdm(total=len(todo), desc=f"inference {mode}", disable=not progress)
    for start in range(0, len(todo), CONCEPTS_PER_CALL):
        chunk = todo[start:start + CONCEPTS_PER_CALL]
        frames = [concept_rows(c, prompts, dataset, cfg, mode, base[1]) for c in chunk]
        rows_frame = pd.concat(frames, ignore_index=True)
        for name, hs in models.items():
            rows = [SteerRow(r.input, r.original_prompt, r.input_concept, r.factor)
                    for r in rows_frame.itertuples(index=False)]
            outputs = steer_rows(hs, rows, cfg.rows_per_call, cfg.steering_output_length,
                                 cfg.temperature, seed=cfg.seed)
            for key, values in outputs.items():
                rows_frame[f"{name}_{key}"] = values
        for concept in chunk:
            cid = int(concept["concept_id"])
            _write_parquet(parts_dir / f"concept_{cid}.parquet",
                           rows_frame[rows_frame["concept_id"] == cid].reset_index(drop=True))
        bar.update(len(chunk))
    bar.close()
    return merge_parts(dump_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypersteer inference",
                                     description="steering-factor sweep -> steering_data.parquet")
    parser.add_argument("--config", required=True)
    parser.add_argument("--dump_dir", required=True)
    parser.add_argument("--mode", default="steering", choices=["steering", "steering_test"])
    parser.add_argument("--method", action="append", default=None,
                        help="method(s) to run (default: inference.models)")
    parser.add_argument("--concepts", default=None,
                        help="metadata.jsonl of the concepts to steer (default: the dump's)")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    methods = [canonical_method(m) for m in args.method] if args.method else None
    out = run_inference(args.config, args.dump_dir, args.mode, methods, args.concepts,
                        progress=args.progress)
    print(f"wrote {out}")
    return 0
