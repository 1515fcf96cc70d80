"""Config dataclasses: unknown keys, wrong types and impossible values raise ConfigError naming the
key; YAML round trips; settings the base model cannot satisfy are rejected by HyperSteer."""

import dataclasses
import math

import pytest
import yaml

from axbench_hypersteer.model.config import (ConfigError, HyperSteerConfig, InferenceConfig,
                                            JudgeConfig, TrainConfig)
from axbench_hypersteer.model.hypersteer import HyperSteer

ALL = (HyperSteerConfig, TrainConfig, InferenceConfig, JudgeConfig)


# ----- unknown keys and types -----------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_unknown_key_is_named(cls):
    with pytest.raises(ConfigError, match=r"unknown key.*'no_such_key'") as err:
        cls.from_dict({"no_such_key": 1})
    assert cls.__name__ in str(err.value)  # where the key was found
    # The message lists the known keys, so a typo is easy to fix.
    assert dataclasses.fields(cls)[0].name in str(err.value)


def test_unknown_key_message_uses_given_location():
    with pytest.raises(ConfigError, match=r"^cfg\.yaml: train: unknown key\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1e-4, "lr": 1e-4}, where="cfg.yaml: train")


def test_judge_config_has_no_api_key_field():
    with pytest.raises(ConfigError, match="api_key"):
        JudgeConfig.from_dict({"api_key": "sk-test"})


@pytest.mark.parametrize("cls,key,value,expected", [
    (HyperSteerConfig, "num_blocks", "two", "expected an integer"),
    (HyperSteerConfig, "num_blocks", 2.0, "expected an integer"),
    (HyperSteerConfig, "steering_layer", True, "expected an integer"),
    (HyperSteerConfig, "variant", 3, "expected a string"),
    (HyperSteerConfig, "steering_layer", None, "must not be null"),
    (TrainConfig, "lr", "fast", "expected a number"),
    (TrainConfig, "lr", False, "expected a number"),
    (TrainConfig, "gradient_checkpointing", "yes", "expected true/false"),
    (TrainConfig, "gradient_checkpointing", 1, "expected true/false"),
    (InferenceConfig, "steering_factors", 1.0, "expected a list"),
    (InferenceConfig, "prompts_path", 7, "expected a string"),
    (JudgeConfig, "concurrency", "16", "expected an integer"),
])
def test_wrong_type_is_named(cls, key, value, expected):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{key}: {expected}"):
        cls.from_dict({key: value})


def test_numbers_are_coerced_where_safe():
    cfg = TrainConfig.from_dict({"lr": 1, "warmup_ratio": 0, "max_concepts": None})
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert isinstance(cfg.warmup_ratio, float)
    assert cfg.max_concepts is None
    # PyYAML (YAML 1.1) reads `1e-4` without a dot as a string; it is still a number.
    assert TrainConfig.from_dict({"lr": "1e-4"}).lr == pytest.approx(1e-4)
    assert TrainConfig.from_dict({"lr": "8.0e-05"}).lr == pytest.approx(8e-5)
    with pytest.raises(ConfigError, match="lr: expected a number"):
        TrainConfig.from_dict({"lr": "1e-4 please"})
    inf = InferenceConfig.from_dict({"steering_factors": [1, 2.5]})
    assert inf.steering_factors == [1.0, 2.5]
    assert all(isinstance(f, float) for f in inf.steering_factors)


# ----- impossible values ----------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("variant", "lora"),
    ("init", "zeros"),
    ("readout", "first_token"),
    ("dtype", "float64"),
    ("num_blocks", 0),
    ("cross_attention_heads", 0),
    ("steering_layer", -1),
])
def test_hypersteer_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        HyperSteerConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"{key}:"):
        HyperSteerConfig.from_dict({key: value})


