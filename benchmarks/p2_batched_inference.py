"""P2: per-concept steering inference ÷ batched multi-concept inference, same rows.

Rows are AxBench's factor sweep: 10 concepts × 10 prompts × the steering factors, generated
through ``generation.steer_rows`` (the code path of ``hypersteer inference`` and AxBench's
``predict_steer``), with every row forced to the same number of new tokens.

* per-concept: one generate call per concept holding all of that concept's prompts × factors
  (``--per-concept-batch 0``, the default), and, for reference, AxBench's own per-concept loop
  (``predict_steer`` per concept in batches of ``steering_batch_size`` = 10 rows);
* batched: every concept's rows together, sorted by prompt length, ``--batch`` rows per call;
  and, for reference, the same at ``InferenceConfig.steering_batch_size`` (10, AxBench's value),
  which is what ``hypersteer inference`` uses unless the config raises it.

Target: per-concept ÷ batched >= 2 on CPU.

    python benchmarks/p2_batched_inference.py [--model tiny] [--new-tokens 16] [--batch 350]
"""

from __future__ import annotations

import argparse
import random

import _common as C

AXBENCH_BATCH = 10  # AxBench's steering_batch_size in every production sweep


def rows_for(concepts, prompts, factors, per_concept_prompts, tokenizer):
    from axbench_hypersteer.data import format_prompt
    from axbench_hypersteer.generation import SteerRow

    by_concept = []
    for cid, concept in enumerate(concepts):
        chosen = random.Random(cid).sample(prompts, per_concept_prompts)  # as inference_stage
        by_concept.append([SteerRow(format_prompt(tokenizer, p), p, concept, f)
                           for p in chosen for f in factors])
    return by_concept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=list(C.MODELS))
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--factors", type=float, nargs="+", default=None,
                        help="default: AxBench's 14 production factors")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=350, help="rows per call when batched")
    parser.add_argument("--per-concept-batch", type=int, default=0,
                        help="rows per call in the per-concept loop (0: all of a concept's rows)")
    parser.add_argument("--no-axbench-loop", action="store_true",
                        help="skip the two batch-10 references (AxBench's loop, sorted batch 10)")
    C.common_args(parser, reps=3)
    args = parser.parse_args()
    C.start(args)
    from axbench_hypersteer.config import InferenceConfig
    from axbench_hypersteer.generation import steer_rows
    from axbench_hypersteer.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model, hs = C.build(args.model, tokenizer, backend="pyvene")
    hs.hypernet.eval()
    # Every row generates exactly new_tokens tokens, whatever its batch: a batch that happened to
    # stop early on EOS would otherwise time fewer steps.
    model.generation_config.min_new_tokens = args.new_tokens
    factors = args.factors or InferenceConfig().steering_factors
    concepts = C.concept10()[0][: args.concepts]
    by_concept = rows_for(concepts, C.demo_prompts(), factors, args.prompts, tokenizer)
    every = [r for rows in by_concept for r in rows]

    def run(rows, batch):
        out = steer_rows(hs, rows, batch_size=batch, max_new_tokens=args.new_tokens,
                         temperature=1.0, compute_perplexity=False)
        assert len(out["steered_generation"]) == len(rows)

    def per_concept():
        for rows in by_concept:
            run(rows, args.per_concept_batch or len(rows))

    def axbench_loop():
        for rows in by_concept:
            run(rows, AXBENCH_BATCH)

    sides = {"per_concept": per_concept, "batched": lambda: run(every, args.batch)}
    if not args.no_axbench_loop:
        sides["axbench"] = axbench_loop
        sides["sorted10"] = lambda: run(every, AXBENCH_BATCH)
    times = C.interleaved(sides, reps=args.reps, warmup=0)
    main_ratio = C.ratio(times, "per_concept", "batched")
    extra = ""
    if "axbench" in times:
        extra = (f"; AxBench-style per-concept loop (batch {AXBENCH_BATCH}) / batched "
                 f"{C.ratio(times, 'axbench', 'batched'):.2f}x, / all concepts sorted in batches "
                 f"of {AXBENCH_BATCH} {C.ratio(times, 'axbench', 'sorted10'):.2f}x")
    h, n, _, layer, blocks = C.MODELS[args.model]
    per = args.per_concept_batch or len(by_concept[0])
    print(f"P2 per-concept/batched inference: {main_ratio:.2f}x ({len(every)} rows = "
          f"{len(concepts)} concepts x {args.prompts} prompts x {len(factors)} factors, "
          f"{args.new_tokens} new tokens, per-concept {per} rows/call vs batched {args.batch} "
          f"rows/call [{C.median_ms(times['per_concept']) / 1000:.1f} s vs "
          f"{C.median_ms(times['batched']) / 1000:.1f} s]{extra}; {args.model}(d{h},L{n},l{layer},"
          f"N{blocks}) fp32, {args.threads} thread(s), median of {args.reps}) | target >= 2 | "
          f"load {C.load()}")


if __name__ == "__main__":
    main()
