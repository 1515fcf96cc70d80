"""The package's layers (README, "Layout") hold: a module imports only from its own layer and the
layers below it.

    cli.py, */__main__.py        top: entry points; parse arguments, catch user errors
    axbench/  experiments/ real/ AxBench adapter; paper experiments; the real-LM experiment
    demo/     serve/             the built-in demo; the OpenAI-compatible server, vector export
    stages/                      AxBench files, splits, run config, the stages, report, plots
    train/    judge/             the training loop; the LLM judge client
    model/    testing/           the model; tiny test models (testing imports nothing of the package)

Two checks, because each misses what the other sees: a static scan of every import statement
(also the ones inside functions, which run only on some code paths), and a fresh interpreter that
imports all of ``model`` and loads a model, then lists what actually got imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "axbench_hypersteer"

# What each layer may import from the package, besides itself and the package root (__version__).
ALLOWED = {
    "testing": set(),
    "model": {"testing"},
    "judge": {"model"},
    "train": {"model", "testing"},
    "stages": {"model", "judge", "train", "testing"},
    "demo": {"model", "judge", "train", "stages", "testing"},
    "serve": {"model", "stages"},
    "axbench": {"model", "train", "stages"},
    "experiments": {"model", "judge", "train", "stages", "testing"},
    # the real-LM experiment judges and plots the way the demo does (its judge_all, curves)
    "real": {"model", "judge", "train", "stages", "demo", "testing"},
}
# Third-party packages of the layers above the model that the model must not pull in.
NOT_IN_MODEL = ("pandas", "pyarrow", "matplotlib", "openai")


def _layer(module: str) -> str | None:
    """``axbench_hypersteer.model.config`` -> ``model``; the package root itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _package_imports(path: Path) -> list[tuple[int, str]]:
    """Every package module (or root attribute) one file imports, as (line, absolute name)."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from axbench_hypersteer import pipeline`: the name is what says the layer
            found += [(node.lineno, f"{target}.{a.name}" if _layer(target) is None else target)
                      for a in node.names]
    return [(line, name) for line, name in found if name.startswith("axbench_hypersteer.")]


def layer_violations() -> list[str]:
    errors = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if own not in ALLOWED or path.name == "__main__.py":
            continue  # entry points (cli.py, python -m ...) and the package root sit on top
        for line, name in _package_imports(path):
            other = _layer(name)
            if other not in (own, "__version__") and other not in ALLOWED[own]:
                errors.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own}/ imports {name}")
    return sorted(errors, key=lambda e: (e.split(":")[0], int(e.split(":")[1])))


def test_no_layer_imports_from_a_layer_above_it():
    assert layer_violations() == []


def test_the_scan_sees_a_violation(tmp_path, monkeypatch):
    """The scan itself can fail: a model module importing a stage (even lazily) is reported."""
    fake = tmp_path / "axbench_hypersteer"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "bad.py").write_text(
        "def f():\n    from ..stages.data import load_metadata\n    from .config import X\n"
        "from axbench_hypersteer import __version__, judge\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert layer_violations() == [
        "axbench_hypersteer/model/bad.py:2: model/ imports axbench_hypersteer.stages.data",
        "axbench_hypersteer/model/bad.py:4: model/ imports axbench_hypersteer.judge"]


def test_importing_the_model_and_loading_it_pulls_in_nothing_above_it():
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import axbench_hypersteer.model as model_pkg\n"
        "for m in pkgutil.walk_packages(model_pkg.__path__, 'axbench_hypersteer.model.'):\n"
        "    importlib.import_module(m.name)\n"
        "from axbench_hypersteer.model.loading import load_base\n"
        "from axbench_hypersteer.model.hypersteer import HyperSteer\n"
        "from axbench_hypersteer.model.config import HyperSteerConfig\n"
        "model, tok = load_base('tiny')\n"
        "HyperSteer.from_base(model, tok, HyperSteerConfig(steering_layer=1, num_blocks=1))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True).stdout
    modules = json.loads(out.strip().splitlines()[-1])
    above = [m for m in modules if m.startswith("axbench_hypersteer.")
             and _layer(m) not in ("model", "testing")]
    heavy = [m for m in modules if m.split(".")[0] in NOT_IN_MODEL]
    assert above == [] and heavy == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_every_layer_is_a_folder_with_a_docstring(layer):
    init = PACKAGE / layer / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))


def _layout_block() -> str:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout"):]
    return section[section.index("```") + 3: section.index("```", section.index("```") + 3)]


def test_the_readme_layout_names_every_module():
    """A module missing from the diagram is a module a newcomer will not find."""
    named: set[str] = set()  # "folder/module.py" for every module the diagram names
    folder = None
    for line in _layout_block().splitlines():
        words = [w.strip(":,()") for w in line.split()]
        if not words or set(line.strip()) <= {"─"}:
            continue
        if not line.startswith("   ") and words[0].endswith("/"):
            folder = words[0]  # a row of the diagram; indented lines continue it
        for word in words:
            if "/" in word and word.endswith(".py"):
                named.add(word)  # an entry point named with its folder
            elif folder and word.endswith((".py", ".html")):
                named.add(folder + word)
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or len(rel.parts) == 1:
            continue  # the package root's cli.py/__init__.py head the diagram
        if str(rel) not in named:
            missing.append(str(rel))
    assert missing == []


def test_core_install_runs_without_the_pipeline_extra():
    """The model needs torch + transformers only (setup.py's core install): in a fresh interpreter
    in which pandas, pyarrow and openai cannot be imported (matplotlib comes with pyvene), a
    HyperSteer model still
    builds, takes a training step with its own loss and generates; a stage command then names
    the extra to install instead of a traceback."""
    code = """
import sys
for name in ("pandas", "pyarrow", "openai"):
    sys.modules[name] = None  # importing it now raises ModuleNotFoundError
import torch
torch.set_num_threads(1)
from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.model.config import HyperSteerConfig
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.testing.tiny import build_tiny_gemma2, build_tiny_tokenizer

tok = build_tiny_tokenizer()
hs = HyperSteer.from_base(build_tiny_gemma2(tok, hidden_size=64, num_layers=2), tok,
                          HyperSteerConfig(variant="nocontext", steering_layer=1, num_blocks=1))
batch = SteeringCollator(tok, 64)([{"concept_id": 0, "concept": "cats", "input": "Say hi.",
                                    "output": "Hi, cat."}])
out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
         batch["hyper_attention_mask"], labels=batch["labels"])
out.loss.backward()
print(len(hs.generate(["Say hi."], ["cats"], factors=[1.0], max_new_tokens=2)))
from axbench_hypersteer.cli import main
sys.exit(main(["report", "--dump_dir", "."]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "1", result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'axbench-hypersteer[pipeline]'" in result.stderr.strip().splitlines()[-1]
