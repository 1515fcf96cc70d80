"""Entry point: ``python -m axbench_hypersteer.axbench {train,inference,evaluate} --config <yaml>
--dump_dir <dir>`` (also the ``torchrun`` target); see :mod:`axbench_hypersteer.axbench.launcher`.
"""

import logging
import sys

from ..cli import run_command
from .launcher import main


def _run() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command("", lambda argv: main(), sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_run())
