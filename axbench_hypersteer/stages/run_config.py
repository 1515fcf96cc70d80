"""Read an AxBench-format sweep YAML into this package's config dataclasses.

One YAML serves both ways of running: AxBench's own scripts read its ``generate``/``train``/
``inference``/``evaluate`` sections (and silently drop per-model keys they do not know), while
this module reads the same file strictly. HyperSteer's own per-method keys sit next to AxBench's
in ``train.models.<Method>``; settings with no AxBench counterpart (judge endpoint, prompt file,
evaluation concepts) live in a top-level ``hypersteer`` section that AxBench never reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.config import (ConfigError, HyperSteerConfig, InferenceConfig, JudgeConfig,
                           TrainConfig, read_yaml_mapping)

# AxBench method name -> variant. Class names are the artifact keys; the snake_case aliases are
# what users type (`--method hypersteer_xattn`).
METHOD_VARIANTS = {
    "HyperSteerNoContext": "nocontext",
    "HyperSteerInContext": "incontext",
    "HyperSteerXAttn": "xattn",
}
METHOD_ALIASES = {
    "hypersteer_nocontext": "HyperSteerNoContext",
    "hypersteer_incontext": "HyperSteerInContext",
    "hypersteer_xattn": "HyperSteerXAttn",
}

# AxBench per-model keys that mean nothing to a hypernetwork; accepted so that one YAML can list
# HyperSteer next to AxBench's own methods, and ignored.
AXBENCH_IGNORED_MODEL_KEYS = {
    "topk", "coeff_l1_loss_null", "coeff_l1_loss", "coeff_l2_loss", "coeff_norm_loss",
    "low_rank_dimension", "dataset_category", "intervention_positions", "intervention_layers",
    "exclude_bos", "binarize_dataset", "intervention_type", "coeff_latent_l1_loss", "reft_layers",
    "reft_positions", "reft_type", "lora_layers", "lora_components", "lora_alpha",
    "temperature_start", "temperature_end", "train_on_negative", "use_synergy", "bow_penalty",
    "bow_C",
}
AXBENCH_INFERENCE_KEYS_IGNORED = {
    "models", "use_bf16", "model_name", "output_length", "latent_num_of_examples",
    "latent_batch_size", "steering_intervention_type", "steering_model_name", "steering_datasets",
    "steering_layers", "master_data_dir", "lm_model", "n_steering_factors", "dataset_category",
    "lm_use_cache", "disable_neuronpedia_max_act", "imbalance_factor", "data_dir", "train_dir",
    "dump_dir", "concept_path", "num_of_examples", "rotation_freq", "max_concepts", "run_name",
    "overwrite_data_dir", "input_length",
}
TRAIN_SECTION_KEYS = {
    "model_name", "layer", "component", "seed", "use_bf16", "max_concepts",
    "max_num_of_examples", "models", "data_dir", "dump_dir", "run_name", "concept_path",
    "overwrite_data_dir", "overwrite_metadata_dir", "overwrite_inference_data_dir",
}


def canonical_method(name: str) -> str:
    """``hypersteer_xattn`` -> ``HyperSteerXAttn``; class names pass through."""
    if name in METHOD_VARIANTS:
        return name
    if name in METHOD_ALIASES:
        return METHOD_ALIASES[name]
    known = sorted(METHOD_VARIANTS) + sorted(METHOD_ALIASES)
    raise ConfigError(f"unknown HyperSteer method {name!r}; known: {known}")


def is_hypersteer_method(name: str) -> bool:
    return name in METHOD_VARIANTS or name in METHOD_ALIASES


@dataclass
class MethodSpec:
    name: str
    model: HyperSteerConfig
    train: TrainConfig


@dataclass
class RunConfig:
    path: str
    model_name: str
    layer: int
    component: str = "res"
    seed: int = 42
    use_bf16: bool = False
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    other_methods: list[str] = field(default_factory=list)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eval_concepts: str | None = None
    raw: dict = field(default_factory=dict)

    def method(self, name: str | None = None) -> MethodSpec:
        """The named HyperSteer method, or the only one when ``name`` is None."""
        if name is None:
            if len(self.methods) != 1:
                raise ConfigError(f"{self.path}: several HyperSteer methods "
                                  f"{sorted(self.methods)}; pick one with --method")
            return next(iter(self.methods.values()))
        canonical = canonical_method(name)
        if canonical not in self.methods:
            raise ConfigError(f"{self.path}: method {canonical!r} is not listed in train.models "
                              f"(listed: {sorted(self.methods) + self.other_methods})")
        return self.methods[canonical]


def _from_dict(cls: type, data: dict, where: str):
    """``cls.from_dict`` whose value checks (``__post_init__``) also name the file and section."""
    try:
        return cls.from_dict(data, where)
    except ConfigError as err:
        if str(err).startswith(where):
            raise
        raise ConfigError(f"{where}.{err}") from None


def _split_method_keys(name: str, entry: dict, layer: int, seed: int, where: str) -> MethodSpec:
    model_fields = {f.name for f in dataclasses.fields(HyperSteerConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_kw: dict[str, Any] = {"steering_layer": layer, "seed": seed,
                                "variant": METHOD_VARIANTS[name]}
    train_kw: dict[str, Any] = {"seed": seed}
    for key, value in entry.items():
        if key == "steering_layer":
            raise ConfigError(f"{where}.steering_layer: set the layer once, as train.layer")
        if key == "variant" and value != METHOD_VARIANTS[name]:
            raise ConfigError(f"{where}.variant: {value!r} contradicts the method name {name}")
        if key in model_fields:
            model_kw[key] = value
        elif key in train_fields:
            train_kw[key] = value
        elif key not in AXBENCH_IGNORED_MODEL_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}; HyperSteer keys are "
                f"{sorted((model_fields | train_fields) - {'steering_layer'})}"
            )
    return MethodSpec(name, _from_dict(HyperSteerConfig, model_kw, where),
                      _from_dict(TrainConfig, train_kw, where))


def load_run_config(path: str | Path) -> RunConfig:
    """Parse and validate an AxBench-format YAML. Errors name the file and the key."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    train, models = _train_section(path, raw)
    run = RunConfig(path=str(path), model_name=str(train["model_name"]), layer=train["layer"],
                    component=train.get("component", "res"), seed=train.get("seed", 42),
                    use_bf16=bool(train.get("use_bf16", False)), raw=raw)
    _add_methods(run, path, train, models)
    _add_inference_and_judge(run, path, raw)
    return run


