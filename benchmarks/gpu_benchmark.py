"""GPU benchmark: HyperSteer cross-attention training at Gemma-2-2B's sizes, random weights.

No download: the base model is a randomly initialised Gemma2ForCausalLM built from a Gemma2Config
with the real 2B sizes, in bf16; the hypernetwork (22 blocks by default, 8 cross-attention heads,
fp32 master weights, AdamW) trains under bf16 autocast, exactly as the trainer does. Batches are
random token ids shaped like AxBench's (32 prompt + 128 answer tokens, 16 steering-prompt tokens,
batch 12). Prints ONE line: median step time, base tokens/s, torch.cuda.max_memory_allocated, and
the achieved TFLOP/s by the analytic count of benchmarks/flops.py.

    python benchmarks/gpu_benchmark.py --steps 20            # one H100-class GPU, < 10 minutes
    python benchmarks/gpu_benchmark.py --steps 10 --strategy fsdp   # the same step under FSDP2
    python benchmarks/gpu_benchmark.py --device cpu --tiny --steps 2   # smoke test, seconds

``--strategy``/``--optimizer`` go through the trainer's own strategy object
(``train/strategy.py``); ``fsdp`` on one GPU runs in a one-rank process group, so the line
shows what FSDP2's unit-by-unit gathering and bf16 mixed-precision policy cost against the
plain (``ddp``, single-process) step.

Without CUDA (and without --device cpu) it prints a message and exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# bf16 dense peak of known cards, for MFU (FLOP/s)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test)")
    p.add_argument("--blocks", type=int, default=None, help="hypernet blocks (default 22; tiny 2)")
    p.add_argument("--layer", type=int, default=None, help="steering layer (default 20; tiny 2)")
    p.add_argument("--heads", type=int, default=None,
                   help="cross-attention heads (default 8; tiny 4)")
    p.add_argument("--batch", type=int, default=None, help="default 12 (tiny 4)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="default 32 (tiny 8)")
    p.add_argument("--answer-tokens", type=int, default=None, help="default 128 (tiny 24)")
    p.add_argument("--steering-tokens", type=int, default=None, help="default 16 (tiny 6)")
    p.add_argument("--init", default="pretrained", choices=["pretrained", "random"],
                   help="hypernet init (from the random base's blocks, or fresh)")
    p.add_argument("--backend", default="pyvene", choices=["pyvene", "hook"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--fp32", action="store_true", help="no bf16: fp32 base and no autocast")
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"])
    p.add_argument("--fused-adam", action="store_true",
                   help="AdamW(fused=True) (the trainer uses the default foreach AdamW)")
    args = p.parse_args(argv)
    for key, full, tiny in (("batch", 12, 4), ("prompt_tokens", 32, 8), ("answer_tokens", 128, 24),
                            ("steering_tokens", 16, 6)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    return args


def build(args, device):
    import torch
    from transformers import Gemma2ForCausalLM

    import _common as C
    from axbench_hypersteer.model.config import HyperSteerConfig
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.testing.tiny import tiny_gemma2_config

    if args.tiny:
        cfg = tiny_gemma2_config(2048, hidden_size=64, num_layers=4, num_heads=4)
        defaults = (2, 2, 4)
    else:
        cfg = C.gemma2_2b_config()
        defaults = (20, 22, 8)
    layer = defaults[0] if args.layer is None else args.layer
    blocks = defaults[1] if args.blocks is None else args.blocks
    heads = defaults[2] if args.heads is None else args.heads
    base_dtype = torch.float32 if args.fp32 or device.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with C.building_on(device, base_dtype):
        model = Gemma2ForCausalLM(cfg)
    model.eval()
    with device:  # hypernet built in place, fp32 master weights
        hs = HyperSteer.from_base(model, None, HyperSteerConfig(
            variant="xattn", steering_layer=layer, num_blocks=blocks, cross_attention_heads=heads,
            init=args.init), backend=args.backend)
    hs.hypernet.to(device).train()
    if args.gradient_checkpointing:
        hs.hypernet.enable_gradient_checkpointing(use_reentrant=False)
    return model, hs


def one_rank_group(device) -> None:
    """A process group of this one process (FSDP2 needs one even on a single device)."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def make_batch(args, vocab: int, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    B, P, A, S = args.batch, args.prompt_tokens, args.answer_tokens, args.steering_tokens
    ids = torch.randint(10, vocab, (B, P + A), generator=gen)
    labels = ids.clone()
    labels[:, :P] = -100
    context = torch.zeros(B, P + A, dtype=torch.bool)
    context[:, :P] = True
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                 context_mask=context,
                 hyper_input_ids=torch.randint(10, vocab, (B, S), generator=gen),
                 hyper_attention_mask=torch.ones(B, S, dtype=torch.long))
    return {k: v.to(device) for k, v in batch.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_benchmark: no CUDA device available; nothing measured "
              "(use --device cpu --tiny for a smoke run)")
        return 0
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from axbench_hypersteer.model.config import TrainConfig
    from benchmarks.flops import (HypernetShapes, LMShapes, format_flops,
                                               training_step_flops)
    from axbench_hypersteer.train.distributed import DistInfo
    from axbench_hypersteer.train.strategy import make_strategy

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU run is a smoke test; one thread avoids OpenMP spinning
    t0 = time.perf_counter()
    model, hs = build(args, device)
    build_s = time.perf_counter() - t0
    batch = make_batch(args, model.config.vocab_size, device)
    autocast = device.type == "cuda" and not args.fp32
    cuda = device.type == "cuda"
    if args.strategy == "fsdp":
        one_rank_group(device)
    strategy = make_strategy(TrainConfig(strategy=args.strategy, optimizer=args.optimizer,
                                         lr=8e-5), DistInfo(device=device), use_bf16=autocast)
    strategy.prepare(hs)
    params, opt = strategy.params, strategy.optimizer
    if args.fused_adam:
        opt = torch.optim.AdamW(params, lr=8e-5, weight_decay=0.0, fused=True)

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = strategy.net(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
                     batch["hyper_attention_mask"], labels=batch["labels"],
                     context_mask=batch["context_mask"], return_logits=False)  # as the trainer
        out.loss.float().backward()
        strategy.clip_grad_norm(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()  # syncs

    times, losses = [], []
    try:
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
        for _ in range(args.steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            losses.append(step())
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    except torch.cuda.OutOfMemoryError:
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"gpu_benchmark: out of memory after {len(times)} timed steps (peak "
              f"{peak:.1f} GiB); retry with --fused-adam, --gradient-checkpointing or a smaller "
              f"--batch")
        return 1

    med = statistics.median(times)
    B, T = batch["input_ids"].shape
    cfg = hs.config
    flops = training_step_flops(LMShapes.from_config(model.config), HypernetShapes(cfg.num_blocks),
                                cfg.steering_layer, B, T, args.steering_tokens,
                                context_tokens=args.prompt_tokens,
                                head_tokens=args.answer_tokens).total
    name = torch.cuda.get_device_name() if cuda else "cpu"
    mem = (f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB max allocated"
           if cuda else "memory n/a on cpu")
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    mfu = f", MFU {flops / med / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" \
        if peak and autocast else ""
    n_hyper = sum(p.numel() for p in params)
    rate = format_flops(flops / med) + "/s"
    shape = "tiny" if args.tiny else "Gemma-2-2B"
    print(f"gpu_benchmark {shape} xattn N={cfg.num_blocks} l={cfg.steering_layer} "
          f"({n_hyper / 1e6:,.1f}M trainable, {args.strategy}+{args.optimizer}, {args.backend}, "
          f"{'bf16 autocast' if autocast else 'fp32'}) on {name}: step {med * 1000:.1f} ms "
          f"(median of {args.steps}, min {min(times) * 1000:.1f}), {B * T / med:,.0f} tokens/s "
          f"(batch {B}x{T}), {mem}, {rate} analytic{mfu}; "
          f"loss {losses[0]:.3f}->{losses[-1]:.3f}; build {build_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
