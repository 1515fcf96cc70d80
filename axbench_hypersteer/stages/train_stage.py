"""``hypersteer train``: train one HyperSteer method on an AxBench dump, write AxBench's train layout.

Layout written under ``{dump_dir}/train/`` (rank 0 only):
    config.json                {"model_name", "layer", "component"}  (AxBench inference reads it)
    metadata.jsonl             the concepts the hypernetwork was trained on
    {Method}/hypersteer_config.json + hypernet.safetensors   the trained hypernetwork
    {Method}/checkpoints/      resumable training state;  {Method}/train_log.jsonl
    {Method}/train_summary.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ..model.config import ConfigError
from ..model.fileio import atomic_write_json, atomic_write_text
from ..model.hypersteer import HyperSteer
from .common import add_progress_flags, is_trained, load_stage_base, method_dir
from .data import generate_dir, load_metadata, load_train_frame
from ..train.distributed import barrier, setup_distributed, teardown
from .run_config import MethodSpec, RunConfig, load_run_config
from ..train.trainer import Trainer, TrainResult

logger = logging.getLogger(__name__)


def write_train_layout(dump_dir: Path, run: RunConfig, data_dir: Path,
                       concept_ids: set[int]) -> None:
    """AxBench's ``train/config.json`` and ``train/metadata.jsonl``."""
    train_dir = dump_dir / "train"
    atomic_write_json(train_dir / "config.json", {
        "model_name": run.model_name, "layer": run.layer, "component": run.component,
    })
    meta = [m for m in load_metadata(generate_dir(data_dir) / "metadata.jsonl")
            if m["concept_id"] in concept_ids]
    atomic_write_text(train_dir / "metadata.jsonl", "".join(json.dumps(m) + "\n" for m in meta))


def split_dev(frame, n_dev: int):
    """Hold out ``n_dev`` shuffled examples of the training concepts for a dev loss; tiny data
    sets (fewer than 4 × n_dev rows) keep everything for training."""
    if n_dev <= 0 or len(frame) < 4 * n_dev:
        return frame, None
    return frame.iloc[n_dev:].reset_index(drop=True), frame.iloc[:n_dev].reset_index(drop=True)


def train_method(run: RunConfig, spec: MethodSpec, data_dir: str | Path, dump_dir: str | Path,
                 resume: bool = False, heldout_data_dir: str | Path | None = None,
                 base=None, progress: bool = True) -> TrainResult | None:
    """Train ``spec`` and save it. ``base`` = (model, tokenizer) to reuse an already loaded LM."""
    dump_dir, data_dir = Path(dump_dir), Path(data_dir)
    out_dir = method_dir(dump_dir, spec.name)
    if is_trained(dump_dir, spec.name):
        logger.info("%s already trained in %s; nothing to do", spec.name, out_dir)
        return None
    owns_group = not torch.distributed.is_initialized()
    info = setup_distributed()
    torch.manual_seed(spec.train.seed)
    if base is None:
        model, tokenizer = load_stage_base(run, str(info.device))
    else:
        model, tokenizer = base
    try:  # before any data is read: a wrong layer should cost seconds, not a data load
        spec.model.validate_for(model.config)
    except ConfigError as err:
        raise ConfigError(f"{run.path}: train.models.{spec.name}: {err}") from None
    cfg = spec.train
    frame = load_train_frame(data_dir, cfg.max_concepts, cfg.max_num_of_examples, seed=cfg.seed)
    train_frame, dev_frame = split_dev(frame, cfg.dev_examples)
    heldout_frame = None
    if heldout_data_dir is not None:
        heldout_frame = load_train_frame(heldout_data_dir, seed=cfg.seed).head(cfg.dev_examples)
    hs = HyperSteer.from_base(model, tokenizer, spec.model).to(info.device)
    trainer = Trainer(hs, train_frame, cfg, out_dir, info, dev_frame, heldout_frame,
                      use_bf16=run.use_bf16, progress=progress)
    logger.info("training %s on %d examples of %d concepts (%d updates)", spec.name,
                len(train_frame), train_frame["concept_id"].nunique(), trainer.total_updates)
    result = trainer.train(resume=resume)
    weights = trainer.strategy.full_state_dict()  # under FSDP a collective: every rank calls it
    if info.is_main:
        hs.save_pretrained(out_dir, state_dict=weights)
        write_train_layout(dump_dir, run, data_dir, set(frame["concept_id"].tolist()))
        atomic_write_json(out_dir / "train_summary.json", {
            "method": spec.name, "steps": result.steps, "first_loss": result.first_loss,
            "last_loss": result.last_loss, "dev_losses": result.dev_losses,
            "examples_per_s": result.examples_per_s, "resumed_from": result.resumed_from,
            "train_examples": len(train_frame),
            "train_concepts": int(train_frame["concept_id"].nunique()),
        })
    barrier(info)
    if owns_group:
        teardown(info)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypersteer train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="AxBench-format sweep YAML")
    parser.add_argument("--data_dir", required=True,
                        help="AxBench dump (or its generate/ dir) with train_data.parquet")
    parser.add_argument("--dump_dir", required=True)
    parser.add_argument("--method", default=None, help="e.g. hypersteer_xattn (default: the only "
                        "HyperSteer method in train.models; 'all' trains each)")
    add_progress_flags(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest whole checkpoint")
    parser.add_argument("--heldout_data_dir", default=None,
                        help="an AxBench dump of held-out concepts, for a held-out dev loss")
    args = parser.parse_args(argv)
    run = load_run_config(args.config)
    if not run.methods:
        raise ConfigError(f"{args.config}: train.models lists no HyperSteer method")
    specs = list(run.methods.values()) if args.method == "all" else [run.method(args.method)]
    # One process group for every method: destroying it and creating another under torchrun
    # can hang (the new group reads the old one's rendezvous keys from torchrun's store).
    info = setup_distributed()
    try:
        for spec in specs:
            result = train_method(run, spec, args.data_dir, args.dump_dir, args.resume,
                                  args.heldout_data_dir, progress=args.progress)
            if result is not None and info.is_main:  # print once under torchrun
                print(f"{spec.name}: {result.steps} updates, loss {result.first_loss:.4f} -> "
                      f"{result.last_loss:.4f}")
    finally:
        teardown(info)
    return 0
