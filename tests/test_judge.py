"""The LLM judge and the evaluate stage, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from axbench_hypersteer import cli
from axbench_hypersteer.model.config import ConfigError, JudgeConfig
from axbench_hypersteer.judge import (
    JudgeCache,
    JudgeUnavailableError,
    LLMJudge,
    build_prompt,
    harmonic_mean,
    load_templates,
    parse_rating,
    start_offline_judge,
    stop_offline_judge,
)
from axbench_hypersteer.judge.client import parse_retry_after
from axbench_hypersteer.judge.prompts import detect_criterion
from axbench_hypersteer.stages.common import PromptSplit, record_split
from axbench_hypersteer.stages.evaluate import (EvaluateError, main, run_evaluate,
                                                  split_by_input_id)
from judge_server import (
    FaultJudgeServer,
    by_criterion,
    empty,
    hang,
    non_json,
    ok,
    status,
)

METHODS = ("HyperSteer", "PromptSteering")
FACTORS = (1.0, 0.5)  # deliberately unsorted: outputs must list factors ascending


@pytest.fixture(autouse=True)
def fake_key(monkeypatch) -> str:
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return key


def judge_config(server, **overrides) -> JudgeConfig:
    values = dict(lm_model="test-judge", base_url=server.base_url, concurrency=4, max_retries=2,
                  timeout=5.0, backoff_base=0.001, backoff_max=0.01)
    values.update(overrides)
    return JudgeConfig(**values)


def generation(method: str, concept_id: int, input_id: int, factor: float) -> str:
    return f"{method} reply c{concept_id} i{input_id} f{factor} about tides and rentals."


def write_steering_data(dump_dir: Path, n_concepts: int = 2, n_prompts: int = 10) -> pd.DataFrame:
    """A hand-made inference output with AxBench's steering_data.parquet columns."""
    rows = []
    for c in range(n_concepts):
        for i in range(n_prompts):
            for f in FACTORS:
                row = {"dataset_name": "AlpacaEval", "concept_id": c,
                       "input_concept": f"concept number {c} about rentals",
                       "input_id": i, "factor": f, "original_prompt": f"Question {i} about tides?",
                       "steered_input": "", "input": f"<user>Question {i} about tides?</user>"}
                for m in METHODS:
                    row[f"{m}_steered_generation"] = generation(m, c, i, f)
                    row[f"{m}_perplexity"] = 10.0 + i + f
                    row[f"{m}_strength"] = 2.0 * f
                rows.append(row)
    df = pd.DataFrame(rows)
    (dump_dir / "inference").mkdir(parents=True, exist_ok=True)
    df.to_parquet(dump_dir / "inference" / "steering_data.parquet", index=False)
    record_split(dump_dir, PromptSplit(n_prompts, 0.5))  # as `hypersteer inference` does
    return df


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def judge_many(config: JudgeConfig, prompts: list[str], cache: JudgeCache | None = None, **kw):
    async def go():
        async with LLMJudge(config, cache, **kw) as judge:
            results = await asyncio.gather(*(judge.judge(p) for p in prompts))
            return results, judge.stats

    return asyncio.run(go())


