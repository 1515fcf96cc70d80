"""Which rubric the judge uses: AxBench's own templates when AxBench is importable (imported at run
time, never copied), the package's otherwise; every evaluate record and the report name it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from axbench_hypersteer.model.config import ConfigError
from axbench_hypersteer.stages.evaluate import run_evaluate
from axbench_hypersteer.judge import load_templates
from axbench_hypersteer.judge.prompts import AXBENCH_TEMPLATE_NAMES, resolve_rubric
from axbench_hypersteer.stages.report import rubric_note, rubrics_used
from judge_server import FaultJudgeServer, by_criterion
from test_judge import fake_key, judge_config, read_jsonl, write_steering_data  # noqa: F401


@pytest.fixture()
def fake_axbench(tmp_path, monkeypatch) -> Path:
    """A stand-in ``axbench`` package exposing AxBench's attribute names. Its ``__init__`` fails,
    so the rubric must be read without importing the package (AxBench's imports every method).
    The template text is the package's own (with its markers), so the marker-reading test server
    can answer it."""
    root = tmp_path / "site" / "axbench"
    (root / "evaluators").mkdir(parents=True)
    (root / "__init__.py").write_text("raise ImportError('axbench.__init__ must not run')\n")
    ours = load_templates()
    body = "".join(f"{AXBENCH_TEMPLATE_NAMES[c]} = {ours[c]!r}\n" for c in AXBENCH_TEMPLATE_NAMES)
    (root / "evaluators" / "prompt_templates.py").write_text(body)
    monkeypatch.syspath_prepend(str(root.parent))
    monkeypatch.delitem(sys.modules, "axbench", raising=False)
    return root / "evaluators" / "prompt_templates.py"


def test_without_axbench_the_package_rubric_is_used():
    rubric = resolve_rubric("auto")
    assert rubric.name == "package" and rubric.templates == load_templates()
    with pytest.raises(ConfigError, match="AxBench installed"):
        resolve_rubric("axbench")


def test_axbench_templates_are_imported_when_axbench_is_importable(fake_axbench):
    rubric = resolve_rubric("auto")
    assert rubric.name == "axbench" and rubric.source == str(fake_axbench)
    assert rubric.templates == load_templates()
    assert "axbench" not in sys.modules
    assert resolve_rubric("package").name == "package"


def test_axbench_template_with_wrong_fields_is_rejected(fake_axbench):
    text = fake_axbench.read_text().replace("{concept}", "{topic}", 1)
    fake_axbench.write_text(text)
    with pytest.raises(ConfigError, match=r"prompt_templates.py:UNIDIRECTIONAL.*fields"):
        resolve_rubric("auto")


def test_evaluate_records_the_rubric(tmp_path, fake_axbench):
    write_steering_data(tmp_path)
    with FaultJudgeServer(default=by_criterion({"concept": 2, "instruction": 1,
                                                "fluency": 2})) as server:
        summary = run_evaluate(tmp_path, judge_config(server), "steering", progress=False)
        forced = run_evaluate(tmp_path, judge_config(server), "steering_test", progress=False,
                              rubric="package")
    assert summary.rubric == "axbench" and forced.rubric == "package"
    lines = read_jsonl(tmp_path / "evaluate" / "steering.jsonl")
    assert {line["rubric"]["name"] for line in lines} == {"axbench"}
    assert lines[0]["rubric"]["source"] == str(fake_axbench)
    assert rubrics_used(tmp_path) == ["axbench", "package"]
    assert "not" not in rubric_note(["axbench"]) and "comparable" in rubric_note(["axbench"])
    assert "Only AxBench's own rubric" in rubric_note(["axbench", "package"])


@pytest.mark.skipif(not os.environ.get("HYPERSTEER_OFFICIAL"),
                    reason="HYPERSTEER_OFFICIAL (an AxBench checkout) not set")
def test_real_axbench_checkout_provides_the_three_templates(monkeypatch):
    root = Path(os.environ["HYPERSTEER_OFFICIAL"])
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "axbench", raising=False)
    rubric = resolve_rubric("axbench")
    assert rubric.name == "axbench" and set(rubric.templates) == set(AXBENCH_TEMPLATE_NAMES)
