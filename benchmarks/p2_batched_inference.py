"""P2: per-concept steering inference ÷ batched multi-concept inference, same rows.

Rows are AxBench's factor sweep: 10 concepts × 10 prompts × the steering factors, generated
through ``generation.steer_rows`` (the code path of ``hypersteer inference`` and AxBench's
``predict_steer``), with every row forced to the same number of new tokens.

* per-concept loop: what AxBench (and the published HyperSteer code, which runs inside it) does -
  ``predict_steer`` one concept at a time, in batches of ``steering_batch_size`` = 10 rows;
* batched: every concept's rows together, sorted by prompt length, ``InferenceConfig.rows_per_call``
  (128) rows per call - what ``hypersteer inference`` does;
* for reference, a per-concept loop with the batch raised to a concept's whole sweep (one call of
  10 prompts × 14 factors = 140 rows per concept): what batching alone, without mixing concepts,
  buys on this machine.

Target: per-concept loop ÷ batched >= 2 on CPU, >= 3 on GPU.

    python benchmarks/p2_batched_inference.py [--model tiny] [--new-tokens 16] [--batch 128]
    python benchmarks/p2_batched_inference.py --device cuda --model 2b --reps 1   # GPU, ~3 min
    python benchmarks/p2_batched_inference.py --model smollm2-135m-instruct --prompts 2 \
        --reps 1 --no-whole-concept     # the real pretrained LM, a cut-down sweep (280 rows)
"""

from __future__ import annotations

import argparse
import random

import torch

import _common as C

AXBENCH_BATCH = 10  # AxBench's steering_batch_size in every production sweep


def rows_for(concepts, prompts, factors, per_concept_prompts, tokenizer):
    from axbench_hypersteer.model.tokens import format_prompt
    from axbench_hypersteer.model.generation import SteerRow

    by_concept = []
    for cid, concept in enumerate(concepts):
        chosen = random.Random(cid).sample(prompts, per_concept_prompts)  # as inference_stage
        by_concept.append([SteerRow(format_prompt(tokenizer, p), p, concept, f)
                           for p in chosen for f in factors])
    return by_concept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=list(C.MODELS) + list(C.REAL_MODELS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="pyvene", choices=["pyvene", "hook"])
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"],
                        help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--factors", type=float, nargs="+", default=None,
                        help="default: AxBench's 14 production factors")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=None,
                        help="rows per call when batched (default: InferenceConfig.rows_per_call)")
    parser.add_argument("--per-concept-batch", type=int, default=AXBENCH_BATCH,
                        help="rows per call in the per-concept loop (AxBench's steering_batch_size)")
    parser.add_argument("--no-whole-concept", action="store_true",
                        help="skip the reference loop with one call per concept")
    C.common_args(parser, reps=3)
    args = parser.parse_args()
    C.start(args)
    from axbench_hypersteer.model.config import InferenceConfig
    from axbench_hypersteer.model.generation import steer_rows
    if args.device == "cuda" and not torch.cuda.is_available():
        print("P2: no CUDA device available; nothing measured")
        return
    dtype_name = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model, hs, tokenizer = C.build_any(args.model, backend=args.backend, device=args.device,
                                       dtype=dtype)
    hs.hypernet.eval()
    # Every row generates exactly new_tokens tokens, whatever its batch: a batch that happened to
    # stop early on EOS would otherwise time fewer steps.
    model.generation_config.min_new_tokens = args.new_tokens
    factors = args.factors or InferenceConfig().steering_factors
    batch = args.batch or InferenceConfig().rows_per_call
    known = C.concept10()[0]  # Concept10, or the 6 built-in demo concepts without ../shared
    concepts = [known[i % len(known)] + ("" if i < len(known) else f" (variant {i // len(known)})")
                for i in range(args.concepts)]
    by_concept = rows_for(concepts, C.demo_prompts(), factors, args.prompts, tokenizer)
    every = [r for rows in by_concept for r in rows]

    def run(rows, batch):
        out = steer_rows(hs, rows, batch_size=batch, max_new_tokens=args.new_tokens,
                         temperature=1.0, compute_perplexity=False)
        assert len(out["steered_generation"]) == len(rows)

    def per_concept(rows_per_call=None):
        def loop():
            for rows in by_concept:
                run(rows, rows_per_call or len(rows))
        return loop

    sides = {"per_concept": per_concept(args.per_concept_batch),
             "batched": lambda: run(every, batch)}
    if not args.no_whole_concept:
        sides["whole_concept"] = per_concept()
    times = C.interleaved(sides, reps=args.reps, warmup=0)
    extra = ""
    if "whole_concept" in times:
        extra = (f"; one call per concept ({len(by_concept[0])} rows) / batched "
                 f"{C.ratio(times, 'whole_concept', 'batched'):.2f}x "
                 f"[{C.median_ms(times['whole_concept']) / 1000:.1f} s]")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"P2 per-concept loop/batched inference: {C.ratio(times, 'per_concept', 'batched'):.2f}x "
          f"({len(every)} rows = {len(concepts)} concepts x {args.prompts} prompts x "
          f"{len(factors)} factors, {args.new_tokens} new tokens; per-concept loop "
          f"{args.per_concept_batch} rows/call vs batched {batch} rows/call mixing concepts "
          f"[{C.median_ms(times['per_concept']) / 1000:.1f} s vs "
          f"{C.median_ms(times['batched']) / 1000:.1f} s]{extra}; {C.describe(args.model, model)} "
          f"{dtype_name} on {device_name}, {args.backend}, {args.threads} thread(s), median of "
          f"{args.reps}) | target >= 2 (CPU), >= 3 (GPU) | "
          f"load {C.load()}")

if __name__ == "__main__":
    main()
