"""HyperSteer inside AxBench: Model classes, their registration on ``axbench``, and a launcher.

    python -m axbench_hypersteer.axbench {train,inference,evaluate} --config <yaml> --dump_dir <dir>

(also the ``torchrun`` target). See :mod:`.launcher` for what it patches in AxBench.
"""

from .models import (HyperSteerInContext, HyperSteerModel, HyperSteerNoContext, HyperSteerXAttn,
                     clear_cache, configure, load_trained_method)
from .registry import (AxBenchNotInstalled, RegistryError, UnknownMethodError, import_axbench,
                       known_names, lookup, register)

__all__ = ["AxBenchNotInstalled", "HyperSteerInContext", "HyperSteerModel", "HyperSteerNoContext",
           "HyperSteerXAttn", "RegistryError", "UnknownMethodError", "clear_cache", "configure",
           "import_axbench", "known_names", "load_trained_method", "lookup", "register"]
