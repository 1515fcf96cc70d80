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
    "HyperSteer": ".model.hypersteer",
    "SteeredOutput": ".model.hypersteer",
    "HyperSteerConfig": ".model.config",
    "TrainConfig": ".model.config",
    "HyperNetwork": ".model.hypernet",
    "Steerer": ".model.steering",
    "SteeringSource": ".model.steering",
    "SteeringCollator": ".model.collate",
    "load_base": ".model.loading",
    "Trainer": ".train.trainer",
    "HyperSteerError": ".model.errors",
    "ConfigError": ".model.errors",
    "DataError": ".model.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .model.collate import SteeringCollator
    from .model.config import HyperSteerConfig, TrainConfig
    from .model.errors import ConfigError, DataError, HyperSteerError
    from .model.hypernet import HyperNetwork
    from .model.hypersteer import HyperSteer, SteeredOutput
    from .model.loading import load_base
    from .model.steering import Steerer, SteeringSource
    from .train.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
