"""Run AxBench's own scripts with HyperSteer registered: the ``torchrun`` target.

    python -m axbench_hypersteer.axbench train     --config <yaml> --dump_dir <dir> [AxBench flags]
    python -m axbench_hypersteer.axbench inference --config <yaml> --dump_dir <dir> --mode steering
    python -m axbench_hypersteer.axbench evaluate  --config <yaml> --dump_dir <dir> --mode steering
    torchrun --nproc_per_node=N -m axbench_hypersteer.axbench train --config ... --dump_dir ...

Every worker imports ``axbench`` (:class:`AxBenchNotInstalled` with the install line otherwise),
registers the three classes and their aliases on it, and validates the plugin's own keys of the
YAML with :func:`load_run_config`. ``--method hypersteer_xattn`` restricts the run to one variant
(other HyperSteer methods are dropped from the YAML handed to AxBench); every other flag goes to
AxBench unchanged.

* ``train``: trains each selected HyperSteer method of ``train.models`` ONCE over all concepts
  with our trainer (DDP under torchrun) on ``--overwrite_data_dir`` (else ``train.
  overwrite_data_dir``, else ``{dump_dir}/generate``), then runs AxBench's ``scripts/train.py``
  (``runpy``, with ``<axbench>/scripts`` on ``sys.path``) for the OTHER methods only, from a
  temporary copy of the YAML without HyperSteer methods; skipped when none remain. AxBench's
  ``train.py`` appends to ``train/metadata.jsonl``; rank 0 then drops duplicate concept lines.
  A held-out config (``hypersteer.eval_concepts``) refuses training data containing an
  evaluation concept.
* ``inference`` / ``evaluate``: check that every HyperSteer method to be steered has a
  checkpoint, then call ``axbench.scripts.inference.main()`` / ``axbench.scripts.evaluate.main()``
  unchanged, with ``sys.argv`` rewritten.

Patches (applied only when needed, all undone when :func:`main` returns):

1. ``axbench.models.sae.save_pruned_sae`` -> a no-op returning None (``train`` only, and only when
   no method whose name contains "sae" remains in ``train.models``): AxBench calls it on rank 0
   for every run, and it queries Neuronpedia and downloads GemmaScope weights.
2. ``LATENT_EXCLUDE_MODELS`` of ``axbench.scripts.inference`` (and of ``axbench.scripts.evaluate``
   when it holds its own set) gains our six names: HyperSteer has no latent predictions, and
   this also skips ``pre_compute_mean_activations``.
3. Only when ``torch.cuda.is_available()`` is False (``train`` and ``inference``; ``evaluate``
   runs on CPU as is):
   a. ``torch.distributed.init_process_group``: backend ``nccl`` becomes ``gloo``;
   b. ``torch.cuda.set_device`` becomes a no-op;
   c. ``cuda:N`` devices become ``cpu`` in AxBench's scripts, and only there: the least invasive
      place is the name ``torch`` that the scripts themselves see. ``inference.py``'s module
      global ``torch`` is swapped for a proxy whose ``device(...)`` maps CUDA to CPU (all other
      attributes are the real torch); ``train.py`` runs with its own ``__builtins__`` whose
      ``__import__`` hands it that proxy for ``import torch``. torch itself, AxBench's models and
      every other module are untouched; a script that writes a literal ``"cuda:0"`` string
      elsewhere is not covered.

Not a patch: outside torchrun (no ``RANK``) the single-process variables ``RANK=0``,
``WORLD_SIZE=1``, ``LOCAL_RANK=0``, ``MASTER_ADDR``, ``MASTER_PORT`` are set for AxBench's
``env://`` process group, and removed afterwards.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import runpy
import socket
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from ..model.config import ConfigError
from ..model.errors import MissingFileError
from ..model.fileio import atomic_write_text
from ..model.hypersteer import CONFIG_NAME
from ..stages import train_stage
from ..stages.run_config import (RunConfig, canonical_method, is_hypersteer_method,
                                   load_run_config)
from . import models as models_mod
from .registry import NAMES, import_axbench, register

logger = logging.getLogger(__name__)

STAGES = ("train", "inference", "evaluate")
_MISSING = object()


class CheckpointMissing(MissingFileError):
    """Inference was asked to steer with a HyperSteer method that was never trained."""


# ---------------------------------------------------------------------------------- patches

class Patcher:
    """Records every change it makes so :meth:`undo` restores the process exactly."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.applied: list[str] = []

    def setattr(self, obj: Any, name: str, value: Any, label: str | None = None) -> None:
        old = obj.__dict__.get(name, _MISSING) if isinstance(obj, types.ModuleType) \
            else getattr(obj, name, _MISSING)

        def restore() -> None:
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        setattr(obj, name, value)
        self._undo.append(restore)
        self.applied.append(label or f"{getattr(obj, '__name__', obj)}.{name}")

    def add_to_set(self, target: set, names: Sequence[str], label: str) -> None:
        added = [n for n in names if n not in target]
        target.update(added)
        self._undo.append(lambda: target.difference_update(added))
        self.applied.append(label)

    def setenv(self, key: str, value: str) -> None:
        old = os.environ.get(key)
        os.environ[key] = value
        self._undo.append(lambda: os.environ.__setitem__(key, old) if old is not None
                          else os.environ.pop(key, None))

    def replace_list(self, target: list, items: list) -> None:
        """Swap the contents of ``sys.argv`` / ``sys.path`` in place, restored later."""
        old = list(target)
        target[:] = items
        self._undo.append(lambda: target.__setitem__(slice(None), old))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


