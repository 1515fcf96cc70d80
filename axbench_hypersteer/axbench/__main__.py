"""Entry point: ``python -m axbench_hypersteer.axbench {train,inference,evaluate} --config <yaml>
--dump_dir <dir>`` (also the ``torchrun`` target); see :mod:`axbench_hypersteer.axbench.launcher`.
"""

import logging
import sys

from ..core.config import ConfigError
from ..core.errors import DataError
from .launcher import CheckpointMissing, main
from .registry import AxBenchNotInstalled, RegistryError


def _run() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return main()
    except (AxBenchNotInstalled, CheckpointMissing, ConfigError, DataError, RegistryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_run())
