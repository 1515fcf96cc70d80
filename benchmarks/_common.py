"""Shared pieces of the P-benchmarks: offline setup, model builders, Concept10 data, and timing
that interleaves the sides being compared (so load drift on a shared machine hits both)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as `python benchmarks/x.py` without an install

from axbench_hypersteer.model.config import HyperSteerConfig  # noqa: E402
from axbench_hypersteer.model.hypersteer import HyperSteer  # noqa: E402

CONCEPT10 = ROOT.parent / "shared" / "axbench-data" / "concept10" / "prod_2b_l20_v1" / "generate"
DEMO_PROMPTS = ROOT / "axbench_hypersteer" / "resources" / "demo_prompts.json"

# name -> (hidden, layers, heads, steering layer, hypernet blocks). Steering layer and hypernet
# depth keep the paper's proportions where the brief does not fix them (Gemma-2-2B: layer 20 of
# 26, 22 hypernet blocks).
MODELS = {
    "tiny": (256, 6, 4, 3, 5),
    "mid": (640, 10, 8, 7, 8),
    "2b": (2304, 26, 8, 20, 22),  # Gemma-2-2B's real sizes (Gemma2Config defaults): GPU only
}

# Real pretrained models (a GGUF inside a PyPI wheel, de-quantised once by load_base) -> (steering
# layer, hypernet blocks): SmolLM2's 30 blocks steered at 10 with 4 hypernet blocks, the setting
# of ../shared/docs/real-lm-checked.md. The hypernetwork stays untrained: timings do not need it.
REAL_MODELS = {"smollm2-135m-instruct": (10, 4)}


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def building_on(device, dtype: torch.dtype) -> Iterator[None]:
    """Create modules directly on ``device`` in ``dtype``: a 2B model is never materialised in
    fp32 on the CPU first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def gemma2_2b_config(**overrides):
    """Gemma-2-2B's sizes (transformers' Gemma2Config defaults), eager attention as everywhere in
    the package (Gemma-2's soft-capping)."""
    from transformers import Gemma2Config

    cfg = Gemma2Config(**overrides)
    cfg._attn_implementation = "eager"
    return cfg