_REAL_DEVICE = torch.device


def _cpu_device(*args, **kwargs) -> torch.device:
    """``torch.device`` for AxBench's scripts on a machine without CUDA: CUDA -> CPU."""
    device = _REAL_DEVICE(*args, **kwargs)
    return _REAL_DEVICE("cpu") if device.type == "cuda" else device


class CpuTorch(types.ModuleType):
    """The torch module as AxBench's scripts see it without CUDA: ``device`` maps CUDA to CPU,
    every other attribute is the real torch's."""

    def __init__(self, real: types.ModuleType):
        super().__init__(real.__name__, real.__doc__)
        self.__dict__.update(_real=real, device=_cpu_device, __file__=real.__file__,
                             __spec__=real.__spec__, __path__=list(real.__path__))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_real"], name)


def _gloo_instead_of_nccl(original: Callable) -> Callable:
    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        if args and isinstance(args[0], str) and "nccl" in args[0].lower():
            args = ("gloo",) + args[1:]
        backend = kwargs.get("backend")
        if isinstance(backend, str) and "nccl" in backend.lower():
            kwargs["backend"] = "gloo"
        return original(*args, **kwargs)
    init_process_group.__hypersteer_patch__ = True
    return init_process_group


def _no_set_device(*args, **kwargs) -> None:
    return None


def _no_pruned_sae(*args, **kwargs) -> None:
    return None


def script_builtins(proxy: types.ModuleType) -> dict:
    """A ``__builtins__`` dict whose ``__import__`` returns ``proxy`` where the real torch would
    be bound: given to one script through ``runpy``'s ``init_globals``, it reaches that script's
    ``import torch`` and nothing else."""
    import builtins

    real_import = builtins.__import__
    real_torch = proxy.__dict__["_real"]

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        module = real_import(name, globals, locals, fromlist, level)
        return proxy if module is real_torch else module

    table = dict(vars(builtins))
    table["__import__"] = _import
    return table


def cpu_patches(patcher: Patcher, modules: Sequence[types.ModuleType] = ()) -> CpuTorch | None:
    """Patch 3 of the module docstring; returns the torch proxy (None when CUDA exists)."""
    if torch.cuda.is_available():
        return None
    import torch.distributed as dist

    if not getattr(dist.init_process_group, "__hypersteer_patch__", False):
        patcher.setattr(dist, "init_process_group",
                        _gloo_instead_of_nccl(dist.init_process_group),
                        "torch.distributed.init_process_group: nccl -> gloo")
    patcher.setattr(torch.cuda, "set_device", _no_set_device, "torch.cuda.set_device: no-op")
    proxy = CpuTorch(torch)
    for module in modules:
        if module.__dict__.get("torch") is torch:
            patcher.setattr(module, "torch", proxy, f"{module.__name__}.torch.device: cuda -> cpu")
    return proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env(patcher: Patcher) -> None:
    """AxBench's scripts join an ``env://`` process group; give a plain ``python -m`` run one."""
    if "RANK" in os.environ:
        return
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        patcher.setenv(key, value)
    if "MASTER_PORT" not in os.environ:
        patcher.setenv("MASTER_PORT", str(_free_port()))


def exclude_from_latent(patcher: Patcher, modules: Sequence[types.ModuleType]) -> None:
    seen: list[int] = []
    for module in modules:
        target = module.__dict__.get("LATENT_EXCLUDE_MODELS")
        if isinstance(target, set) and id(target) not in seen:
            seen.append(id(target))
            patcher.add_to_set(target, sorted(NAMES),
                               f"{module.__name__}.LATENT_EXCLUDE_MODELS += HyperSteer")
        elif target is not None and not isinstance(target, set):
            logger.warning("%s.LATENT_EXCLUDE_MODELS is a %s, not a set; not patched",
                           module.__name__, type(target).__name__)