def test_context_layer_must_not_be_later_than_steering_layer():
    with pytest.raises(ConfigError, match=r"^context_layer:.*steering_layer=2.*got 3"):
        HyperSteerConfig(steering_layer=2, context_layer=3)
    with pytest.raises(ConfigError, match="^context_layer:"):
        HyperSteerConfig(steering_layer=2, context_layer=-1)
    assert HyperSteerConfig(steering_layer=2, context_layer=2).resolved_context_layer == 2
    assert HyperSteerConfig(steering_layer=2, context_layer=0).resolved_context_layer == 0
    assert HyperSteerConfig(steering_layer=2).resolved_context_layer == 2


def test_in_context_template_needs_both_slots():
    with pytest.raises(ConfigError, match=r"in_context_template: must contain \{base_prompt\}"):
        HyperSteerConfig(variant="incontext", in_context_template="{steering_prompt} only")
    with pytest.raises(ConfigError, match=r"in_context_template: must contain \{steering_prompt\}"):
        HyperSteerConfig(variant="incontext", in_context_template="{base_prompt} only")
    # Only the in-context variant reads the template.
    HyperSteerConfig(variant="nocontext", in_context_template="unused")


@pytest.mark.parametrize("key,value", [
    ("batch_size", 0), ("n_epochs", 0), ("gradient_accumulation_steps", 0), ("max_length", 0),
    ("eval_every", 0), ("checkpoint_every", 0), ("keep_checkpoints", 0), ("log_every", 0),
    ("lr", 0.0), ("lr", -1.0), ("lr", math.inf), ("lr", math.nan),
    ("warmup_ratio", 1.0), ("warmup_ratio", -0.1),
    ("max_grad_norm", 0.0), ("max_grad_norm", -1.0),
    ("weight_decay", -0.01), ("lm_weight", -1.0), ("reconstruction_weight", -1.0),
    ("dev_examples", -1),
    ("objective", "contrastive"),
    ("max_concepts", 0), ("max_num_of_examples", 0), ("max_steps", 0),
])
def test_train_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        TrainConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"{key}:"):
        TrainConfig.from_dict({key: value})


def test_reconstruction_objective_needs_targets():
    for objective in ("reconstruction", "both"):
        with pytest.raises(ConfigError, match=rf"^reconstruction_targets: required.*{objective}"):
            TrainConfig(objective=objective)
        assert TrainConfig(objective=objective, reconstruction_targets="t.pt").objective == objective


@pytest.mark.parametrize("key,value", [
    ("steering_factors", []), ("steering_factors", ["strong"]), ("steering_factors", [True]),
    ("steering_factors", [math.nan]),
    ("steering_num_of_examples", 0), ("steering_batch_size", 0), ("steering_output_length", 0),
    ("rows_per_call", 0),
    ("split_ratio", 1.0), ("split_ratio", -0.5), ("temperature", -1.0),
])
def test_inference_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        InferenceConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"{key}:"):
        InferenceConfig.from_dict({key: value})


@pytest.mark.parametrize("key,value", [
    ("concurrency", 0), ("max_retries", -1), ("timeout", 0.0), ("timeout", -5.0),
    ("temperature", -0.5), ("backoff_base", -1.0), ("backoff_max", -1.0),
])
def test_judge_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        JudgeConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"{key}:"):
        JudgeConfig.from_dict({key: value})


def test_defaults_are_valid_and_documented_values():
    hs = HyperSteerConfig()
    assert (hs.variant, hs.steering_layer, hs.cross_attention_heads, hs.num_blocks) == (
        "xattn", 20, 8, None)
    assert len(InferenceConfig().steering_factors) == 14
    assert TrainConfig().objective == "lm"
    judge = JudgeConfig()
    assert (judge.concurrency, judge.max_retries, judge.timeout) == (16, 4, 60.0)  # README's


