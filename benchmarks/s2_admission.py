"""S2's gap, in-process: the cost of admitting 32 requests into the serve engine one at a time (as
closed-loop clients arrive at a running batch) against as one group, steered and plain.

Admission is ``InputProcessor.prepare`` (tokenising; for steered requests the vector: the
cross-attention variant runs blocks 0..l of the base over the prompt, then the hypernetwork) and
``Executor.prefill`` (the prompt forward). Each of the 32 requests names its own steering prompt,
as in ``s_serve_load.py``. CPU time on one thread, median of ``--reps`` runs after a warm-up.

    python benchmarks/s2_admission.py --hypernet dumps/demo/train/HyperSteerXAttn [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402,F401  (offline environment; the repo on sys.path)


def cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def main(argv: list[str] | None = None) -> int:
    from axbench_hypersteer.serve.executor import Executor
    from axbench_hypersteer.serve.inputs import InputProcessor
    from axbench_hypersteer.serve.jobs import Job, Sampling, Steering
    from axbench_hypersteer.serve.loading import load_hypersteer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hypernet", required=True, help="a trained DUMP/train/<Method>")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    hs = load_hypersteer(args.hypernet)
    inputs, executor = InputProcessor(hs), Executor(hs.steerer, hs.tokenizer.pad_token_id)

    def jobs(steered: bool) -> list[Job]:
        return [Job([{"role": "user", "content": f"Write a short note about topic {i}."}],
                    Steering((f"references to thing {i}",), 1.0) if steered else Steering(),
                    Sampling(max_tokens=8), lambda event: None, id=str(i))
                for i in range(args.requests)]

    def measure(steered: bool) -> dict[str, float]:
        one = [r for job in jobs(steered) for r in inputs.prepare([job])]
        group = inputs.prepare(jobs(steered))
        return {"prepare 1-by-1": cpu_ms(lambda: [inputs.prepare([j]) for j in jobs(steered)]),
                "prefill 1-by-1": cpu_ms(lambda: [executor.prefill([r]) for r in one]),
                "prepare grouped": cpu_ms(lambda: inputs.prepare(jobs(steered))),
                "prefill grouped": cpu_ms(lambda: executor.prefill(group))}

    with torch.no_grad():
        measure(True), measure(False)  # warm-up
        runs = {side: [measure(side) for _ in range(args.reps)] for side in (True, False)}
    parts = []
    for side, name in ((True, "steered"), (False, "plain")):
        med = {k: statistics.median(r[k] for r in runs[side]) for k in runs[side][0]}
        parts.append(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items()))
    print(f"S2 admission of {args.requests} requests, CPU ms on 1 thread, median of {args.reps}: "
          + "; ".join(parts) + f" | load {C.load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
