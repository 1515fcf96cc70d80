"""Training throughput per real (non-pad) token: our trainer with each throughput option, and the
official HyperSteer training loop, side by side on issue 16's setup.

Setup: a random tiny Gemma-2 (hidden 256, 6 layers, 4 heads, steering layer 3), a 2-block
cross-attention hypernetwork initialised from the base, batch 4, fp32, CPU, ``--rows`` Concept10
positives (one seeded shuffle) trained for ``--epochs`` epochs. Every run is a fresh subprocess (so
peak RSS, ``ru_maxrss``, is per run) and times its whole training call: data collation, forward,
backward, clipping, AdamW, the first (recording) epoch of the prefix cache included. The primary
figure is the process CPU time on one torch thread: on a machine shared by several engineers
(load averages of 5-13 on 2 cores) wall time measures the neighbours as much as the code, CPU time
the work done. Runs are interleaved (A B C ... then ... C B A) ``--reps`` times; the table gives
medians and median ratios of back-to-back runs to the official loop.

Our sides: ``defaults`` (what a user gets: ``length_bucket_group: 16``, ``prefix_cache: auto``,
which takes memory here), ``plain`` (every option off: the paper's loop), ``bucketed`` and
``cached`` (one option each), and ``defaults+fused`` / ``defaults+foreach`` (AdamW's fused or
multi-tensor kernel; torch picks the per-parameter loop on CPU). ``--device cuda --size 2b`` runs
our sides on a GPU at Gemma-2-2B's sizes (random weights, bf16 autocast, 22 hypernetwork blocks,
layer 20; wall time and peak GPU memory are the figures there); the official side is CPU-only here
(its pinned transformers 4.45 is not on the device image).

The official side is the AxBench fork's ``HyperSteer.train`` at commit c01a22a, imported at run time
from the checkout given by ``--official`` (nothing of it is copied here) and run unchanged under
transformers 4.45 (``--official-pythonpath``, e.g. ``pip install --no-deps --target /tmp/tf445
transformers==4.45.2 tokenizers==0.20.3``), fp32 like ours. Without the checkout the script says
so in one line and times our sides only.

    python benchmarks/throughput_vs_official.py --official /tmp/official \\
        --official-pythonpath /tmp/tf445 [--rows 200] [--epochs 3] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (offline environment; the repo on sys.path)
from fidelity_vs_official import import_official, official_path  # noqa: E402

SETUP = dict(hidden=256, layers=6, heads=4, steering_layer=3, num_blocks=2, batch_size=4, seed=42)
PLAIN = {"length_bucket_group": 0, "prefix_cache": "off"}
SIDES = {
    "defaults": {},
    "plain": PLAIN,
    "bucketed": {"prefix_cache": "off"},
    "cached": {"length_bucket_group": 0, "prefix_cache": "memory"},
    "defaults+fused": {"fused_adamw": True},
    "defaults+foreach": {"_foreach": True},
}


def training_rows(n: int) -> list[dict]:
    _, rows = C.concept10()
    random.Random(SETUP["seed"]).shuffle(rows)
    return rows[:n]


def base_model(tokenizer):
    from axbench_hypersteer.testing.tiny import build_tiny_gemma2

    return build_tiny_gemma2(tokenizer, hidden_size=SETUP["hidden"], num_layers=SETUP["layers"],
                             num_heads=SETUP["heads"], seed=0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------------ our side


def run_ours(side: str, args) -> dict:
    import pandas as pd

    from axbench_hypersteer.model.config import HyperSteerConfig
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    backend = "pyvene" if _has_pyvene() else "hook"
    if args.size == "2b":  # GPU: random Gemma-2-2B in bf16, the paper's hypernetwork shape
        _, hs = C.build("2b", tokenizer, backend=backend, device=args.device,
                        dtype=torch.bfloat16)
    else:
        hs = HyperSteer.from_base(base_model(tokenizer), tokenizer, HyperSteerConfig(
            variant="xattn", steering_layer=SETUP["steering_layer"],
            num_blocks=SETUP["num_blocks"], cross_attention_heads=SETUP["heads"],
            seed=SETUP["seed"]), backend=backend)
    frame = pd.DataFrame(training_rows(args.rows))
    cuda = args.device == "cuda"
    options = dict(SIDES[side])
    foreach = options.pop("_foreach", False)

    def use_foreach(trainer) -> None:
        for group in trainer.optimizer.param_groups:
            group["foreach"] = True

    run = C.timed_training(hs, frame, options, args.batch, args.epochs, SETUP["seed"], cuda,
                           prepare=use_foreach if foreach else None)
    return {"seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"],
            "steps": run["result"].steps, "real_tokens": run["real_tokens"],
            "pad_fraction": run["pad"], "peak_rss_mb": peak_rss_mb(),
            "last_loss": run["result"].last_loss, "prefix_cache": run["cache"],
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0}


def _has_pyvene() -> bool:
    try:
        import pyvene  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------- official side


def run_official(root: Path, args) -> dict:
    import pandas as pd
    import torch.distributed as dist
    import torch.utils.data as tud
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axbench_hypersteer.model.tokens import format_prompt
    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer, save_tiny

    official_cls, get_prefix_length = import_official(root)
    tok = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        save_tiny(base_model(tok), tok, Path(tmp) / "base")
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "base")
        model = AutoModelForCausalLM.from_pretrained(
            Path(tmp) / "base", attn_implementation="eager", torch_dtype=torch.float32).eval()
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(20000 + os.getpid() % 20000))
        dist.init_process_group("gloo", rank=0, world_size=1)
        training = types.SimpleNamespace(lr=8e-5, weight_decay=0.0, n_epochs=args.epochs,
                                         topk=None, gradient_accumulation_steps=1,
                                         batch_size=args.batch)
        hs = official_cls(model, tok, layer=SETUP["steering_layer"], training_args=training,
                          device="cpu", seed=SETUP["seed"])
        hs.make_model(mode="train", low_rank_dimension=1, num_hidden_layers=SETUP["num_blocks"],
                      intervention_type="addition", hypernet_name_or_path=str(Path(tmp) / "base"),
                      hypernet_initialize_from_pretrained=True)
    hs.concept_embedding.float()  # make_model casts the hypernetwork to bf16; we compare in fp32
    frame = pd.DataFrame([{"input": format_prompt(tok, r["input"]), "output": r["output"],
                           "output_concept": r["concept"], "concept_id": r["concept_id"]}
                          for r in training_rows(args.rows)])
    counts = {"real": 0, "total": 0, "steps": 0}
    plain_loader = tud.DataLoader

    class CountingLoader(plain_loader):  # counts the real and padded tokens the loop trains on
        def __iter__(self):
            for batch in super().__iter__():
                counts["real"] += int(batch["attention_mask"].sum())
                counts["total"] += batch["attention_mask"].numel()
                counts["steps"] += 1
                yield batch

    sys.modules["axbench.models.hypersteer"].DataLoader = CountingLoader
    start, cpu = time.perf_counter(), time.process_time()
    hs.train(frame, prefix_length=get_prefix_length(tok), positions="all", exclude_bos=True,
             world_size=1)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    dist.destroy_process_group()
    return {"seconds": seconds, "cpu_seconds": cpu, "steps": counts["steps"],
            "real_tokens": counts["real"],
            "pad_fraction": 1 - counts["real"] / counts["total"], "peak_rss_mb": peak_rss_mb()}


def pad_table() -> None:
    """Pad fraction of one epoch of all Concept10 positives, plain and bucketed."""
    from axbench_hypersteer.model.collate import SteeringCollator
    from axbench_hypersteer.train.batching import bucketed_batches, pad_fraction, plain_batches
    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer

    rows = training_rows(10**9)
    _, lengths = SteeringCollator(build_tiny_tokenizer(), 512).lengths(rows)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    for batch in (4, 12):
        line = [f"plain {pad_fraction(plain_batches(order, batch), lengths):.3f}"]
        for group in (4, 16, 64):
            batches = bucketed_batches(order, lengths, batch, group, seed=0, epoch=0)
            line.append(f"group {group}: {pad_fraction(batches, lengths):.3f}")
        print(f"pad fraction, batch {batch}: " + ", ".join(line)
              + f" ({len(rows)} rows, {sum(lengths)} real tokens)")


# ---------------------------------------------------------------------------------------- main


def one_run(side: str, args) -> dict:
    """One side in a fresh process; returns its measurements."""
    cmd = [sys.executable, __file__, "--_run", side, "--rows", str(args.rows),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--batch",
           str(args.batch), "--device", args.device, "--size", args.size]
    env = dict(os.environ)
    if side == "official":
        cmd += ["--official", str(args.official)]
        if args.official_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (args.official_pythonpath, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", default=os.environ.get("HYPERSTEER_OFFICIAL"),
                   help="AxBench checkout at c01a22a (or $HYPERSTEER_OFFICIAL)")
    p.add_argument("--official-pythonpath",
                   default=os.environ.get("HYPERSTEER_OFFICIAL_PYTHONPATH"),
                   help="put first on the official run's path (transformers 4.45)")
    p.add_argument("--rows", type=int, default=200, help="Concept10 training rows")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: CPU time is then the work, whatever the load)")
    p.add_argument("--batch", type=int, default=SETUP["batch_size"])
    p.add_argument("--sides", nargs="+", default=["defaults", "plain"], choices=list(SIDES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default="tiny", choices=["tiny", "2b"],
                   help="tiny: issue 16's model (CPU); 2b: Gemma-2-2B's sizes (GPU)")
    p.add_argument("--pad-only", action="store_true",
                   help="print the pad fraction of Concept10 epochs, plain and bucketed, and stop")
    p.add_argument("--_run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pad_only:
        pad_table()
        return 0
    if args._run:
        C.quiet()
        torch.set_num_threads(args.threads)
        torch.manual_seed(SETUP["seed"])
        run = (run_official(Path(args.official), args)
               if args._run == "official" else run_ours(args._run, args))
        print(json.dumps(run))
        return 0

    sides = list(args.sides)
    args.official = official_path(args.official)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput_vs_official: --device cuda but no CUDA device: skipped")
        return 0
    if args.device == "cuda":
        args.official = None  # the official side runs on the CPU path only (see the docstring)
        print("throughput_vs_official: GPU run: our sides only, wall time")
    elif args.official is None:
        print("throughput_vs_official: no official HyperSteer checkout (--official or "
              "$HYPERSTEER_OFFICIAL, AxBench fork at c01a22a): timing our sides only")
    else:
        sides = ["official"] + sides
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    loads = [C.load()]
    for rep in range(args.reps):
        for side in (sides if rep % 2 == 0 else sides[::-1]):
            runs[side].append(one_run(side, args))
        loads.append(C.load())

    def per_token_us(r, key="cpu_seconds"):
        return 1e6 * r[key] / r["real_tokens"]

    ref = next(s for s in ("official", "plain", sides[0]) if s in runs)
    opts = {s: rs[0].get("prefix_cache", "-") for s, rs in runs.items()}
    print(f"{args.size} model on {args.device}, {args.rows} training rows x {args.epochs} "
          f"epochs, batch {args.batch}, "
          f"{args.threads} thread(s), {args.reps} interleaved runs per side, medians; "
          f"load averages (1/5/15 min) {' -> '.join(loads)}")
    print("CPU time of the training call (one thread: the work done, whatever the load), and "
          "wall time")
    print(f"{'side':24s} {'cpu s/step':>10s} {'cpu us/real tok':>15s} {'÷ ' + ref:>10s} "
          f"{'wall ÷ ' + ref:>14s} {'pad':>5s} {'peak RSS MB':>11s} {'cache':>6s}")
    for side, rs in runs.items():
        ratios = [per_token_us(a) / per_token_us(b) for a, b in zip(rs, runs[ref])]
        wall = [per_token_us(a, "seconds") / per_token_us(b, "seconds")
                for a, b in zip(rs, runs[ref])]
        print(f"{side:24s} {statistics.median(r['cpu_seconds'] / r['steps'] for r in rs):10.3f} "
              f"{statistics.median(map(per_token_us, rs)):15.1f} {statistics.median(ratios):10.2f} "
              f"{statistics.median(wall):14.2f} {rs[0]['pad_fraction']:5.2f} "
              f"{statistics.median(r['peak_rss_mb'] for r in rs):11.0f} {opts[side]:>6s}"
              + (f" peak GPU {max(r['peak_gpu_mb'] for r in rs):.0f} MB" if args.device == "cuda"
                 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
