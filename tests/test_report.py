"""Report: factor chosen on `steering`, score read from `steering_test` at that factor.

The dumps are written by hand with known numbers. Split A's best factor differs from split B's best
for every concept, so an implementation that selects on the test split (or on the wrong index) fails.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from axbench_hypersteer import cli
from axbench_hypersteer.stages import report
from axbench_hypersteer.stages.report import ReportError

FACTORS = [0.5, 1.0, 2.0, 4.0]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# lm_judge_rating per factor. Selection (A) and test (B) splits; None = failed judgement.
SEL = {
    "HyperSteer": {0: [0.2, 0.9, 0.5, 0.1],     # best 1.0
                   1: [0.3, 0.6, 0.6, 0.2],     # tie 1.0 / 2.0 -> first: 1.0
                   2: [None, 0.4, 0.8, 0.7]},   # null first: naive argmax on NaN would pick 0.5; best 2.0
    "DiffMean": {0: [0.1, 0.2, 0.3, 0.4],       # best 4.0
                 1: [0.5, 0.1, 0.1, 0.1],       # best 0.5
                 2: [0.1, 0.9, 0.1, 0.1]},      # best 1.0
}
TEST = {
    "HyperSteer": {0: [1.5, 0.6, 0.3, 0.2],     # B's own best 0.5; at 1.0 -> 0.6
                   1: [0.1, 0.4, 1.2, 0.0],     # at 1.0 -> 0.4 (last-of-ties would read 1.2)
                   2: [0.0, 1.0, 0.9, 1.1]},    # at 2.0 -> 0.9
    "DiffMean": {0: [0.8, 0.7, 0.6, 0.5],       # at 4.0 -> 0.5
                 1: [0.2, 0.9, 0.9, 0.9],       # at 0.5 -> 0.2
                 2: [0.3, 0.3, 0.6, 0.3]},      # at 1.0 -> 0.3
}
EXPECTED_FACTORS = {"HyperSteer": {0: 1.0, 1: 1.0, 2: 2.0}, "DiffMean": {0: 4.0, 1: 0.5, 2: 1.0}}
EXPECTED_OVERALL = {"HyperSteer": [0.6, 0.4, 0.9], "DiffMean": [0.5, 0.2, 0.3]}
# Criteria are the rating plus a per-field offset, so reading the wrong field shows up too.
OFFSETS = {"relevance_concept_ratings": 0.01, "relevance_instruction_ratings": 0.02, "fluency_ratings": 0.03}


def _judge(ratings: list[float | None]) -> dict:
    entry = {"lm_judge_rating": ratings, "factor": FACTORS}
    for field, off in OFFSETS.items():
        entry[field] = [None if r is None else round(r + off, 6) for r in ratings]
    return entry


def _line(cid: int, judge: dict, ppl: dict | None = None) -> str:
    results = {"LMJudgeEvaluator": judge}
    if ppl is not None:
        results["PerplexityEvaluator"] = ppl
    return json.dumps({"concept_id": cid, "results": results})


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_dump(root: Path, sel: dict = SEL, test: dict = TEST) -> Path:
    """Two methods x three concepts x four factors, with a stale duplicate line per split (last wins)."""
    ev = root / "evaluate"
    stale = {m: _judge([2.0, 0.0, 0.0, 0.0]) for m in sel}  # would pick 0.5 and read 2.0 if kept
    for name, split in (("steering.jsonl", sel), ("steering_test.jsonl", test)):
        lines = [_line(1 if name == "steering.jsonl" else 0, stale)]
        for cid in (0, 1, 2):
            ppl = {m: {"perplexity": [10.0 + cid + i for i in range(4)], "factor": FACTORS} for m in split}
            lines.append(_line(cid, {m: _judge(split[m][cid]) for m in split}, ppl))
        _write(ev / name, lines)
    return root


@pytest.fixture()
def dump(tmp_path: Path) -> Path:
    return make_dump(tmp_path / "heldin")


def test_best_factor_is_argmax_on_selection_split_first_on_ties_nulls_ignored(dump):
    records = report.load_records(dump / "evaluate" / "steering.jsonl")
    for method, expected in EXPECTED_FACTORS.items():
        assert report.select_best_factors(records, method) == expected


def test_score_is_read_from_test_split_at_selected_factor(dump):
    test = report.load_records(dump / "evaluate" / "steering_test.jsonl")
    for method, overall in EXPECTED_OVERALL.items():
        scores = report.score_at_factors(test, method, EXPECTED_FACTORS[method])
        assert scores["concept_id"].tolist() == [0, 1, 2]
        assert scores["factor"].tolist() == [EXPECTED_FACTORS[method][c] for c in (0, 1, 2)]
        assert scores["overall"].tolist() == pytest.approx(overall)
        assert scores["concept"].tolist() == pytest.approx([v + 0.01 for v in overall])
        assert scores["instruction"].tolist() == pytest.approx([v + 0.02 for v in overall])
        assert scores["fluency"].tolist() == pytest.approx([v + 0.03 for v in overall])
    hs = report.score_at_factors(test, "HyperSteer", EXPECTED_FACTORS["HyperSteer"])
    assert hs["perplexity"].tolist() == [11.0, 12.0, 14.0]  # factor indices 1, 1, 2 of [10+cid+i]


def test_duplicate_concept_lines_last_wins(dump):
    text = (dump / "evaluate" / "steering_test.jsonl").read_text().splitlines()
    assert [json.loads(line)["concept_id"] for line in text] == [0, 0, 1, 2]  # the stale line is there
    records = report.load_records(dump / "evaluate" / "steering_test.jsonl")
    assert records[0]["LMJudgeEvaluator"]["HyperSteer"]["lm_judge_rating"] == TEST["HyperSteer"][0]


def test_summarize_mean_std_exact(dump):
    summary = report.summarize(dump).set_index("method")
    assert list(summary.index) == ["HyperSteer", "DiffMean"]
    for method, overall in EXPECTED_OVERALL.items():
        row = summary.loc[method]
        assert row["n_concepts"] == 3
        for name, off in (("overall", 0.0), ("concept", 0.01), ("instruction", 0.02), ("fluency", 0.03)):
            vals = [v + off for v in overall]
            assert math.isclose(row[f"{name}_mean"], statistics.mean(vals), abs_tol=1e-12)
            assert math.isclose(row[f"{name}_std"], statistics.stdev(vals), abs_tol=1e-12)
    assert math.isclose(summary.loc["HyperSteer", "overall_mean"], 1.9 / 3, abs_tol=1e-12)


def test_null_rating_at_selected_factor_is_missing_not_zero(tmp_path):
    test = {m: {c: list(v) for c, v in cs.items()} for m, cs in TEST.items()}
    test["HyperSteer"][2][2] = None  # the factor chosen for concept 2
    summary = report.summarize(make_dump(tmp_path / "d", test=test)).set_index("method")
    assert summary.loc["HyperSteer", "n_concepts"] == 2
    assert math.isclose(summary.loc["HyperSteer", "overall_mean"], 0.5, abs_tol=1e-12)
    assert summary.loc["DiffMean", "n_concepts"] == 3


def test_single_factor_and_factor_free_methods(tmp_path):
    ev = tmp_path / "evaluate"
    for name, base in (("steering.jsonl", 1.0), ("steering_test.jsonl", 0.0)):
        lines = []
        for cid in (0, 1):
            judge = {
                "OneFactor": {**_judge([base + 0.5 + cid]), "factor": [1.0]},
                "PromptSteering": _judge([base + 0.2, base + 0.4, None, base + 0.6]),  # averaged
                "NoFactor": {k: v for k, v in _judge([base + 0.1]).items() if k != "factor"},
            }
            lines.append(_line(cid, judge, {"OneFactor": {"strength": [3.0], "factor": [1.0]}}))
        _write(ev / name, lines)
    summary = report.summarize(tmp_path).set_index("method")
    assert summary["perplexity_mean"].isna().all()  # strength-only PerplexityEvaluator entries
    assert report.select_best_factors(ev / "steering.jsonl", "PromptSteering") == {0: None, 1: None}
    assert summary.loc["OneFactor", "overall_mean"] == pytest.approx(1.0)   # (0.5 + 1.5) / 2
    assert summary.loc["PromptSteering", "overall_mean"] == pytest.approx(0.4)
    assert summary.loc["NoFactor", "overall_mean"] == pytest.approx(0.1)
    assert summary["n_concepts"].tolist() == [2, 2, 2]
    fig = report.plot_score_vs_factor(tmp_path, tmp_path / "score.png")  # a flat line for "NoFactor"
    assert sorted(line.get_label() for line in fig.axes[0].get_lines()) == [
        "NoFactor (no factor)", "OneFactor", "PromptSteering"]


def test_steering_loss_at_one_and_best_factor_selected_on_steering(dump):
    rows = []
    # steering: concept 0 min at 2.0, concept 1 min at 0.5 (tie with 4.0 -> first). test: own min elsewhere.
    sel = {0: [3.0, 2.0, 1.0, 1.5], 1: [1.0, 2.0, 3.0, 1.0]}
    tst = {0: [0.1, 2.5, 1.2, 0.2], 1: [1.4, 2.2, 0.3, 0.4]}
    for split, table in (("steering", sel), ("steering_test", tst)):
        for cid, losses in table.items():
            rows += [json.dumps({"concept_id": cid, "method": "HyperSteer", "factor": f, "split": split,
                                 "loss": loss}) for f, loss in zip(FACTORS, losses)]
    rows.append(json.dumps({"concept_id": 0, "method": "HyperSteer", "factor": 1.0,
                            "split": "steering_test", "loss": 2.3}))  # re-run line: last wins
    _write(dump / "evaluate" / "steering_loss.jsonl", rows)
    row = report.summarize(dump).set_index("method").loc["HyperSteer"]
    assert row["loss_at_1_mean"] == pytest.approx((2.3 + 2.2) / 2)
    assert row["loss_best_mean"] == pytest.approx((1.2 + 1.4) / 2)
    assert row["loss_best_std"] == pytest.approx(statistics.stdev([1.2, 1.4]))
    assert "Loss @best" in report.render_markdown({"x": report.summarize(dump)})


def test_render_markdown_held_in_and_held_out_side_by_side(dump, tmp_path):
    out = tmp_path / "heldout"
    doubled = {m: {c: [v * 2 for v in r] for c, r in cs.items()} for m, cs in TEST.items()}
    heldout = make_dump(out, test=doubled)
    md = report.render_markdown({"held-in": report.summarize(dump), "held-out": report.summarize(heldout)})
    header, rule, *rows = md.strip().splitlines()
    assert "Overall (held-in)" in header and "Overall (held-out)" in header
    pos = [header.index(c) for c in ("Overall (held-in)", "Overall (held-out)", "Concept (held-in)")]
    assert pos == sorted(pos)
    hyper = next(r for r in rows if r.startswith("| HyperSteer"))
    mean, std = statistics.mean([0.6, 0.4, 0.9]), statistics.stdev([0.6, 0.4, 0.9])
    assert f"{mean:.3f} ± {std:.3f}" in hyper and f"{2 * mean:.3f} ± {2 * std:.3f}" in hyper
    assert len(rows) == 2 and rule.count("---") == header.count("|") - 1


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1024, path


def test_plots_one_line_per_method_and_bars_per_criterion(dump, tmp_path):
    fig = report.plot_score_vs_factor(dump, tmp_path / "score.png")
    labels = sorted(line.get_label() for ax in fig.axes for line in ax.get_lines())
    assert labels == ["DiffMean", "HyperSteer"]
    hyper = next(line for line in fig.axes[0].get_lines() if line.get_label() == "HyperSteer")
    assert list(hyper.get_xdata()) == FACTORS
    expected = [0.25, (0.9 + 0.6 + 0.4) / 3, (0.5 + 0.6 + 0.8) / 3, 1 / 3]  # null skipped at 0.5
    assert list(hyper.get_ydata()) == pytest.approx(expected)
    fig = report.plot_criteria(dump, tmp_path / "criteria.png")
    assert len(fig.axes[0].patches) == 4 * 2  # 4 criteria x 2 methods
    _assert_png(tmp_path / "score.png")
    _assert_png(tmp_path / "criteria.png")


def test_write_report_and_cli(dump, tmp_path, capsys):
    heldout = make_dump(tmp_path / "heldout")
    out = tmp_path / "out"
    assert report.main(["--dump_dir", str(dump), "--heldout_dump_dir", str(heldout), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Overall (held-in)" in md and "Overall (held-out)" in md and "wrote" in capsys.readouterr().out
    for name in ("score_vs_factor_held_in", "score_vs_factor_held_out",
                 "criteria_held_in", "criteria_held_out"):
        assert f"({name}.png)" in md
        _assert_png(out / f"{name}.png")
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["label"], r["method"]) for r in rows] == [
        ("held-in", "HyperSteer"), ("held-in", "DiffMean"),
        ("held-out", "HyperSteer"), ("held-out", "DiffMean")]
    assert float(rows[0]["overall_mean"]) == pytest.approx(1.9 / 3)
    path = report.write_report({"only": dump}, tmp_path / "single")
    assert path.name == "report.md" and (tmp_path / "single" / "score_vs_factor.png").is_file()


@pytest.mark.parametrize("name", ["steering.jsonl", "steering_test.jsonl"])
def test_missing_empty_or_malformed_files_name_the_file(dump, name, capsys):
    path = dump / "evaluate" / name
    good = path.read_text()
    path.unlink()
    with pytest.raises(ReportError, match=f"{name}: file not found"):
        report.summarize(dump)
    path.write_text("")
    with pytest.raises(ReportError, match=f"{name}: no records"):
        report.summarize(dump)
    path.write_text(good + "{not json\n")
    with pytest.raises(ReportError, match=f"{name}:5: not valid JSON"):
        report.summarize(dump)
    path.write_text('{"concept_id": "a", "results": {}}\n')
    with pytest.raises(ReportError, match=f"{name}:1: 'concept_id' must be an integer"):
        report.summarize(dump)
    assert cli.main(["report", "--dump_dir", str(dump)]) == 2
    assert name in capsys.readouterr().err


def test_bad_fields_and_unknown_factor_name_the_file_and_field(dump):
    ev = dump / "evaluate"
    entry = _judge([0.1, 0.2, 0.3, 0.4])
    del entry["fluency_ratings"]
    test_path = ev / "steering_test.jsonl"
    _write(test_path, [_line(c, {"HyperSteer": entry, "DiffMean": _judge([0] * 4)}) for c in (0, 1, 2)])
    with pytest.raises(ReportError, match=r"steering_test.jsonl: concept 0, "
                                          r"LMJudgeEvaluator.HyperSteer: missing field 'fluency_ratings'"):
        report.summarize(dump)
    other = {**_judge([0.1, 0.2, 0.3]), "factor": [0.5, 1.5, 3.0]}
    _write(test_path, [_line(c, {"HyperSteer": other, "DiffMean": other}) for c in (0, 1, 2)])
    with pytest.raises(ReportError, match=r"steering_test.jsonl: concept 0, .*"
                                          r"factor 1.0 chosen on steering.jsonl"):
        report.summarize(dump)
    short = {**_judge([0.1, 0.2, 0.3, 0.4]), "fluency_ratings": [1.0]}
    _write(test_path, [_line(c, {"HyperSteer": short, "DiffMean": short}) for c in (0, 1, 2)])
    with pytest.raises(ReportError, match="'fluency_ratings' has 1 values but 'factor' has 4"):
        report.summarize(dump)
    bad = {"concept_id": 0, "method": "m", "split": "train", "factor": 1, "loss": 1}
    _write(ev / "steering_loss.jsonl", [json.dumps(bad)])
    with pytest.raises(ReportError, match="steering_loss.jsonl:1: expected"):
        report.summarize_loss(ev / "steering_loss.jsonl")
