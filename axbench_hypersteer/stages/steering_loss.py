"""Judge-free steering quality: the steered model's loss on a concept's reference answers.

Offline runs (no judge key) and the paper's scaling/ablation curves need a number that does not
cost judge calls. ``hypersteer steering-loss`` computes it at every factor of the sweep, on the
same two splits the judge uses (examples of each concept divided like prompts: the first part
picks the factor, the rest reports it), and writes ``evaluate/steering_loss.jsonl``, which
``hypersteer report`` adds to its table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model.collate import SteeringCollator
from ..model.tokens import IGNORE_INDEX, format_prompt
from ..model.fileio import atomic_write_text
from ..model.hypersteer import HyperSteer
from .common import (MODES, PromptSplit, add_progress_flags, autocast_for, inference_methods,
                     load_method, load_stage_base, resolve_concepts)
from .data import load_train_frame

logger = logging.getLogger(__name__)

EVAL_COLUMNS = ("concept_id", "concept", "input", "output")


def prompt_fits(tokenizer, frame: pd.DataFrame, max_length: int) -> np.ndarray:
    lengths = [len(ids) for ids in tokenizer([format_prompt(tokenizer, x) for x in frame["input"]],
                                             add_special_tokens=True)["input_ids"]]
    return np.asarray(lengths) < max_length


@torch.no_grad()
def example_losses(hs: HyperSteer, frame: pd.DataFrame, batch_size: int, max_length: int,
                   factor: float = 1.0, autocast: contextlib.AbstractContextManager | None = None
                   ) -> pd.DataFrame:
    """Per example: the steered base model's mean cross-entropy over its answer tokens.

    Returns ``concept_id, loss, n_tokens`` (one row per example whose prompt leaves room for an
    answer token within ``max_length``; longer ones are dropped with a warning).
    """
    if frame is None or len(frame) == 0:
        return pd.DataFrame(columns=["concept_id", "loss", "n_tokens"])
    fits = prompt_fits(hs.tokenizer, frame, max_length)
    if not fits.all():
        logger.warning("dropping %d of %d evaluation examples whose prompt is >= max_length=%d "
                       "tokens", int((~fits).sum()), len(frame), max_length)
        frame = frame[fits]
    hypernet_text = hs.hypernet_text if hs.config.variant == "incontext" else None
    collate = SteeringCollator(hs.tokenizer, max_length, hypernet_text)
    rows = [{"concept_id": int(r.concept_id), "concept": r.concept, "input": r.input,
             "output": r.output} for r in frame[list(EVAL_COLUMNS)].itertuples(index=False)]
    device = hs.device
    was_training = hs.hypernet.training
    hs.hypernet.eval()
    out_rows = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            factors = torch.full((len(chunk),), float(factor), device=device)
            with autocast or contextlib.nullcontext():
                out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
                         batch["hyper_attention_mask"], context_mask=batch["context_mask"],
                         factors=factors)
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            nll = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2),
                                  labels.clamp(min=0), reduction="none")
            counts = mask.sum(-1)
            losses = (nll * mask).sum(-1) / counts.clamp(min=1)
            for row, loss, count in zip(chunk, losses.tolist(), counts.tolist()):
                out_rows.append({"concept_id": row["concept_id"], "loss": loss,
                                 "n_tokens": int(count)})
    finally:
        hs.hypernet.train(was_training)
    return pd.DataFrame(out_rows, columns=["concept_id", "loss", "n_tokens"])


def steering_loss_records(hs: HyperSteer, method: str, frame: pd.DataFrame,
                          factors: list[float], split_ratio: float, batch_size: int,
                          max_length: int,
                          autocast: contextlib.AbstractContextManager | None = None,
                          progress: bool = False) -> list[dict]:
    """Per concept, factor and split: the mean example loss (one record each). A concept's
    examples are split like its prompts (:class:`~.common.PromptSplit` over the example count)."""
    records = []
    groups = frame.groupby("concept_id", sort=True)
    for concept_id, rows in tqdm(groups, total=groups.ngroups, desc=f"steering-loss {method}",
                                 unit="concept", disable=not progress):
        split_of = PromptSplit(len(rows), split_ratio)
        for split in MODES:
            part = rows.iloc[list(split_of.ids(split))]
            if part.empty:
                continue
            for factor in factors:
                losses = example_losses(hs, part, batch_size, max_length, factor, autocast)
                if len(losses):
                    records.append({"concept_id": int(concept_id), "method": method,
                                    "factor": float(factor), "split": split,
                                    "loss": float(losses["loss"].mean())})
    return records


def main(argv: list[str] | None = None) -> int:
    from .run_config import load_run_config

    parser = argparse.ArgumentParser(prog="hypersteer steering-loss", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--dump_dir", required=True)
    parser.add_argument("--data_dir", required=True,
                        help="AxBench dump whose train_data.parquet holds the concepts' answers")
    parser.add_argument("--concepts", default=None, help="metadata.jsonl (default: the dump's)")
    parser.add_argument("--max_examples", type=int, default=8, help="per concept")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    dump_dir = Path(args.dump_dir)
    run = load_run_config(args.config)
    wanted = {int(c["concept_id"]) for c in resolve_concepts(dump_dir, args.concepts)}
    frame = load_train_frame(args.data_dir, max_num_of_examples=args.max_examples, seed=None)
    frame = frame[frame["concept_id"].isin(wanted)]
    base = load_stage_base(run)
    records = []
    for name in inference_methods(run, None):
        spec = run.method(name)
        records += steering_loss_records(load_method(dump_dir, name, base), name, frame,
                                         run.inference.steering_factors, run.inference.split_ratio,
                                         spec.train.batch_size, spec.train.max_length,
                                         autocast_for(run, base[0]), args.progress)
    out = dump_dir / "evaluate" / "steering_loss.jsonl"
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} records to {out}")
    return 0