# --- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The concept is clear.\nRating: [[2]]", 2.0),
    ("Rating: [[0]]", 0.0),
    ("Somewhat related.\nRating: 2/2", 2.0),
    ("**Rating:** **1**", 1.0),
    ("Rating: [[1]].", 1.0),
    ("Rating: 2.", 2.0),
    ("Rating: 1.5 because it wanders off later", 1.5),
    ("Rating: 1 out of 2", 1.0),
    ("Rating:\n[[2]]", 2.0),
    ("First Rating: [[0]] was wrong. Final answer: Rating: [[2]]", 2.0),
    ("Rating: [[2]]\nOn reflection, Rating: [[score]]", None),
    ("I would give this a two.", None),
    ("Rating: [[score]]", None),
    ("Rating: 3", None),
    ("Rating: 20", None),
    ("Rating: -1", None),
    ("Rating: 4/5", None),
    ("Rating: 2abc", None),
    ("", None),
    (None, None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


def test_harmonic_mean_and_zero_rule():
    assert harmonic_mean(2, 2, 2) == pytest.approx(2.0)
    assert harmonic_mean(2, 1, 2) == pytest.approx(1.5)
    assert harmonic_mean(1, 2, 1.5) == pytest.approx(3 / (1 + 0.5 + 1 / 1.5))
    assert harmonic_mean(0, 2, 2) == 0.0
    assert harmonic_mean(2, 2, 0) == 0.0
    assert harmonic_mean(2, None, 2) == 0.0  # a failed judgement counts as 0


# --- templates ----------------------------------------------------------------------------------

def test_templates_have_markers_fields_and_rating_format(tmp_path):
    templates = load_templates()
    assert set(templates) == {"concept", "instruction", "fluency"}
    prompt = build_prompt(templates, "instruction", instruction="Do {x}?", sentence="a {b} c")
    assert detect_criterion(prompt) == "instruction" and "Do {x}?" in prompt and "a {b} c" in prompt
    for criterion, template in templates.items():
        assert template.splitlines()[0] == f"### Criterion: {criterion}"
        assert "Rating: [[score]]" in template
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'concept: "### Criterion: concept\\n{concept} {sentence} Rating: [[score]]"\n'
        'instruction: "### Criterion: instruction\\n{sentence} Rating: [[score]]"\n'
        'fluency: "### Criterion: fluency\\n{sentence} Rating: [[score]]"\n'
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml:instruction.*instruction"):
        load_templates(bad)


# --- cache --------------------------------------------------------------------------------------

def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgeCache(path)
    cache.put("m", "p1", "ok\nRating: [[2]]")
    cache.put("m", "p2", "ok\nRating: [[1]]")
    with path.open("ab") as handle:
        handle.write(b'{"key": "abc", "comp')  # a kill in the middle of a write
    reloaded = JudgeCache(path)
    assert reloaded.get("m", "p1") == "ok\nRating: [[2]]" and len(reloaded) == 2
    assert reloaded.get("other-model", "p1") is None
    reloaded.put("m", "p3", "Rating: [[0]]")
    assert len(JudgeCache(path)) == 3
    assert all(json.loads(line) for line in path.read_text().splitlines())


# --- client: retries and failures ---------------------------------------------------------------

def test_retries_on_5xx_then_succeeds():
    with FaultJudgeServer([status(500), status(503), ok("Fine.\nRating: [[1]]")]) as server:
        [result], stats = judge_many(judge_config(server, max_retries=3), ["p"])
    assert result.rating == 1.0 and result.error is None
    assert (stats.calls, stats.retries, stats.failures) == (3, 2, 0)


def test_429_retry_after_is_honoured_and_capped():
    assert parse_retry_after("1.5") == 1.5
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 < parse_retry_after(future) <= 61
    config_kw = dict(backoff_base=0.001, backoff_max=0.4)
    with FaultJudgeServer([status(429, "0.25"), ok()]) as server:
        start = time.monotonic()
        [result], stats = judge_many(judge_config(server, **config_kw), ["p"])
        waited = time.monotonic() - start
    assert result.rating == 2.0 and stats.retries == 1 and waited >= 0.25
    with FaultJudgeServer([status(429, "30"), ok()]) as server:
        start = time.monotonic()
        [result], _ = judge_many(judge_config(server, **config_kw), ["p"])
        waited = time.monotonic() - start
    assert result.rating == 2.0 and 0.4 <= waited < 5  # capped at backoff_max, not 30 s


def test_timeout_is_retried():
    with FaultJudgeServer([hang(1.5), ok("Late but fine.\nRating: [[2]]")]) as server:
        [result], stats = judge_many(judge_config(server, timeout=0.3), ["p"])
    assert result.rating == 2.0 and (stats.calls, stats.retries, stats.failures) == (2, 1, 0)


@pytest.mark.parametrize("fault", [empty(), non_json(), ok("Great text.\nRating: [[5]]"),
                                   ok("I cannot rate this.")], ids=["empty", "nonjson",
                                                                    "out-of-range", "no-rating"])
def test_unusable_answers_are_retried_then_recorded_as_failed(fault):
    with FaultJudgeServer(default=fault) as server:
        [result], stats = judge_many(judge_config(server, max_retries=2), ["p"])
        assert len(server.received) == 3
    assert result.rating is None and result.error
    assert (stats.calls, stats.retries, stats.failures) == (3, 2, 1)


def test_client_errors_fail_fast_and_a_dead_judge_stops_the_run():
    with FaultJudgeServer(default=status(401)) as server:
        results, stats = judge_many(judge_config(server, concurrency=1), ["a", "b"],
                                    max_consecutive_failures=5)
    assert [r.rating for r in results] == [None, None]
    assert (stats.calls, stats.retries, stats.failures) == (2, 0, 2)  # 401 is not retried
    with FaultJudgeServer(default=status(500)) as server:
        with pytest.raises(JudgeUnavailableError, match="2 judgements in a row"):
            judge_many(judge_config(server, concurrency=1), ["a", "b", "c", "d"],
                       max_consecutive_failures=2)


def test_concurrency_is_bounded():
    with FaultJudgeServer(default=hang(0.05)) as server:
        results, stats = judge_many(judge_config(server, concurrency=3),
                                    [f"p{i}" for i in range(12)])
    assert all(r.rating == 2.0 for r in results) and stats.calls == 12
    assert 1 < server.max_in_flight <= 3


def test_duplicate_prompts_are_sent_once_and_cached(tmp_path):
    cache_path = tmp_path / "cache.jsonl"
    with FaultJudgeServer(default=hang(0.05)) as server:
        results, stats = judge_many(judge_config(server), ["same"] * 3, JudgeCache(cache_path))
        assert len(server.received) == 1
        assert [r.rating for r in results] == [2.0] * 3
        assert (stats.calls, stats.cache_hits) == (1, 2)
        again, stats2 = judge_many(judge_config(server), ["same"], JudgeCache(cache_path))
        assert len(server.received) == 1 and again[0].cached
        assert (stats2.calls, stats2.cache_hits) == (0, 1)


def test_endpoint_from_env_and_dummy_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FaultJudgeServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        [result], _ = judge_many(judge_config(server, base_url=None), ["p"])
        assert result.rating == 2.0
        assert server.received[0].headers["authorization"] == "Bearer EMPTY"
        assert server.received[0].path == "/v1/chat/completions"
        assert server.received[0].body["model"] == "test-judge"
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LLMJudge(JudgeConfig())


# --- evaluate -----------------------------------------------------------------------------------

def test_split_by_input_id_matches_axbench(tmp_path):
    df = write_steering_data(tmp_path, n_concepts=2, n_prompts=10)
    split = PromptSplit(10, 0.5)
    steer, test = split_by_input_id(df, "steering", split), split_by_input_id(df, "steering_test", split)
    assert sorted(steer["input_id"].unique()) == [0, 1, 2, 3, 4]
    assert sorted(test["input_id"].unique()) == [5, 6, 7, 8, 9]
    assert len(steer) + len(test) == len(df)
    assert list(steer["factor"][:2]) == [0.5, 1.0]  # sorted by (concept, input_id, factor)


def test_the_split_comes_from_the_config_not_from_the_ids_present(tmp_path):
    """Inference of `steering` alone writes prompts 0..4 of 10: evaluating it must judge 0..4
    (it used to re-split the five ids present, judging 0..2 and calling 3..4 the test split)."""
    df = write_steering_data(tmp_path, n_concepts=1, n_prompts=10)
    df[df["input_id"] < 5].to_parquet(tmp_path / "inference" / "steering_data.parquet")
    with FaultJudgeServer() as server:
        summary = run_evaluate(tmp_path, judge_config(server), "steering", progress=False)
        prompts = [r.prompt for r in server.received]
    assert summary.calls == 5 * len(FACTORS) * len(METHODS) * 3
    assert all(any(f" i{i} " in p for p in prompts) for i in range(5))
    data = pd.read_parquet(tmp_path / "evaluate" / "steering_data.parquet")
    assert sorted(set(data["input_id"])) == [0, 1, 2, 3, 4]


def test_evaluate_refuses_a_split_other_than_the_recorded_one(tmp_path):
    write_steering_data(tmp_path, n_concepts=1, n_prompts=10)
    with pytest.raises(ConfigError, match=r"prompt_split\.json: .*steering_num_of_examples=10, "
                                          r"split_ratio=0\.5.*steering_num_of_examples=8"):
        run_evaluate(tmp_path, JudgeConfig(), "steering", split=PromptSplit(8, 0.5),
                     progress=False)
    (tmp_path / "inference" / "prompt_split.json").unlink()
    with pytest.raises(ConfigError, match=r"no prompt split recorded.*--config"):
        run_evaluate(tmp_path, JudgeConfig(), "steering", progress=False)


def test_evaluate_writes_axbench_layout(tmp_path):
    df = write_steering_data(tmp_path)
    with FaultJudgeServer(default=by_criterion({"concept": 2, "instruction": 1,
                                                "fluency": 2})) as server:
        summary = run_evaluate(tmp_path, judge_config(server), "steering", progress=False)
        prompts = [r.prompt for r in server.received]
    assert summary.concepts_judged == 2 and summary.failed_judgements == 0
    assert summary.calls == len(prompts) == 2 * 10 * len(METHODS) * 3
    assert not any(f" i{i} " in p for p in prompts for i in range(5, 10))  # test split untouched
    lines = read_jsonl(tmp_path / "evaluate" / "steering.jsonl")
    assert sorted(line["concept_id"] for line in lines) == [0, 1]
    for line in lines:
        for method in METHODS:
            lm = line["results"]["LMJudgeEvaluator"][method]
            assert lm["factor"] == [0.5, 1.0]
            assert lm["lm_judge_rating"] == pytest.approx([1.5, 1.5])
            assert lm["relevance_concept_ratings"] == [2.0, 2.0]
            assert lm["relevance_instruction_ratings"] == [1.0, 1.0]
            assert lm["fluency_ratings"] == [2.0, 2.0]
            for key in ("raw_relevance_concept_ratings", "raw_relevance_instruction_ratings",
                        "raw_fluency_ratings", "raw_aggregated_ratings",
                        "relevance_concept_completions", "relevance_instruction_completions",
                        "fluency_completions"):
                assert len(lm[key]) == 10, key
            assert "Rating: [[2]]" in lm["relevance_concept_completions"][0]
            ppl = line["results"]["PerplexityEvaluator"][method]
            rows = df[(df.concept_id == line["concept_id"]) & (df.input_id < 5)]
            expected = rows.groupby("factor")[f"{method}_perplexity"].mean().tolist()
            assert ppl["factor"] == [0.5, 1.0] and ppl["perplexity"] == pytest.approx(expected)
            assert ppl["strength"] == pytest.approx([1.0, 2.0])
    data = pd.read_parquet(tmp_path / "evaluate" / "steering_data.parquet")
    assert len(data) == 20 and set(data["input_id"]) == {0, 1, 2, 3, 4}
    for method in METHODS:
        prefix = f"{method}_LMJudgeEvaluator"
        for suffix in ("", "_relevance_concept_ratings", "_relevance_concept_completions",
                       "_relevance_instruction_ratings", "_relevance_instruction_completions",
                       "_fluency_ratings", "_fluency_completions"):
            assert prefix + suffix in data.columns
        assert data[prefix].tolist() == pytest.approx([1.5] * 20)
    assert {"concept_id", "input_concept", "input_id", "factor", "original_prompt"} <= set(data)


def test_evaluate_steering_test_and_method_selection(tmp_path):
    write_steering_data(tmp_path, n_concepts=1)
    with FaultJudgeServer() as server:
        summary = run_evaluate(tmp_path, judge_config(server), "steering_test",
                               methods=["HyperSteer"], progress=False)
        prompts = [r.prompt for r in server.received]
    assert summary.calls == 10 * 3 and all("HyperSteer reply" in p for p in prompts)
    assert not any(f" i{i} " in p for p in prompts for i in range(5))
    [line] = read_jsonl(tmp_path / "evaluate" / "steering_test.jsonl")
    assert list(line["results"]["LMJudgeEvaluator"]) == ["HyperSteer"]


def test_evaluate_input_errors_name_file_and_column(tmp_path):
    data_path = tmp_path / "inference" / "steering_data.parquet"
    with pytest.raises(EvaluateError, match="steering_data.parquet.*not found"):
        run_evaluate(tmp_path, JudgeConfig(), "steering", progress=False)
    df = write_steering_data(tmp_path, n_concepts=1)
    missing = r"steering_data\.parquet.*'Missing_steered_generation'"
    with pytest.raises(EvaluateError, match=missing):
        run_evaluate(tmp_path, JudgeConfig(), "steering", methods=["Missing"], progress=False)
    df.drop(columns=["input_id"]).to_parquet(data_path)
    with pytest.raises(EvaluateError, match=r"steering_data\.parquet.*input_id"):
        run_evaluate(tmp_path, JudgeConfig(), "steering", progress=False)
    with pytest.raises(EvaluateError, match="mode"):
        split_by_input_id(df, "latent", PromptSplit(10, 0.5))


def test_cli_entry_point(tmp_path, monkeypatch, capsys):
    write_steering_data(tmp_path, n_concepts=1)
    with FaultJudgeServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        argv = ["--dump_dir", str(tmp_path), "--mode", "steering_test", "--no_progress"]
        assert main([*argv, "--method", "HyperSteer"]) == 0
        assert len(server.received) == 10 * 3
        assert cli.main(["evaluate", *argv, "--method", "Missing"]) == 2
    assert "'Missing_steered_generation'" in capsys.readouterr().err
    assert (tmp_path / "evaluate" / "steering_test_data.parquet").is_file()


def test_partial_failures_are_counted_then_rejudged_on_rerun(tmp_path):
    write_steering_data(tmp_path)
    bad = generation("HyperSteer", 0, 1, 0.5)

    def flaky(prompt):
        return ok("Cannot say.") if bad in prompt else ok("Fine.\nRating: [[2]]")

    with FaultJudgeServer(default=flaky) as server:
        config = judge_config(server, max_retries=1)
        first = run_evaluate(tmp_path, config, "steering", progress=False)
    assert first.failed_judgements == 3 and first.retries == 3 and first.concepts_judged == 2
    lines = {ln["concept_id"]: ln for ln in read_jsonl(tmp_path / "evaluate" / "steering.jsonl")}
    lm = lines[0]["results"]["LMJudgeEvaluator"]["HyperSteer"]
    row = 2  # rows are sorted by (input_id, factor): input 1, factor 0.5 is the third row
    assert lm["raw_relevance_concept_ratings"][row] is None and lm["failed_judgements"] == 3
    assert lm["raw_aggregated_ratings"][row] == 0.0
    assert lm["lm_judge_rating"] == pytest.approx([2.0 * 4 / 5, 2.0])  # failure counts as 0
    data = pd.read_parquet(tmp_path / "evaluate" / "steering_data.parquet")
    assert data["HyperSteer_LMJudgeEvaluator_fluency_ratings"].isna().sum() == 1
    with FaultJudgeServer() as healthy:
        second = run_evaluate(tmp_path, judge_config(healthy), "steering", progress=False)
        assert all(bad in r.prompt for r in healthy.received)
    assert (second.calls, second.concepts_judged, second.concepts_skipped) == (3, 1, 1)
    lines = read_jsonl(tmp_path / "evaluate" / "steering.jsonl")
    assert sorted(ln["concept_id"] for ln in lines) == [0, 1]  # replaced, not duplicated
    assert all(ln["results"]["LMJudgeEvaluator"]["HyperSteer"]["failed_judgements"] == 0
               for ln in lines)


def test_failed_judgements_are_counted_in_the_summary_and_the_report(tmp_path):
    """Failed judgements are scored 0 (as in AxBench) and the run exits 0, so they must be
    visible: the evaluate summary and report.md give the count per method and split and say
    that re-running evaluate re-judges them."""
    from axbench_hypersteer.stages.report import write_report

    write_steering_data(tmp_path)
    bad = generation("HyperSteer", 0, 1, 0.5)  # a steering row (input 1): 3 criteria fail

    def flaky(prompt):
        return ok("Cannot say.") if bad in prompt else ok("Fine.\nRating: [[2]]")

    with FaultJudgeServer(default=flaky) as server:
        first = run_evaluate(tmp_path, judge_config(server, max_retries=0), "steering",
                             progress=False)
        run_evaluate(tmp_path, judge_config(server), "steering_test", progress=False)
    assert "re-run `hypersteer evaluate --mode steering` to re-judge" in first.format()
    report = write_report({"results": tmp_path}, tmp_path / "report").read_text()
    assert "## Failed judgements" in report and "| results | HyperSteer | 3 | 0 |" in report
    assert "PromptSteering" not in report.split("## Failed judgements")[1].split("## ")[0]
    assert "Re-running `hypersteer evaluate`" in report


def test_judge_dying_mid_run_loses_nothing(tmp_path):
    write_steering_data(tmp_path, n_concepts=3)
    per_concept = 10 * len(METHODS) * 3
    with FaultJudgeServer(die_after=per_concept + 15) as dying:
        with pytest.raises(JudgeUnavailableError, match="re-run to resume"):
            run_evaluate(tmp_path, judge_config(dying, max_retries=1), "steering",
                         progress=False)
        answered = {r.prompt for r in dying.received[: per_concept + 15]}
    jsonl = tmp_path / "evaluate" / "steering.jsonl"
    done_first = {ln["concept_id"] for ln in read_jsonl(jsonl)}
    assert 1 <= len(done_first) < 3
    assert len(JudgeCache(tmp_path / "evaluate" / "judge_cache.jsonl")) == len(answered)
    with FaultJudgeServer() as healthy:
        summary = run_evaluate(tmp_path, judge_config(healthy), "steering", progress=False)
        sent = [r.prompt for r in healthy.received]
    assert summary.concepts_skipped == len(done_first)
    assert summary.concepts_judged == 3 - len(done_first)
    assert not set(sent) & answered and len(sent) == len(set(sent)) == summary.calls
    assert summary.calls == 3 * per_concept - len(answered)
    assert summary.cache_hits == len(answered) - per_concept * len(done_first)
    assert sorted(ln["concept_id"] for ln in read_jsonl(jsonl)) == [0, 1, 2]


def test_rerun_is_free_and_survives_a_torn_jsonl_line(tmp_path):
    write_steering_data(tmp_path)
    with FaultJudgeServer() as server:
        config = judge_config(server)
        run_evaluate(tmp_path, config, "steering", progress=False)
        again = run_evaluate(tmp_path, config, "steering", progress=False)
        assert (again.calls, again.concepts_skipped, again.concepts_judged) == (0, 2, 0)
        jsonl = tmp_path / "evaluate" / "steering.jsonl"
        text = jsonl.read_text()
        jsonl.write_text(text[: len(text) - 200])  # a kill in the middle of the last line
        healed = run_evaluate(tmp_path, config, "steering", progress=False)
        assert (healed.calls, healed.concepts_judged, healed.cache_hits) == (0, 1, 60)
        first_line = jsonl.read_text().splitlines()[0]
        jsonl.write_text(first_line)  # whole line but its newline lost, the next line never written
        healed = run_evaluate(tmp_path, config, "steering", progress=False)
        assert (healed.calls, healed.concepts_judged, healed.cache_hits) == (0, 1, 60)
        assert len(server.received) == 120
    assert sorted(ln["concept_id"] for ln in read_jsonl(jsonl)) == [0, 1]


def test_api_key_never_written_or_logged(tmp_path, fake_key, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    # The CLI quiets these loggers; an earlier in-process CLI test must not hide them from here.
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=noisy)
    write_steering_data(tmp_path, n_concepts=1)
    script = [status(401), status(500), status(429, "0"), empty()]
    with FaultJudgeServer(script) as server:
        summary = run_evaluate(tmp_path, judge_config(server, concurrency=1), "steering",
                               progress=True)
        assert server.received[0].headers["authorization"] == f"Bearer {fake_key}"
    assert summary.failed_judgements == 1 and summary.retries == 3
    captured = capsys.readouterr()
    assert "1 failed judgement" in captured.out
    assert any(r.name.startswith("openai") for r in caplog.records)  # SDK debug logs were seen
    for text in (caplog.text, captured.out, captured.err):
        assert fake_key not in text and fake_key[8:] not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        assert fake_key[8:].encode() not in path.read_bytes(), path


# --- offline stand-in judge ---------------------------------------------------------------------

def test_offline_judge_speaks_openai_and_drives_evaluate(tmp_path, monkeypatch):
    server, base_url = start_offline_judge()
    try:
        prompt = build_prompt(load_templates(), "concept", concept="rental equipment",
                              sentence="Our rental shop lends equipment.")
        request = urllib.request.Request(
            f"{base_url}/chat/completions", method="POST",
            data=json.dumps({"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": prompt}]}).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
        assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
        assert body["id"] and isinstance(body["created"], int)
        assert body["choices"][0]["finish_reason"] == "stop"
        content = body["choices"][0]["message"]["content"]
        assert content.startswith("Offline rule-based stand-in judge (not an LLM).")
        assert parse_rating(content) == 2.0
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base_url}/completions", data=b"{}", timeout=5)

        monkeypatch.delenv("OPENAI_API_KEY")
        write_steering_data(tmp_path, n_concepts=1)
        config = JudgeConfig(base_url=base_url, concurrency=8, backoff_base=0.001)
        summary = run_evaluate(tmp_path, config, "steering", progress=False)
    finally:
        stop_offline_judge(server)
    assert summary.failed_judgements == 0 and summary.calls == 60
    [line] = read_jsonl(tmp_path / "evaluate" / "steering.jsonl")
    lm = line["results"]["LMJudgeEvaluator"]["HyperSteer"]
    assert set(lm["raw_fluency_ratings"]) <= {0.0, 1.0, 2.0}
    assert lm["raw_relevance_instruction_ratings"][0] >= 1.0  # "tides" is echoed
