"""P3: FLOPs to produce a steering vector for an unseen concept ÷ FLOPs to train one per-concept
steering vector, at Gemma-2-2B's real sizes (a Gemma2Config, no weights). Target: <= 1/1000.

The vector: one forward of the 22-block cross-attention hypernetwork over the steering prompt,
cross-attending to the base prompt, plus the base model's blocks 0..20 over that prompt (which the
steered generate call runs anyway; counted here to be conservative). The per-concept vector:
AxBench's SteeringVector / ReFT-r1 setting, 3 epochs × 72 examples of prompt + 128 answer tokens,
forward through the whole LM and backward down to layer 20. Counting rules: flops.py.

    python benchmarks/p3_flops_new_concept.py [--steering-tokens 16] [--prompt-tokens 32]
"""

from __future__ import annotations

import argparse

import _common as C  # noqa: F401  (path and offline setup)
from benchmarks.flops import (HypernetShapes, PerConceptAssumptions,
                                           flops_per_concept_table, format_flops, gemma2_2b_shapes,
                                           new_concept_vector_flops, per_concept_vector_flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=22)
    parser.add_argument("--steering-tokens", type=int, default=16,
                        help="BOS + a Concept10 concept description (~61 characters)")
    parser.add_argument("--prompt-tokens", type=int, default=32,
                        help="BOS + chat template + a Concept10 instruction (~67 characters)")
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=72)
    parser.add_argument("--table", action="store_true",
                        help="also print FLOPs per concept as training concepts grow")
    args = parser.parse_args()

    g = gemma2_2b_shapes()
    arch = HypernetShapes(args.blocks)
    vec = new_concept_vector_flops(g, arch, args.steering_tokens, args.prompt_tokens, args.layer)
    base = dict(n_epochs=args.epochs, examples=args.examples, prompt_tokens=args.prompt_tokens,
                output_tokens=args.output_tokens)
    exact = per_concept_vector_flops(g, args.layer, PerConceptAssumptions(**base))
    nano = per_concept_vector_flops(g, args.layer,
                                    PerConceptAssumptions(**base, convention="nanogpt"))
    print(f"P3 new-concept vector / per-concept vector FLOPs (Gemma-2-2B, layer {args.layer}, "
          f"{args.blocks}-block xattn hypernet): {vec.total / exact:.2e} = "
          f"1/{exact / vec.total:.0f} "
          f"[vector {format_flops(vec.total)} = hypernet {format_flops(vec.hypernet)} + base "
          f"blocks 0..{args.layer} {format_flops(vec.base_prefix)} shared with generation; "
          f"hypernet alone 1/{exact / vec.hypernet:.0f}; per-concept vector "
          f"{format_flops(exact)} ({args.epochs}x{args.examples} examples of "
          f"{args.prompt_tokens}+{args.output_tokens} tokens; 6NT convention "
          f"{format_flops(nano)} -> 1/{nano / vec.total:.0f})] | target <= 1/1000")
    if args.table:
        scenarios = (("3-epoch schedule (batch 12)", None, 0, [10, 100, 1000, 16000]),
                     ("fixed 5000-step budget", 5000, 0, [10, 100, 1000, 16000]),
                     ("3 epochs on 16000 concepts, then 100000 unseen served", None, 100_000,
                      [16000]))
        for conv in ("exact", "nanogpt"):
            a = PerConceptAssumptions(**base, convention=conv)
            print(f"  FLOPs per concept ({conv} counting):")
            for title, budget, unseen, counts in scenarios:
                print(f"   {title}:")
                for r in flops_per_concept_table(g, arch, args.layer, counts, a,
                                                 steering_tokens=args.steering_tokens,
                                                 budget_steps=budget, unseen_concepts=unseen):
                    print(f"    c={r.concepts:>6} steps={r.steps:>7} train/concept="
                          f"{format_flops(r.train_per_concept):>12} amortised/concept="
                          f"{format_flops(r.amortised_per_concept):>12} "
                          f"vs per-concept vector {format_flops(r.baseline_per_concept)} "
                          f"({r.ratio:.3g}x)")

if __name__ == "__main__":
    main()
