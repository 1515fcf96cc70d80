"""The ``hypersteer`` command: thin dispatch to each stage's ``main``.

    hypersteer demo       train → sweep → judge → report on the built-in tiny model and data
    hypersteer real       the held-out experiment on a real LM (SmolLM2-135M-Instruct), with baselines
    hypersteer split      held-in / held-out training data
    hypersteer train      one hypernetwork over all concepts
    hypersteer inference  steering-factor sweep → inference/steering_data.parquet
    hypersteer evaluate   LLM judge → evaluate/{mode}.jsonl
    hypersteer steering-loss  judge-free: steered loss on reference answers per factor
    hypersteer report     best factor on `steering`, score on `steering_test`, tables and plots
    hypersteer plan       per-GPU memory of ddp/fsdp x adamw/adamw8bit for a config
    hypersteer serve      OpenAI-compatible server, steered by a sentence per request
    hypersteer vectors    export steering vectors (safetensors, or a llama.cpp control vector)
    hypersteer --version

Errors a user can fix (bad config, bad data, missing checkpoint, judge unreachable: every
``HyperSteerError``) are printed as one line naming the file or key, with exit status 2, instead
of a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable

from . import __version__

COMMANDS = {
    "demo": "axbench_hypersteer.demo.run",
    "real": "axbench_hypersteer.real.run",
    "split": "axbench_hypersteer.stages.splits",
    "train": "axbench_hypersteer.stages.train_stage",
    "inference": "axbench_hypersteer.stages.inference_stage",
    "evaluate": "axbench_hypersteer.stages.evaluate",
    "steering-loss": "axbench_hypersteer.stages.steering_loss",
    "report": "axbench_hypersteer.stages.report",
    "plan": "axbench_hypersteer.stages.plan",
    "serve": "axbench_hypersteer.serve.cli",
    "vectors": "axbench_hypersteer.serve.vectors",
}


# Top-level modules of each setup.py extra: a missing one gets the install line, not a traceback.
EXTRAS = {"pipeline": ("pandas", "pyarrow", "matplotlib", "openai"),
          "serve": ("fastapi", "uvicorn", "gguf")}


def run_command(prog: str, entry: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run one command's ``main``; a :class:`HyperSteerError` becomes one stderr line and exit
    status 2 (the user can fix it), anything else keeps its traceback (a bug). Shared by
    ``hypersteer``, ``python -m axbench_hypersteer.experiments`` and ``...axbench``."""
    from .model.errors import HyperSteerError

    try:
        return int(entry(argv) or 0)
    except HyperSteerError as err:
        print(f"{prog}: error: {err}" if prog else f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # the core install is the model alone (setup.py extras)
        extra = next((name for name, modules in EXTRAS.items() if err.name in modules), None)
        if extra is None:
            raise
        print(f"{prog or 'hypersteer'}: error: this command needs {err.name!r}: "
              f"pip install 'axbench-hypersteer[{extra}]'", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"hypersteer {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.split("\n\n")[1])
        if argv and argv[0] not in ("-h", "--help"):
            print(f"hypersteer: error: unknown command {argv[0]!r} "
                  f"(commands: {', '.join(COMMANDS)})", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=os.environ.get("HYPERSTEER_LOG", "INFO"),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):  # one line per judge request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers imports torchao (the `.[scale]` extra) whenever it is installed, and its
    # import warns about GPU kernels a CPU wheel lacks: lines ahead of every error, for nothing.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    def entry(args: list[str]) -> int | None:  # imported inside: a missing extra is caught
        return importlib.import_module(COMMANDS[argv[0]]).main(args)

    return run_command(f"hypersteer {argv[0]}", entry, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