# ---------------------------------------------------------------------------------- config

def _model_names(section: dict | None) -> list[str]:
    models = (section or {}).get("models") or []
    return list(models) if isinstance(models, (list, dict)) else []


def filtered_config(run: RunConfig, drop_train: set[str], keep_hypersteer: set[str] | None,
                    tmp_files: list[Path]) -> str:
    """The YAML path to hand AxBench: the original, or a temporary copy with HyperSteer methods
    removed from ``train.models`` (canonical names in ``drop_train``) and, when
    ``keep_hypersteer`` is given, every other HyperSteer method removed from
    ``inference.models`` / ``evaluate.models``."""
    raw = json.loads(json.dumps(run.raw))  # a deep copy of plain YAML data
    changed = False
    train = raw.get("train") or {}
    models = train.get("models")
    if isinstance(models, dict):
        kept = {k: v for k, v in models.items()
                if not (is_hypersteer_method(k) and canonical_method(k) in drop_train)}
    else:
        kept = [k for k in models or []
                if not (is_hypersteer_method(k) and canonical_method(k) in drop_train)]
    if len(kept) != len(models or []):
        train["models"], changed = kept, True
    if keep_hypersteer is not None:
        for section in ("inference", "evaluate"):
            names = (raw.get(section) or {}).get("models")
            if not isinstance(names, list):
                continue
            kept_names = [n for n in names if not is_hypersteer_method(n)
                          or canonical_method(n) in keep_hypersteer]
            if kept_names != names:
                raw[section]["models"], changed = kept_names, True
    if not changed:
        return run.path
    fd, tmp = tempfile.mkstemp(prefix="hypersteer_axbench_", suffix=".yaml")
    os.close(fd)
    Path(tmp).write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp_files.append(Path(tmp))
    return tmp


def dedupe_metadata(path: Path) -> int:
    """Keep the first line of each concept_id in ``train/metadata.jsonl``; returns lines dropped.
    (AxBench's train.py appends to the file our trainer already wrote.)"""
    if not path.exists():
        return 0
    kept, seen = [], set()
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in lines:
        key = json.loads(line).get("concept_id", line)
        if key not in seen:
            seen.add(key)
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


# ---------------------------------------------------------------------------------- stages

def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m axbench_hypersteer.axbench", allow_abbrev=False,
        description="Run AxBench's train/inference/evaluate with HyperSteer registered; flags "
                    "not listed here go to AxBench unchanged.")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", required=True, help="AxBench-format sweep YAML")
    parser.add_argument("--dump_dir", required=True)
    parser.add_argument("--method", default=None,
                        help="one HyperSteer method, e.g. hypersteer_xattn (default: all listed)")
    args, rest = parser.parse_known_args(list(argv))
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--overwrite_data_dir", "--mode", "--train_dir"):
        peek.add_argument(flag, default=None)
    seen, _ = peek.parse_known_args(rest)
    return args, rest, seen


def _axbench_argv(script: str, config: str, dump_dir: str, rest: list[str]) -> list[str]:
    return [script, "--config", config, "--dump_dir", dump_dir, *rest]


def train_data_dir(run: RunConfig, dump_dir: Path, overwrite: str | None) -> Path:
    """AxBench's rule: ``--overwrite_data_dir`` (CLI, else YAML) else ``{dump_dir}/generate``;
    a given directory that does not exist is an error here (AxBench would silently fall back)."""
    given = overwrite or (run.raw.get("train") or {}).get("overwrite_data_dir")
    if given:
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"overwrite_data_dir {path} does not exist")
        return path
    return dump_dir / "generate"