def _train_section(path: Path, raw: dict) -> tuple[dict, dict]:
    """(``train``, its ``models`` as a mapping), refused before anything is built from them."""
    train = raw.get("train")
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: missing 'train' section")
    unknown = sorted(set(train) - TRAIN_SECTION_KEYS)
    if unknown:
        raise ConfigError(f"{path}: train: unknown key(s) {unknown}")
    for key in ("model_name", "layer"):
        if key not in train:
            raise ConfigError(f"{path}: train.{key} is required")
    layer = train["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"{path}: train.layer must be an integer, got {layer!r}")
    models = train.get("models") or {}
    if isinstance(models, list):
        models = {m: {} for m in models}
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}: train.models must list at least one method")
    return train, models


def _add_methods(run: RunConfig, path: Path, train: dict, models: dict) -> None:
    """HyperSteer entries become method specs; AxBench's other methods are only named, so that
    one config can drive both tools."""
    for name, entry in models.items():
        where = f"{path}: train.models.{name}"
        if not is_hypersteer_method(name):
            run.other_methods.append(name)
            continue
        canonical = canonical_method(name)
        if entry is not None and not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping of hyperparameters")
        entry = dict(entry or {})
        for key in ("max_concepts", "max_num_of_examples"):  # section-level AxBench keys
            if train.get(key) is not None:
                entry.setdefault(key, train[key])
        run.methods[canonical] = _split_method_keys(canonical, entry, run.layer, run.seed, where)


def _add_inference_and_judge(run: RunConfig, path: Path, raw: dict) -> None:
    """Inference and judge settings come from AxBench's sections, with this package's own
    ``hypersteer`` section taking the keys AxBench has no place for."""
    inference = dict(raw.get("inference") or {})
    plugin = dict(raw.get("hypersteer") or {})
    evaluate = dict(raw.get("evaluate") or {})
    inf_kw = {k: v for k, v in inference.items() if k not in AXBENCH_INFERENCE_KEYS_IGNORED}
    for key in ("prompts_path", "rows_per_call"):
        if key in plugin:
            inf_kw[key] = plugin.pop(key)
    if "winrate_split_ratio" in evaluate and evaluate["winrate_split_ratio"] is not None:
        inf_kw.setdefault("split_ratio", evaluate["winrate_split_ratio"])
    run.inference = _from_dict(InferenceConfig, inf_kw, f"{path}: inference")
    judge_kw = dict(plugin.pop("judge", None) or {})
    if "lm_model" in evaluate:
        judge_kw.setdefault("lm_model", evaluate["lm_model"])
    run.judge = _from_dict(JudgeConfig, judge_kw, f"{path}: hypersteer.judge")
    run.eval_concepts = plugin.pop("eval_concepts", None)
    if plugin:
        raise ConfigError(f"{path}: hypersteer: unknown key(s) {sorted(plugin)}; "
                          "known: prompts_path, rows_per_call, judge, eval_concepts")
    inference_models = inference.get("models") or []
    for name in inference_models:
        if is_hypersteer_method(name) and canonical_method(name) not in run.methods:
            raise ConfigError(f"{path}: inference.models lists {name!r} but train.models does "
                              "not (AxBench looks every inference method up in train.models)")
