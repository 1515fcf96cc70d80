"""The public API at the package's top level, the one error base, and ``--version``."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import axbench_hypersteer
from axbench_hypersteer import cli
from axbench_hypersteer.model.errors import DataError, HyperSteerError

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_importing_the_package_and_help_stay_torch_free(argv):
    modules = _modules_after(f"from axbench_hypersteer import cli; cli.main({argv!r})")
    assert not [m for m in modules if m.split(".")[0] in ("torch", "transformers", "pandas")]


def test_version_flag_prints_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hypersteer {axbench_hypersteer.__version__}"


def test_every_public_name_resolves_to_its_defining_object():
    assert "HyperSteer" in axbench_hypersteer.__all__
    for name in axbench_hypersteer.__all__:
        value = getattr(axbench_hypersteer, name)
        if name != "__version__":
            assert value.__name__ == name and value.__module__.startswith("axbench_hypersteer.")
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.train.trainer import Trainer

    assert axbench_hypersteer.HyperSteer is HyperSteer and axbench_hypersteer.Trainer is Trainer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        axbench_hypersteer.nope  # noqa: B018


def test_star_import_gives_the_documented_names():
    namespace: dict = {}
    exec("from axbench_hypersteer import *", namespace)
    for name in ("HyperSteer", "HyperSteerConfig", "TrainConfig", "Trainer", "Steerer",
                 "load_base", "HyperSteerError"):
        assert name in namespace


def _package_exception_classes() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(axbench_hypersteer.__path__, "axbench_hypersteer."):
        if info.name.endswith("__main__") or ".testing." in info.name:
            continue
        module = importlib.import_module(info.name)
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, BaseException) and obj.__module__ == info.name
                  and not obj.__name__.startswith("_")]
    return found


def test_every_public_exception_derives_from_hypersteer_error():
    classes = _package_exception_classes()
    assert len(classes) >= 10  # the scan found the package's errors (and so can fail)
    assert [c.__qualname__ for c in classes if not issubclass(c, HyperSteerError)] == []


def test_errors_keep_their_builtin_base():
    """Callers that caught ValueError / FileNotFoundError before the common base still do."""
    from axbench_hypersteer.model.errors import ConfigError, MissingFileError

    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError)


def test_the_cli_turns_a_hypersteer_error_into_one_line_and_leaves_bugs_alone(capsys):
    def bad_input(argv):
        raise DataError("data.parquet: column 'input' missing")

    assert cli.run_command("hypersteer x", bad_input, []) == 2
    assert capsys.readouterr().err == "hypersteer x: error: data.parquet: column 'input' missing\n"

    def bug(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        cli.run_command("hypersteer x", bug, [])


@pytest.mark.parametrize("module", [
    "axbench_hypersteer.demo.run", "axbench_hypersteer.stages.train_stage",
    "axbench_hypersteer.stages.inference_stage", "axbench_hypersteer.stages.evaluate",
    "axbench_hypersteer.stages.steering_loss", "axbench_hypersteer.experiments.scaling",
    "axbench_hypersteer.experiments.ablations", "axbench_hypersteer.experiments.geometry",
    "axbench_hypersteer.experiments.attention"])
def test_every_long_running_command_takes_the_same_progress_flags(module, capsys):
    """One convention: bars by default, ``--no_progress`` turns them off (``--progress`` used to
    be opt-in for the experiments and ``--no_progress`` opt-out for evaluate only)."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--no_progress" in help_text and "--progress" in help_text
