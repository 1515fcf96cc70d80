"""The demo's trained base LM and its held-out steering, judged by the embedding stand-in.

One module-scoped fixture trains the demo's base LM exactly as ``hypersteer demo`` does (about a
minute of CPU) and its hypernetwork as the demo does (without the dev evaluations); every test
here reads them and none modifies them.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from axbench_hypersteer.demo import run as demo
from axbench_hypersteer.demo.concepts import CONCEPTS, HELD_OUT_CONCEPTS
from axbench_hypersteer.demo.data import ALL_TRAINING_CONCEPTS, HELD_OUT_METADATA
from axbench_hypersteer.demo.lm import DemoLMConfig, train_demo_lm
from axbench_hypersteer.model.generation import SteerRow, steer_rows
from axbench_hypersteer.stages.inference_stage import load_prompts
from axbench_hypersteer.judge.embedding_rules import EmbeddingScorer

STEERED_FACTORS = (1.0, 1.5, 2.0)
# What descriptions share without carrying a concept's meaning.
FUNCTION_WORDS = {"references", "mentions", "to", "of", "the", "and"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.model.loading import load_base
    from axbench_hypersteer.stages.common import method_dir
    from axbench_hypersteer.stages.run_config import load_run_config
    from axbench_hypersteer.stages.train_stage import train_method

    dump = tmp_path_factory.mktemp("demo")
    config_path = demo.prepare(dump, progress=False)
    config = yaml.safe_load(config_path.read_text())
    config["train"]["models"][demo.METHOD].update(dev_examples=0)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = load_run_config(config_path)
    base = load_base(run.model_name)
    torch.manual_seed(0)
    train_method(run, run.method(demo.METHOD), dump, dump, base=base, progress=False)
    hs = HyperSteer.from_pretrained(method_dir(dump, demo.METHOD), *base)
    hs.hypernet.eval()
    return dump, hs


@pytest.fixture(scope="module")
def scorer():
    return EmbeddingScorer()


def generate(hs, prompts, concepts, factor):
    rows = [SteerRow(hs.format_prompts([p])[0], p, c, factor) for c in concepts for p in prompts]
    return steer_rows(hs, rows, batch_size=64, max_new_tokens=32, temperature=0.0,
                      compute_perplexity=False)["steered_generation"]


def test_held_out_concepts_never_reach_training(trained):
    dump, _ = trained
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


def test_held_out_steering_raises_the_concept_score(trained, scorer):
    """The paper's central claim on the demo: concepts the hypernetwork never saw are steered
    toward. Measured rises (best steered factor over factor 0, 4 prompts): held-out +1.04,
    held-in +1.55; the margins are about half of that."""
    _, hs = trained
    _, prompts = load_prompts(None)
    prompts = prompts[:4]
    for concepts, margin in ((HELD_OUT_CONCEPTS, 0.5), (demo.HELD_IN_EVAL, 0.8)):
        means = {}
        for factor in (0.0, *STEERED_FACTORS):
            texts = generate(hs, prompts, concepts, factor)
            named = (c for c in concepts for _ in prompts)
            scores = [scorer.concept_score(c, t) for c, t in zip(named, texts)]
            means[factor] = sum(scores) / len(scores)
        assert max(means[f] for f in STEERED_FACTORS) >= means[0.0] + margin, (concepts, means)


def test_base_lm_is_deterministic_for_a_seed():
    small = DemoLMConfig(hidden_size=32, num_layers=2, num_heads=2, steps=3, batch_size=4)
    first, tok_a, loss_a = train_demo_lm(small, progress=False)
    second, tok_b, loss_b = train_demo_lm(small, progress=False)
    assert loss_a == loss_b and tok_a.get_vocab() == tok_b.get_vocab()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    other, _, _ = train_demo_lm(DemoLMConfig(**{**small.__dict__, "seed": 1}), progress=False)
    assert not torch.equal(other.lm_head.weight, first.lm_head.weight)
