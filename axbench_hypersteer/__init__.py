"""HyperSteer for AxBench: one hypernetwork that turns a steering prompt into a steering vector.

The public API is importable from here; each name is loaded on first use, so ``import
axbench_hypersteer`` (and ``hypersteer --help``) does not import torch::

    from axbench_hypersteer import HyperSteer, HyperSteerConfig, load_base
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_EXPORTS = {
    "HyperSteer": ".core.hypersteer",
    "SteeredOutput": ".core.hypersteer",
    "HyperSteerConfig": ".core.config",
    "TrainConfig": ".core.config",
    "HyperNetwork": ".core.hypernet",
    "Steerer": ".core.steering",
    "SteeringSource": ".core.steering",
    "SteeringCollator": ".core.collate",
    "load_base": ".core.loading",
    "Trainer": ".pipeline.trainer",
    "HyperSteerError": ".core.errors",
    "ConfigError": ".core.errors",
    "DataError": ".core.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .core.collate import SteeringCollator
    from .core.config import HyperSteerConfig, TrainConfig
    from .core.errors import ConfigError, DataError, HyperSteerError
    from .core.hypernet import HyperNetwork
    from .core.hypersteer import HyperSteer, SteeredOutput
    from .core.loading import load_base
    from .core.steering import Steerer, SteeringSource
    from .pipeline.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
