"""The demo's trained base LM and its held-out steering, judged by the embedding stand-in.

One module-scoped fixture trains the demo's base LM and its hypernetwork exactly as
``hypersteer demo`` does with its default seed and one thread (about two minutes of CPU); every
test here reads them and none modifies them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from axbench_hypersteer.demo import run as demo
from axbench_hypersteer.demo.concepts import CONCEPTS, HELD_OUT_CONCEPTS
from axbench_hypersteer.demo.data import ALL_TRAINING_CONCEPTS, HELD_OUT_METADATA
from axbench_hypersteer.demo.lm import DemoLMConfig, train_demo_lm
from axbench_hypersteer.model.generation import SteerRow, steer_rows
from axbench_hypersteer.stages.inference_stage import load_prompts
from axbench_hypersteer.judge.embedding_rules import EmbeddingScorer

STEERED_FACTORS = (1.0, 1.5, 2.0)
# `concept_rise` measured on the demo's hypernetworks of seeds 42, 7, 1 (one thread): held-out
# +0.875, +0.911, +0.765; held-in +1.305, +1.430, +1.426. Bounds: the lowest less a margin
# (0.26, 0.3) larger than the spread over seeds, since another machine's rounding moves the
# trained hypernetwork as a seed does (docs/benchmarks.md, issue 21).
HELD_OUT_RISE_BOUND = 0.5
HELD_IN_RISE_BOUND = 1.0
# What descriptions share without carrying a concept's meaning.
FUNCTION_WORDS = {"references", "mentions", "to", "of", "the", "and"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from axbench_hypersteer.model.loading import load_base
    from axbench_hypersteer.stages.run_config import load_run_config
    from axbench_hypersteer.stages.train_stage import train_method

    dump = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo: the same weights as its default run on this machine
    try:
        config_path = demo.prepare(dump, progress=False)
        run = load_run_config(config_path)
        base = load_base(run.model_name)
        train_method(run, run.method(demo.METHOD), dump, dump, base=base, progress=False)
        yield dump, load_trained(dump, base)
    finally:
        torch.set_num_threads(threads)


def load_trained(dump, base):
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.stages.common import method_dir

    hs = HyperSteer.from_pretrained(method_dir(dump, demo.METHOD), *base)
    hs.hypernet.eval()
    return hs


@pytest.fixture(scope="module")
def scorer():
    return EmbeddingScorer()


def generate(hs, prompts, concepts, factor):
    rows = [SteerRow(hs.format_prompts([p])[0], p, c, factor) for c in concepts for p in prompts]
    return steer_rows(hs, rows, batch_size=64, max_new_tokens=32, temperature=0.0,
                      compute_perplexity=False)["steered_generation"]


def test_held_out_concepts_never_reach_training(trained):
    dump, _ = trained
    assert len(HELD_OUT_CONCEPTS) >= 16  # issue 21: enough that one concept's luck moves little
    frame = pd.read_parquet(dump / "generate" / "train_data.parquet")
    trained_on = set(frame["output_concept"]) - {"EEEEE"}
    assert trained_on == set(ALL_TRAINING_CONCEPTS) and len(trained_on) == 512
    held_out = [json.loads(x)["concept"]
                for x in (dump / "generate" / HELD_OUT_METADATA).read_text().splitlines()]
    assert held_out == HELD_OUT_CONCEPTS and not set(held_out) & trained_on
    # Not even a word: no held-out noun or description word is in a training description or
    # in a training positive.
    held_out_words = {w for c in held_out for w in [*CONCEPTS[c], *c.split()]} - FUNCTION_WORDS
    words = lambda texts: {w.strip(",.").lower() for t in texts for w in t.split()}  # noqa: E731
    assert not held_out_words & words(trained_on)
    assert not held_out_words & words(frame.loc[frame["category"] == "positive", "output"])
    _, prompts = load_prompts(None)
    assert not set(prompts) & set(frame["input"])  # evaluation prompts are unseen too


def test_base_lm_answers_on_topic_at_factor_0(trained, scorer):
    _, hs = trained
    _, prompts = load_prompts(None)
    texts = generate(hs, prompts, ["references to law and courts"], 0.0)
    scores = [scorer.instruction_score(p, t) for p, t in zip(prompts, texts)]
    assert sum(s > 0 for s in scores) >= 0.8 * len(prompts), list(zip(texts, scores))
    assert sum(scores) / len(scores) >= 1.0


def concept_rise(hs, scorer, concepts) -> tuple[float, dict[float, float]]:
    """Best mean concept score over ``STEERED_FACTORS`` minus factor 0's, on the first 4
    evaluation prompts; and the means by factor."""
    _, prompts = load_prompts(None)
    prompts = prompts[:4]
    means = {}
    for factor in (0.0, *STEERED_FACTORS):
        texts = generate(hs, prompts, concepts, factor)
        named = (c for c in concepts for _ in prompts)
        scores = [scorer.concept_score(c, t) for c, t in zip(named, texts)]
        means[factor] = sum(scores) / len(scores)
    return max(means[f] for f in STEERED_FACTORS) - means[0.0], means


def test_held_out_steering_raises_the_concept_score(trained, scorer):
    """The paper's central claim on the demo: concepts the hypernetwork never saw are steered
    toward. The bounds are the lowest rise measured over hypernetwork seeds, less a margin, so
    that another machine's rounding or a seed's luck does not decide the test."""
    _, hs = trained
    for concepts, bound in ((HELD_OUT_CONCEPTS, HELD_OUT_RISE_BOUND),
                            (demo.HELD_IN_EVAL, HELD_IN_RISE_BOUND)):
        rise, means = concept_rise(hs, scorer, concepts)
        assert rise >= bound, (len(concepts), means)


def test_base_lm_is_deterministic_for_a_seed():
    small = DemoLMConfig(hidden_size=32, num_layers=2, num_heads=2, steps=3, batch_size=4)
    first, tok_a, loss_a = train_demo_lm(small, progress=False)
    second, tok_b, loss_b = train_demo_lm(small, progress=False)
    assert loss_a == loss_b and tok_a.get_vocab() == tok_b.get_vocab()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    other, _, _ = train_demo_lm(DemoLMConfig(**{**small.__dict__, "seed": 1}), progress=False)
    assert not torch.equal(other.lm_head.weight, first.lm_head.weight)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    from axbench_hypersteer.demo.report import bootstrap_ci

    values = np.random.default_rng(3).uniform(0, 2, size=16)
    low, high = bootstrap_ci(values)
    assert (low, high) == bootstrap_ci(values)  # seeded: the report prints the same interval
    assert low < values.mean() < high
    wide_low, wide_high = bootstrap_ci(values[:4])
    assert high - low < wide_high - wide_low  # more concepts, a tighter interval
    assert bootstrap_ci(np.full(8, 1.25)) == (1.25, 1.25)
    assert all(np.isnan(bootstrap_ci([1.0])))


def test_concept_rise_pairs_concepts_and_runs_table_shows_the_range(tmp_path):
    from axbench_hypersteer.demo.report import concept_rise, runs_table

    per_concept = pd.DataFrame({
        "concept_id": [1, 2, 1, 2], "concept": [1.5, 1.0, 0.5, 0.0],
        "method": ["M", "M", "unsteered (factor 0)", "unsteered (factor 0)"],
        "concepts": "held-out"})
    mean, low, high = concept_rise(per_concept, "M", "held-out")
    assert mean == 1.0 and low == high == 1.0  # each concept rose by exactly 1
    paths = []
    for i, steered in enumerate((0.8, 1.2)):
        rows = pd.DataFrame([{"method": "M", "concepts": "held-out", "n_concepts": 16},
                             {"method": "unsteered (factor 0)", "concepts": "held-out",
                              "n_concepts": 16}])
        for key in ("overall", "concept", "instruction", "fluency", "factor"):
            rows[f"{key}_mean"] = [steered, 0.1]
        paths.append(tmp_path / f"run{i}.csv")
        rows.to_csv(paths[-1], index=False)
    lines = runs_table(paths).splitlines()
    assert "| M | held-out | 1.000 [0.800, 1.200] |" in lines[2]
    assert "| unsteered (factor 0) | held-out | 0.100 | 0.100 |" in lines[3]


def test_demo_threads_knob(monkeypatch):
    from axbench_hypersteer.model.errors import ConfigError

    monkeypatch.delenv(demo.THREADS_ENV, raising=False)
    assert demo.demo_threads() == 1
    monkeypatch.setenv(demo.THREADS_ENV, "2")
    assert demo.demo_threads() == 2 and demo.demo_threads(3) == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(demo.THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=demo.THREADS_ENV):
            demo.demo_threads()
