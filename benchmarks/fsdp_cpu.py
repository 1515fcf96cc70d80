"""CPU, 2 ranks (gloo): training throughput and per-rank memory of ddp vs fsdp × adamw vs
adamw8bit, through the trainer itself, on the benchmark "tiny" random Gemma-2 (d256, 6 layers,
5 hypernetwork blocks, cross-attention) and Concept10.

    torchrun --standalone --nproc_per_node=2 benchmarks/fsdp_cpu.py [--steps 8] [--reps 2]

One warm-up round of every combination first (torchao compiles its 8-bit step per parameter
shape with inductor: minutes on 2 cores, once per process), then ``--reps`` rounds run in
alternating order (A B C D, D C B A, ...) so load drift hits every side. Prints one line per
combination from rank 0: the median global examples/s and the largest per-rank parameter,
gradient and optimizer bytes. ``--eager-8bit`` skips the compile (TORCHDYNAMO_DISABLE).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="rows per rank per step")
    parser.add_argument("--eager-8bit", action="store_true")
    args = parser.parse_args()
    if args.eager_8bit:
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as C
    from axbench_hypersteer.model.config import TrainConfig
    from axbench_hypersteer.stages.data import load_train_frame
    from axbench_hypersteer.train.distributed import setup_distributed, teardown
    from axbench_hypersteer.train.trainer import Trainer
    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer

    C.quiet()
    info = setup_distributed()
    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    frame = load_train_frame(C.CONCEPT10, max_num_of_examples=8, seed=0)
    combos = [(s, o) for s in ("ddp", "fsdp") for o in ("adamw", "adamw8bit")]
    rates: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    memory: dict[tuple[str, str], dict[str, int]] = {}
    rounds = [combos] + [combos if r % 2 == 0 else combos[::-1] for r in range(args.reps)]
    with tempfile.TemporaryDirectory() as tmp:
        for index, order in enumerate(rounds):
            for strategy, optimizer in order:
                _, hs = C.build("tiny", tokenizer, backend="hook")
                cfg = TrainConfig(strategy=strategy, optimizer=optimizer, batch_size=args.batch,
                                  max_steps=args.steps, lr=1e-3, max_length=256, dev_examples=0,
                                  eval_every=10**6, checkpoint_every=10**6, seed=0)
                trainer = Trainer(hs, frame, cfg, tmp, info, progress=False)
                result = trainer.train()
                if index == 0:  # warm-up round: memory only
                    local = trainer.state_bytes()
                    values = torch.tensor([local["params"], local["grads"], local["optimizer"]])
                    dist.all_reduce(values, op=dist.ReduceOp.MAX)
                    memory[(strategy, optimizer)] = dict(zip(("params", "grads", "optimizer"),
                                                             values.tolist()))
                else:
                    rates[(strategy, optimizer)].append(result.examples_per_s * info.world_size)
    if info.is_main:
        for combo in combos:
            mem = memory[combo]
            total = sum(mem.values())
            print(f"fsdp_cpu {info.world_size} ranks {combo[0]}+{combo[1]}: "
                  f"{statistics.median(rates[combo]):.2f} examples/s (median of {args.reps}, "
                  f"{args.steps} steps x {args.batch} rows/rank); per rank (max): params "
                  f"{mem['params'] / 2**20:.1f} MiB, grads {mem['grads'] / 2**20:.1f} MiB, "
                  f"optimizer {mem['optimizer'] / 2**20:.1f} MiB, total {total / 2**20:.1f} MiB"
                  f"{' (8-bit step eager)' if args.eager_8bit else ''}; load {C.load()}")
    teardown(info)


if __name__ == "__main__":
    main()