# ----- YAML -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    HyperSteerConfig(variant="incontext", num_blocks=3, init="random", steering_layer=5,
                     context_layer=4, readout="mean", dtype="bfloat16", seed=7,
                     in_context_template="S: {steering_prompt}\nB: {base_prompt}"),
    TrainConfig(batch_size=3, lr=8e-5, warmup_ratio=0.1, objective="both",
                reconstruction_targets="targets.pt", max_concepts=10, max_steps=5,
                gradient_checkpointing=True),
    InferenceConfig(steering_factors=[0.5, 1, 2.5], prompts_path="p.json", split_ratio=0.25),
    JudgeConfig(lm_model="judge", base_url="http://localhost:1", temperature=0.5, concurrency=2),
], ids=lambda c: type(c).__name__)
def test_yaml_round_trip(cfg, tmp_path):
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    loaded = type(cfg).from_yaml(path)
    assert loaded == cfg
    assert loaded != type(cfg)()  # the test really carries non-default values
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_yaml_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=rf"{missing}: config file not found"):
        TrainConfig.from_yaml(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid YAML"):
        TrainConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"{listy}: expected a mapping"):
        TrainConfig.from_yaml(listy)
    typo = tmp_path / "typo.yaml"
    typo.write_text("batch_sizes: 4\n")
    with pytest.raises(ConfigError, match=rf"{typo}: unknown key.*'batch_sizes'"):
        TrainConfig.from_yaml(typo)
    sci = tmp_path / "sci.yaml"
    sci.write_text("lr: 1e-4\nbatch_size: 2\n")  # PyYAML reads 1e-4 as a string
    assert TrainConfig.from_yaml(sci).lr == pytest.approx(1e-4)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert TrainConfig.from_yaml(empty) == TrainConfig()


# ----- against a base model -------------------------------------------------------------------
@pytest.mark.parametrize("overrides,key", [
    (dict(num_blocks=5), "num_blocks"),
    (dict(steering_layer=4), "steering_layer"),
    (dict(steering_layer=40), "steering_layer"),
    (dict(cross_attention_heads=3), "cross_attention_heads"),
    (dict(cross_attention_heads=128), "cross_attention_heads"),
])
def test_from_base_rejects_what_the_base_model_cannot_satisfy(tiny_model, tokenizer, overrides,
                                                              key):
    kw = dict(variant="xattn", steering_layer=2, num_blocks=2, cross_attention_heads=4)
    kw.update(overrides)
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(**kw))


def test_from_base_accepts_the_boundaries(tiny_model, tokenizer):
    # The last layer, the full depth, and head counts that divide 64.
    hs = HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=3, num_blocks=4, cross_attention_heads=8), backend="hook")
    assert len(hs.hypernet.body.layers) == 4
    assert len(hs.hypernet.cross_attentions) == 4
    assert hs.hypernet.cross_attentions[0].num_heads == 8
    # Heads only matter for the cross-attention variant.
    hs = HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(
        variant="nocontext", steering_layer=0, num_blocks=1, cross_attention_heads=3))
    assert len(hs.hypernet.cross_attentions) == 0 and len(hs.hypernet.body.layers) == 1


def test_hypersteer_section_sets_rows_per_call(tmp_path):
    """`rows_per_call` (the standalone sweep's generate-call size) has no AxBench key: it lives in
    the plugin's own section, apart from AxBench's per-concept `steering_batch_size`."""
    from axbench_hypersteer.stages.run_config import load_run_config

    path = tmp_path / "run.yaml"
    raw = {"train": {"model_name": "tiny", "layer": 2, "models": {"HyperSteerXAttn": {}}},
           "inference": {"steering_batch_size": 10}, "hypersteer": {"rows_per_call": 350}}
    path.write_text(yaml.safe_dump(raw))
    run = load_run_config(path)
    assert (run.inference.rows_per_call, run.inference.steering_batch_size) == (350, 10)
    raw["hypersteer"] = {"rows_per_call": 0}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="rows_per_call: must be >= 1"):
        load_run_config(path)
    del raw["hypersteer"]
    path.write_text(yaml.safe_dump(raw))
    assert load_run_config(path).inference.rows_per_call == InferenceConfig().rows_per_call
