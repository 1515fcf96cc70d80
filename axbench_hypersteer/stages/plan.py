"""``hypersteer plan``: the per-GPU memory table of :mod:`axbench_hypersteer.train.planner` for
the method of an AxBench sweep YAML (reading the YAML is this layer's job, the estimate the
trainer's)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..model.config import ConfigError
from ..train import planner
from .run_config import load_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypersteer plan",
                                     description=planner.__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="AxBench-format sweep YAML")
    parser.add_argument("--method", default=None, help="e.g. hypersteer_xattn (default: the "
                        "only HyperSteer method in train.models)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu_mem_gb", type=float, default=80.0)
    parser.add_argument("--shard_base", action="store_true",
                        help="plan fsdp with the frozen base model sharded too (the config's "
                        "shard_base: true)")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.gpu_mem_gb <= 0:
        raise ConfigError("--gpus must be >= 1 and --gpu_mem_gb > 0")
    run = load_run_config(args.config)
    spec = run.method(args.method)
    if args.shard_base:
        spec.train = dataclasses.replace(spec.train, strategy="fsdp", shard_base=True)
    cfg = planner.base_config(run.model_name)
    spec.model.validate_for(cfg)
    plans = planner.plan(cfg, spec.model, spec.train, args.gpus, bf16=run.use_bf16)
    fewest = planner.min_gpus(cfg, spec.model, spec.train, args.gpu_mem_gb, bf16=run.use_bf16)
    print(f"{Path(args.config).name}: {spec.name} on {run.model_name}, "
          f"batch {spec.train.batch_size} x {spec.train.max_length} "
          f"tokens, {'bf16' if run.use_bf16 else 'fp32'} base"
          f"{' (sharded under fsdp)' if spec.train.shard_base else ''}; GB per GPU "
          f"(config: strategy {spec.train.strategy}, optimizer {spec.train.optimizer})")
    print(planner.format_table(plans, args.gpus, args.gpu_mem_gb, fewest))
    return 0