def build(name: str, tokenizer, backend: str = "pyvene", seed: int = 0,
          device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(base model, HyperSteer) for a named size: random Gemma-2 in eval mode, built directly on
    ``device`` in ``dtype``; the hypernetwork is built on the same device, in its config's dtype
    (fp32 by default, as in training)."""
    from axbench_hypersteer.testing.tiny import build_tiny_gemma2

    hidden, layers, heads, layer, blocks = MODELS[name]
    with building_on(device, dtype):
        if name == "2b":
            from transformers import Gemma2ForCausalLM

            torch.manual_seed(seed)
            model = Gemma2ForCausalLM(gemma2_2b_config(
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        else:
            model = build_tiny_gemma2(tokenizer, hidden_size=hidden, num_layers=layers,
                                      num_heads=heads, seed=seed)
        hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(
            variant="xattn", steering_layer=layer, num_blocks=blocks,
            cross_attention_heads=heads), backend=backend)
    return model, hs


def build_any(name: str, backend: str = "pyvene", seed: int = 0, device: str = "cpu",
              dtype: torch.dtype = torch.float32):
    """(base model, HyperSteer, tokenizer) for a random size of :data:`MODELS` (tiny tokenizer)
    or a real model of :data:`REAL_MODELS` (its own tokenizer; the hypernetwork seeded, untrained,
    in its config's dtype)."""
    if name in REAL_MODELS:
        from axbench_hypersteer.model.loading import load_base

        model, tokenizer = load_base(name, dtype=dtype, device=device)
        layer, blocks = REAL_MODELS[name]
        torch.manual_seed(seed)
        with torch.device(device):
            hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(
                variant="xattn", steering_layer=layer, num_blocks=blocks), backend=backend)
        return model.eval(), hs, tokenizer
    from axbench_hypersteer.testing.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model, hs = build(name, tokenizer, backend=backend, seed=seed, device=device, dtype=dtype)
    return model, hs, tokenizer


def describe(name: str, model) -> str:
    """Short tag of a model for the one-line results: sizes, steering layer, hypernet blocks."""
    if name in REAL_MODELS:
        layer, blocks = REAL_MODELS[name]
        cfg = model.config
        return f"{name}(d{cfg.hidden_size},L{cfg.num_hidden_layers},l{layer},N{blocks})"
    h, n, _, layer, blocks = MODELS[name]
    return f"{name}(d{h},L{n},l{layer},N{blocks})"


def concept10():
    """(concepts, positive training rows) of AxBench's Concept10 when ../shared has it, else the
    built-in demo dataset (same format)."""
    import pandas as pd

    if (CONCEPT10 / "train_data.parquet").exists():
        meta = [json.loads(x) for x in (CONCEPT10 / "metadata.jsonl").read_text().splitlines()
                if x.strip()]
        frame = pd.read_parquet(CONCEPT10 / "train_data.parquet")
    else:
        from axbench_hypersteer.demo.data import build_frames

        frame, meta = build_frames()
    names = {int(m["concept_id"]): m["concept"] for m in meta}
    frame = frame[frame["category"] == "positive"]
    rows = [{"concept_id": int(r.concept_id), "concept": names[int(r.concept_id)],
             "input": r.input, "output": r.output} for r in frame.itertuples(index=False)]
    return [names[k] for k in sorted(names)], rows


def demo_prompts() -> list[str]:
    return [x["instruction"] for x in json.loads(DEMO_PROMPTS.read_text())]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def wait_for_quiet(threshold: float, max_wait: float, poll: float = 30.0) -> None:
    """Block until the 1-minute load average drops below ``threshold`` (or ``max_wait`` s pass)."""
    start = time.monotonic()
    while os.getloadavg()[0] >= threshold and time.monotonic() - start < max_wait:
        time.sleep(poll)


def interleaved(sides: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Times of each side (wall, or ``clock``), run alternately (A B C, then C B A, ...)
    ``reps`` times each."""
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = clock()
            sides[n]()
            times[n].append(clock() - t0)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median of the per-repetition ratios (each pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def common_args(parser, reps: int) -> None:
    parser.add_argument("--reps", type=int, default=reps, help="timed repetitions per side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: least noise on a shared machine)")
    parser.add_argument("--wait-load", type=float, default=0.0,
                        help="first wait until the 1-min load average is below this (0: don't)")
    parser.add_argument("--max-wait", type=float, default=2400.0)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time each side by this process's CPU time instead of wall time "
                             "(on a saturated machine, where waiting for a core dominates)")


def clock(args) -> Callable[[], float]:
    return time.process_time if getattr(args, "cpu_time", False) else time.perf_counter


def start(args) -> None:
    quiet()
    torch.set_num_threads(args.threads)
    if args.wait_load > 0:
        wait_for_quiet(args.wait_load, args.max_wait)


def timed_training(hs, frame, options: dict, batch: int, epochs: int, seed: int, cuda: bool,
                   prepare: Callable[[object], None] | None = None) -> dict:
    """One training run of ``hs`` on ``frame`` at lr 8e-5, timed from the trainer's construction
    (the length pass that bucketing and the prefix cache need is part of what they cost), in a
    scratch checkpoint directory. ``prepare(trainer)`` runs before training, inside the clock.
    Returns wall and CPU seconds, the run's result, real (non-pad) tokens, pad fraction and the
    prefix-cache mode the trainer resolved."""
    import tempfile

    from axbench_hypersteer.model.config import TrainConfig
    from axbench_hypersteer.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        trainer = Trainer(hs, frame, TrainConfig(
            batch_size=batch, n_epochs=epochs, lr=8e-5, dev_examples=0, eval_every=10**6,
            checkpoint_every=10**6, log_every=10**6, seed=seed, **options), tmp,
            progress=False, use_bf16=cuda)
        if prepare is not None:
            prepare(trainer)
        result = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        lengths = trainer.collate.lengths(trainer.train_set.rows)[1]
        return {"seconds": seconds, "cpu_seconds": cpu, "result": result,
                "real_tokens": epochs * sum(lengths), "pad": trainer.pad_fraction(),
                "cache": trainer.prefix_cache_mode}
