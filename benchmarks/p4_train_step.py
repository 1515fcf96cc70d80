"""P4: one-pass training step ÷ the two-pass reference, and pyvene ÷ hook, same model and batch.

A step is forward, backward and AdamW on the hypernetwork, for a batch of 12 Concept10 training
examples (right padded, context = prompt tokens). Sides, interleaved in one process:

* one-pass (hook / pyvene): ``HyperSteer.forward`` as the trainer calls it - the hypernetwork
  reads block l's output inside the steered pass, and the LM head runs on the answer tokens only
  (``return_logits=False``);
* one-pass, full logits: the same with Hugging Face's ``labels=`` loss over all positions, to
  separate the two savings;
* two-pass: the published design - a full unsteered forward of the base model (all blocks and the
  LM head, ``output_hidden_states``), the hypernetwork on ``hidden_states[l+1]``, then the steered
  forward through a plain hook.

Targets: one-pass ÷ two-pass <= 0.6; pyvene ÷ hook <= 1.1. Peak memory per side: the rise of the
resident set (VmHWM, reset through /proc/self/clear_refs) over one step, each side in a fresh
process with glibc's mmap threshold pinned so freed tensors go back to the OS.

    python benchmarks/p4_train_step.py [--model tiny] [--batch 12] [--reps 15]
    python benchmarks/p4_train_step.py --model smollm2-135m-instruct --reps 5 --no-memory
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

import _common as C
from axbench_hypersteer.model.collate import SteeringCollator
from benchmarks.flops import HypernetShapes, LMShapes, training_step_flops
from axbench_hypersteer.model.hypersteer import context_width
from axbench_hypersteer.model.steering import SteeringSource, steering_hook

SIDES = ("one_pass_hook", "one_pass_pyvene", "one_pass_full_head", "two_pass")


def setup(args):
    import random

    model, hs_pv, tokenizer = C.build_any(args.model, backend="pyvene")
    hs = {"one_pass_pyvene": hs_pv}
    for side in ("one_pass_hook", "one_pass_full_head", "two_pass"):
        hs[side] = C.HyperSteer.from_base(model, tokenizer, hs_pv.config, backend="hook")
        hs[side].hypernet.load_state_dict(hs_pv.hypernet.state_dict())
    rows = C.concept10()[1]
    rows = random.Random(0).sample(rows, args.batch)
    batch = SteeringCollator(tokenizer, max_length=512)(rows)
    batch.pop("concept_ids")
    return model, hs, batch


def step_fns(model, hs, batch):
    opts = {}
    for side, h in hs.items():
        h.hypernet.train()
        opts[side] = torch.optim.AdamW(h.hypernet.parameters(), lr=8e-5, weight_decay=0.0)

    def one_pass(side, answer_head=True):
        def run():
            h, opt = hs[side], opts[side]
            loss = h(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
                     batch["hyper_attention_mask"], labels=batch["labels"],
                     context_mask=batch["context_mask"], return_logits=not answer_head).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    def two_pass():
        h, opt = hs["two_pass"], opts["two_pass"]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                           output_hidden_states=True).hidden_states[h.config.steering_layer + 1]
        delta = h.hypernet(batch["hyper_input_ids"], batch["hyper_attention_mask"],
                           context=hidden, context_mask=batch["context_mask"])
        source = SteeringSource(torch.ones(ids.shape[0]), delta=delta)
        with steering_hook(model, h.config.steering_layer, source):
            loss = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                         labels=batch["labels"], use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"one_pass_hook": one_pass("one_pass_hook"),
            "one_pass_pyvene": one_pass("one_pass_pyvene"),
            "one_pass_full_head": one_pass("one_pass_full_head", answer_head=False),
            "two_pass": two_pass}


def _rss_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_child(args) -> None:
    """Runs in a fresh process: one warm-up step, then the peak RSS rise over one more step."""
    model, hs, batch = setup(args)
    fn = step_fns(model, hs, batch)[args.memory_side]
    fn()
    before = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    print(f"PEAK_MB {(_rss_kb('VmHWM') - before) / 1024:.1f}")


def peak_mb(side: str, args) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-side", side, "--model", args.model,
           "--batch", str(args.batch), "--threads", str(args.threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        return None
    for line in out.stdout.splitlines():
        if line.startswith("PEAK_MB"):
            return float(line.split()[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=list(C.MODELS) + list(C.REAL_MODELS))
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-side", choices=SIDES, help=argparse.SUPPRESS)
    C.common_args(parser, reps=15)
    args = parser.parse_args()
    C.start(args)
    if args.memory_side:
        memory_child(args)
        return

    model, hs, batch = setup(args)
    times = C.interleaved(step_fns(model, hs, batch), reps=args.reps, warmup=2)
    one_two = C.ratio(times, "one_pass_hook", "two_pass")
    pv_one_two = C.ratio(times, "one_pass_pyvene", "two_pass")
    full_head_two = C.ratio(times, "one_pass_full_head", "two_pass")
    pv_hook = C.ratio(times, "one_pass_pyvene", "one_pass_hook")
    B, T = batch["input_ids"].shape
    S = batch["hyper_input_ids"].shape[1]
    answer = round(int((batch["labels"][:, 1:] != -100).sum()) / B)
    cfg = hs["two_pass"].config
    shapes = LMShapes.from_config(model.config)
    arch = HypernetShapes(cfg.num_blocks)
    ctx = context_width(batch["context_mask"])

    def flops(**kw):
        return training_step_flops(shapes, arch, cfg.steering_layer, B, T, S, **kw).total

    two = flops(two_pass=True)
    analytic = flops(context_tokens=ctx, head_tokens=answer) / two
    analytic_full_head = flops(context_tokens=ctx) / two
    mem = ""
    if not args.no_memory:
        peaks = {side: peak_mb(side, args) for side in SIDES}
        mem = "; peak RSS rise per step: " + ", ".join(
            f"{s} {'?' if v is None else f'{v:.0f} MB'}" for s, v in peaks.items())
    real_tokens = int(batch["attention_mask"].sum())
    per_token = C.median_ms(times["one_pass_hook"]) / real_tokens
    print(f"P4 train step: one-pass/two-pass {one_two:.3f} (pyvene one-pass/two-pass "
          f"{pv_one_two:.3f}; analytic FLOPs {analytic:.3f}; one-pass with the full-logits HF "
          f"loss {full_head_two:.3f}, analytic {analytic_full_head:.3f}), pyvene/hook "
          f"{pv_hook:.3f} [medians: hook {C.median_ms(times['one_pass_hook']):.0f} ms, pyvene "
          f"{C.median_ms(times['one_pass_pyvene']):.0f} ms, full-logits "
          f"{C.median_ms(times['one_pass_full_head']):.0f} ms, two-pass "
          f"{C.median_ms(times['two_pass']):.0f} ms; one-pass hook {per_token:.2f} ms per real "
          f"(non-pad) base token, {real_tokens} in the batch]{mem} | "
          f"{C.describe(args.model, model)} batch {B}x{T} tokens ({answer} labelled per row), hypernet {S} tokens, "
          f"fp32, {args.threads} thread(s), median of {args.reps} | targets <= 0.6, <= 1.1 | "
          f"load {C.load()}")

if __name__ == "__main__":
    main()
