"""Malformed inputs give one clear error line, exit status 2, no traceback and no partial output.

The cases live in ``tests/bad_input_cases.py`` (one table), which also generates
``docs/bad-inputs.md``; the last test checks that the doc lists every case with the message the
CLI prints today.
"""

from __future__ import annotations

import pytest

from bad_input_cases import CASES, DOC_PATH, doc_row, problems, run_case
from pipeline_fixture import one_torch_thread, pipeline  # noqa: F401 (fixtures)

OUTCOMES: dict = {}


def test_table_covers_the_issue():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    areas = {c.area for c in CASES}
    assert {"config", "parquet", "metadata", "checkpoint", "prompts", "judge", "cli"} <= areas


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, pipeline, tmp_path):
    outcome = run_case(case, pipeline, tmp_path / "work")
    OUTCOMES[case.id] = outcome
    found = problems(outcome)
    assert not found, f"{case.id} (argv {outcome.argv}):\n" + "\n".join(found)


def test_problems_detects_a_broken_outcome(pipeline, tmp_path):
    """The checker itself can fail: a traceback, exit 1, a vague message and a stray file."""
    from bad_input_cases import Case, Outcome

    case = Case("x", "config", "x", lambda w: [], ("config.yaml",))
    bad = Outcome(case, ["train"], 1, "", "Traceback (most recent call last):\nValueError: bad\n",
                  "", "Traceback ...", ["dump/train/.x.tmp"])
    found = "\n".join(problems(bad))
    for expected in ("exception escaped", "exit status 1", "ONE line", "does not name",
                     "changed files", "traceback in stderr"):
        assert expected in found


def test_doc_lists_every_case_with_its_message(pipeline, tmp_path):
    assert DOC_PATH.exists(), "generate it: python tests/bad_input_cases.py > docs/bad-inputs.md"
    doc = DOC_PATH.read_text(encoding="utf-8")
    stale = []
    for case in CASES:
        outcome = OUTCOMES.get(case.id) or run_case(case, pipeline, tmp_path / case.id)
        if doc_row(outcome) not in doc:
            stale.append(doc_row(outcome))
    assert not stale, ("docs/bad-inputs.md is stale; regenerate with "
                       "`python tests/bad_input_cases.py > docs/bad-inputs.md`. Missing rows:\n"
                       + "\n".join(stale))
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert len(rows) == len(CASES)


def test_loading_the_base_model_draws_no_bar_and_keeps_bars_working(pipeline, capfd):
    """Loading the base model adds nothing to stderr (transformers 5 draws a "Loading weights"
    bar there, ahead of the CLI's one error line); afterwards transformers' progress bars draw
    again: only the load is silenced."""
    from transformers.utils import logging as hf_logging

    from axbench_hypersteer.model.loading import load_base

    capfd.readouterr()
    load_base(str(pipeline.base_model))
    assert capfd.readouterr().err == ""
    for _ in hf_logging.tqdm(range(2), desc="after the load"):
        pass
    assert "after the load" in capfd.readouterr().err
