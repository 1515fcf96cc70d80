"""Put the HyperSteer classes where AxBench looks for methods: attributes of the ``axbench`` module.

AxBench has no registry and no entry points; ``train.py`` and ``inference.py`` resolve a YAML
method name with ``getattr(axbench, name)`` at call time. :func:`register` therefore sets our
three classes and their snake_case aliases on the module object, in the process that will run
AxBench's script (every ``torchrun`` worker: registration does not cross process boundaries).
"""

from __future__ import annotations

import importlib
import types

from ..model.errors import HyperSteerError
from ..stages.run_config import METHOD_ALIASES
from .models import HyperSteerInContext, HyperSteerNoContext, HyperSteerXAttn

INSTALL_HINT = (
    "AxBench is not on PyPI and declares Python >= 3.12. Install pyreft first WITHOUT its "
    "dependencies (with them pip backtracks into gigabytes of CUDA wheels), then AxBench:\n"
    "    pip install --no-deps pyreft==0.1.0\n"
    '    pip install -c constraints.txt --ignore-requires-python '
    '"axbench @ git+https://github.com/stanfordnlp/axbench"\n'
    "If pip still tries to resolve pyreft's own pins, add --no-deps to the second line and "
    "install what `import axbench` needs: pip install -c constraints.txt peft wandb "
    "scikit-learn einops seaborn plotnine jinja2"
)

CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (HyperSteerNoContext, HyperSteerInContext, HyperSteerXAttn)
}
# Every name AxBench may be given in a YAML -> our class.
NAMES: dict[str, type] = {**CLASSES,
                          **{alias: CLASSES[name] for alias, name in METHOD_ALIASES.items()}}


class AxBenchNotInstalled(HyperSteerError, ImportError):
    """``import axbench`` failed; the message says how to install it."""


class RegistryError(HyperSteerError, RuntimeError):
    """Registering would overwrite a different attribute of the ``axbench`` module."""


class UnknownMethodError(HyperSteerError, LookupError):
    """A method name that is not one of ours (the message lists the known names)."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


def import_axbench() -> types.ModuleType:
    """``import axbench``, or :class:`AxBenchNotInstalled` with the install instructions."""
    try:
        return importlib.import_module("axbench")
    except ImportError as err:
        if err.name == "axbench":
            reason = "the axbench package is not installed"
        else:
            reason = (f"axbench is installed but importing it failed ({type(err).__name__}: "
                      f"{err}); one of its dependencies is missing")
        raise AxBenchNotInstalled(f"{reason}.\n{INSTALL_HINT}") from err


def _ours(existing: object, cls: type) -> bool:
    """The same class, or the same class from a re-imported copy of our module."""
    return existing is cls or (
        isinstance(existing, type)
        and existing.__module__ == cls.__module__
        and existing.__qualname__ == cls.__qualname__
    )


def register(axbench_module: types.ModuleType | None = None) -> types.ModuleType:
    """Set ``HyperSteerNoContext``, ``HyperSteerInContext``, ``HyperSteerXAttn`` and the aliases
    ``hypersteer_nocontext``, ``hypersteer_incontext``, ``hypersteer_xattn`` on ``axbench``.

    Idempotent. Raises :class:`RegistryError` (and sets nothing) if any of those names already
    holds something else. ``axbench_module`` defaults to ``import axbench``.
    """
    module = import_axbench() if axbench_module is None else axbench_module
    missing = object()
    clashes = []
    for name, cls in NAMES.items():
        existing = getattr(module, name, missing)
        if existing is not missing and not _ours(existing, cls):
            clashes.append(f"{name} (holds {existing!r})")
    if clashes:
        raise RegistryError(f"{module.__name__} already defines {', '.join(clashes)}; refusing "
                            "to overwrite it with a HyperSteer class")
    for name, cls in NAMES.items():
        setattr(module, name, cls)
    return module


def known_names() -> list[str]:
    return sorted(NAMES)


def lookup(name: str, axbench_module: types.ModuleType | None = None) -> type:
    """The class for ``name`` (class name or alias).

    With ``axbench_module``, resolve exactly as AxBench's scripts do (``getattr`` on the module),
    so a test can check what AxBench will get; without it, from our own table.
    """
    if axbench_module is not None:
        found = getattr(axbench_module, name, None)
        if isinstance(found, type):
            return found
    elif name in NAMES:
        return NAMES[name]
    where = f" on module {axbench_module.__name__!r}" if axbench_module is not None else ""
    raise UnknownMethodError(f"unknown method {name!r}{where}; HyperSteer names are "
                             f"{known_names()}")