def launch_train(axbench: types.ModuleType, run: RunConfig, selected: list[str],
              args: argparse.Namespace, rest: list[str], seen: argparse.Namespace,
              patcher: Patcher, tmp_files: list[Path]) -> None:
    dump_dir = Path(args.dump_dir)
    data_dir = train_data_dir(run, dump_dir, seen.overwrite_data_dir)
    if selected:
        models_mod.check_no_eval_concepts(run, data_dir)
    for name in selected:
        train_stage.train_method(run, run.methods[name], data_dir, dump_dir)
    skipped = sorted(set(run.methods) - set(selected))
    if skipped:
        logger.info("not training %s (--method %s)", skipped, args.method)
    if not run.other_methods:
        logger.info("no other methods in train.models; AxBench's train.py is not run")
        return
    config = filtered_config(run, set(run.methods), None, tmp_files)
    if not any("sae" in m.lower() for m in run.other_methods):
        try:
            sae = importlib.import_module("axbench.models.sae")
            patcher.setattr(sae, "save_pruned_sae", _no_pruned_sae,
                            "axbench.models.sae.save_pruned_sae: no-op")
        except ImportError as err:
            logger.warning("axbench.models.sae not importable (%s); not patched", err)
    scripts = Path(axbench.__file__).resolve().parent / "scripts"
    train_py = scripts / "train.py"
    if not train_py.is_file():
        raise MissingFileError(f"{train_py}: AxBench's train script not found")
    proxy = cpu_patches(patcher)
    single_process_env(patcher)
    patcher.replace_list(sys.path, [str(scripts)] + [p for p in sys.path if p != str(scripts)])
    patcher.replace_list(sys.argv, _axbench_argv(str(train_py), config, args.dump_dir, rest))
    init_globals = {"__builtins__": script_builtins(proxy)} if proxy is not None else None
    logger.info("AxBench train.py for %s (patches: %s)", run.other_methods, patcher.applied)
    runpy.run_path(str(train_py), init_globals=init_globals, run_name="__main__")
    if int(os.environ.get("RANK", 0)) == 0:
        dropped = dedupe_metadata(dump_dir / "train" / "metadata.jsonl")
        if dropped:
            logger.info("dropped %d duplicate lines from train/metadata.jsonl", dropped)


def _steered_methods(run: RunConfig, config: str) -> list[str]:
    raw = yaml.safe_load(Path(config).read_text()) if config != run.path else run.raw
    return [canonical_method(n) for n in _model_names(raw.get("inference"))
            if is_hypersteer_method(n)]


def launch_inference(axbench: types.ModuleType, run: RunConfig, selected: list[str],
                  args: argparse.Namespace, rest: list[str], seen: argparse.Namespace,
                  patcher: Patcher, tmp_files: list[Path]) -> None:
    config = filtered_config(run, set(), set(selected) if args.method else None, tmp_files)
    mode = seen.mode or "all"
    train_dir = Path(seen.train_dir or (run.raw.get("inference") or {}).get("train_dir")
                     or Path(args.dump_dir) / "train")
    if mode in ("steering", "all"):
        for name in _steered_methods(run, config):
            if not (train_dir / name / CONFIG_NAME).exists():
                raise CheckpointMissing(
                    f"no trained HyperSteer checkpoint at {train_dir / name}; run train first: "
                    f"python -m axbench_hypersteer.axbench train --config {args.config} "
                    f"--dump_dir {args.dump_dir}")
    if "OPENAI_API_KEY" not in os.environ:
        logger.warning("OPENAI_API_KEY is unset: AxBench's inference builds an OpenAI client "
                       "and fails without it (any value works when no prompt steering runs)")
    inference = importlib.import_module("axbench.scripts.inference")
    exclude_from_latent(patcher, [inference])
    cpu_patches(patcher, [inference])
    single_process_env(patcher)
    patcher.replace_list(sys.argv, _axbench_argv(inference.__file__, config, args.dump_dir, rest))
    logger.info("AxBench inference (patches: %s)", patcher.applied)
    inference.main()


def launch_evaluate(axbench: types.ModuleType, run: RunConfig, selected: list[str],
                 args: argparse.Namespace, rest: list[str], seen: argparse.Namespace,
                 patcher: Patcher, tmp_files: list[Path]) -> None:
    config = filtered_config(run, set(), set(selected) if args.method else None, tmp_files)
    if (seen.mode or "all") == "all":
        logger.warning("AxBench's evaluate --mode all fails on its steering half; run --mode "
                       "steering (factor selection) and --mode steering_test (report)")
    evaluate = importlib.import_module("axbench.scripts.evaluate")
    modules = [evaluate]
    if "axbench.scripts.inference" in sys.modules:
        modules.append(sys.modules["axbench.scripts.inference"])
    exclude_from_latent(patcher, modules)
    patcher.replace_list(sys.argv, _axbench_argv(evaluate.__file__, config, args.dump_dir, rest))
    logger.info("AxBench evaluate (patches: %s)", patcher.applied)
    evaluate.main()


RUNNERS = {"train": launch_train, "inference": launch_inference, "evaluate": launch_evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    args, rest, seen = _parse(sys.argv[1:] if argv is None else argv)
    axbench = import_axbench()
    register(axbench)
    run = load_run_config(args.config)
    selected = [run.method(args.method).name] if args.method else list(run.methods)
    previous = models_mod._CONFIG_PATH
    models_mod.configure(args.config)
    patcher, tmp_files = Patcher(), []
    try:
        RUNNERS[args.stage](axbench, run, selected, args, rest, seen, patcher, tmp_files)
    finally:
        patcher.undo()
        models_mod.configure(previous)
        for path in tmp_files:
            path.unlink(missing_ok=True)
    return 0
