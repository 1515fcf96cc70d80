"""Training throughput of the tiny model: examples/s per HyperSteer variant and the process's peak
resident memory, printed as ONE line.

Each variant trains ``--steps`` updates (plus ``--warmup`` untimed ones) with the package's
Trainer on the Concept10 training data (the built-in demo data when Concept10 is absent), on the
built-in tiny random Gemma-2 (hidden 64, 4 layers, steering layer 2, 2 hypernetwork blocks), CPU,
fp32. Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, all variants, model
and tokenizer included.

    python benchmarks/bench_train.py [--steps 10] [--batch 8] [--max_length 256] [--threads 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import logging
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as `python benchmarks/bench_train.py` without an install

from axbench_hypersteer.model.config import HyperSteerConfig, TrainConfig  # noqa: E402
from axbench_hypersteer.model.hypersteer import HyperSteer  # noqa: E402
from axbench_hypersteer.stages.data import load_train_frame  # noqa: E402
from axbench_hypersteer.train.trainer import Trainer  # noqa: E402
from axbench_hypersteer.testing.tiny import build_tiny_gemma2, build_tiny_tokenizer  # noqa: E402

CONCEPT10 = ROOT.parent / "shared" / "axbench-data" / "concept10" / "prod_2b_l20_v1"
VARIANTS = ("nocontext", "incontext", "xattn")


def data_frame(tmp: Path):
    if CONCEPT10.exists():
        return load_train_frame(CONCEPT10, seed=0), "concept10"
    from axbench_hypersteer.demo.data import write_demo_dataset

    write_demo_dataset(tmp)
    return load_train_frame(tmp, seed=0), "demo"


def run_variant(variant: str, tokenizer, frame, args, out_dir: Path) -> float:
    model = build_tiny_gemma2(tokenizer, seed=0)  # hidden 64, 4 layers: load_base("tiny")
    hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(
        variant=variant, steering_layer=2, num_blocks=2, cross_attention_heads=4))
    cfg = TrainConfig(batch_size=args.batch, n_epochs=1000, lr=1e-3, max_length=args.max_length,
                      max_steps=args.warmup + args.steps, dev_examples=0, eval_every=10**6,
                      checkpoint_every=10**6, log_every=10**6, seed=0)
    trainer = Trainer(hs, frame, cfg, out_dir / variant, progress=False)
    if args.warmup:  # untimed: first-call allocations, lazy imports
        trainer.total_updates = args.warmup
        trainer.train()
        trainer.total_updates = args.warmup + args.steps
    start = time.perf_counter()
    result = trainer.train()
    elapsed = time.perf_counter() - start
    assert result.steps == args.warmup + args.steps
    return args.steps * args.batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    tokenizer = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        frame, source = data_frame(Path(tmp))
        rates = {v: run_variant(v, tokenizer, frame, args, Path(tmp)) for v in VARIANTS}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("bench_train: " + ", ".join(f"{v} {r:.1f} examples/s" for v, r in rates.items())
          + f"; peak RSS {peak_mib:.0f} MiB (tiny Gemma-2 h64 L4, {source} data, batch "
          f"{args.batch}, max_length {args.max_length}, {args.steps} timed steps, "
          f"{args.threads} thread(s), torch {torch.__version__}, CPU fp32)")


if __name__ == "__main__":
    main()
