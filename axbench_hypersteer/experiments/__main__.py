"""``python -m axbench_hypersteer.experiments <name> ...``: dispatch to one experiment's ``main``."""

from __future__ import annotations

import importlib
import logging
import os
import sys

from . import EXPERIMENTS, __doc__ as PACKAGE_DOC


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in EXPERIMENTS:
        print(PACKAGE_DOC)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"experiments: unknown experiment {argv[0]!r}; known: {sorted(EXPERIMENTS)}",
                  file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=os.environ.get("HYPERSTEER_LOG", "INFO"),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ..cli import run_command

    module = importlib.import_module(EXPERIMENTS[argv[0]])
    return run_command(f"experiments {argv[0]}", module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
