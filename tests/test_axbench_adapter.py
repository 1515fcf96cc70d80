"""The AxBench adapter against the calls AxBench's scripts make (see docs/axbench-integration.md).

AxBench is not installable here, so the Model classes are driven by replaying exactly the call
sequence and keyword arguments of AxBench's ``train.py`` and ``inference.py`` on the tiny Gemma-2
(saved to disk and loaded by name, as AxBench does) and the real Concept10 data. The launcher is
exercised against a fake minimal ``axbench`` package that records what it is handed. Where the
real AxBench is importable, the replay runs against it too (the classes then derive from its
``Model`` and are looked up on the real module).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import textwrap
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from axbench_hypersteer.axbench import launcher, registry
from axbench_hypersteer.axbench import models as ax_models
from axbench_hypersteer.axbench.models import (HyperSteerInContext, HyperSteerNoContext,
                                               HyperSteerXAttn)
from axbench_hypersteer.model.tokens import format_prompt
from axbench_hypersteer.model.config import ConfigError
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.stages import train_stage
from axbench_hypersteer.stages.run_config import load_run_config
from axbench_hypersteer.testing.tiny import build_tiny_gemma2, save_tiny

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweep_configs"
METHODS = sorted(registry.CLASSES)  # train.py iterates sorted(args.models)
PROMPTS = ["Write a short poem about the sea.",
           "Explain how a bicycle works, step by step, for a curious child."]
INSTALL_LINE = ('pip install -c constraints.txt --ignore-requires-python '
                '"axbench @ git+https://github.com/stanfordnlp/axbench"')


def _real_axbench():
    if importlib.util.find_spec("axbench") is None:
        return None
    try:
        return registry.import_axbench()
    except registry.AxBenchNotInstalled:
        return None


REAL_AXBENCH = _real_axbench()
needs_real_axbench = pytest.mark.skipif(REAL_AXBENCH is None, reason="AxBench not importable")


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def axbench_ns():
    """What AxBench's scripts call ``getattr`` on: the real module, else a stand-in."""
    return registry.register(REAL_AXBENCH or types.ModuleType("axbench_standin"))


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    model = build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)
    return save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def cfg_path(tiny_dir, tmp_path_factory):
    """sweep_configs/tiny_cpu.yaml with the saved tiny model as model_name."""
    raw = yaml.safe_load((SWEEP / "tiny_cpu.yaml").read_text())
    for section in ("train", "inference"):
        raw[section]["model_name"] = str(tiny_dir)
    raw["inference"]["steering_model_name"] = str(tiny_dir)
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def base(tiny_dir):
    """The LM and tokenizer as AxBench loads them (right padding, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir, model_max_length=512)
    tok.padding_side = "right"
    return model, tok


def _model_params(entry: dict) -> types.SimpleNamespace:
    """AxBench's ModelParams: every hierarchical key reset to None, then the YAML's keys."""
    keys = ("batch_size", "n_epochs", "lr", "low_rank_dimension", "intervention_positions",
            "intervention_type", "exclude_bos", "binarize_dataset", "train_on_negative",
            "use_synergy", "gradient_accumulation_steps", "weight_decay")
    params = {k: None for k in keys}
    params.update({k: v for k, v in entry.items() if k in keys})
    return types.SimpleNamespace(**params)


def _metadata(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "metadata.jsonl").read_text().splitlines()]


def _prepared_df(frame: pd.DataFrame, cid: int, tok, max_num_of_examples: int) -> pd.DataFrame:
    """train.py's prepare_df for a chat model, binarize false, no negatives: the concept's
    positives with ``input`` replaced by the chat-formatted user turn (BOS stripped)."""
    pos = frame[(frame["concept_id"] == cid) & (frame["category"] == "positive")]
    pos = pos.head(max_num_of_examples // 2).copy()
    pos["input"] = [format_prompt(tok, text) for text in pos["input"]]
    return pos.reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(concept10_dir, cfg_path, base, axbench_ns, tmp_path_factory):
    """Replay AxBench's train.py for every concept and method; returns what was observed."""
    model, tok = base
    raw = yaml.safe_load(cfg_path.read_text())
    train_cfg = raw["train"]
    data_dir = concept10_dir / "generate"
    metadata = _metadata(data_dir)
    frame = pd.read_parquet(data_dir / "train_data.parquet")
    concepts = sorted(c for c in frame["concept_id"].unique() if c >= 0)
    concepts = concepts[: train_cfg["max_concepts"]]
    dump = tmp_path_factory.mktemp("dump")
    train_dir = dump / "train"
    calls, ax_modules = [], []
    real_train_method = train_stage.train_method

    def spy(run, spec, data, dump_dir, **kwargs):
        calls.append((spec.name, Path(data), Path(dump_dir), kwargs.get("base")))
        return real_train_method(run, spec, data, dump_dir, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_stage, "train_method", spy)
        mp.setattr(sys, "argv", ["train.py", "--config", str(cfg_path), "--dump_dir", str(dump)])
        mp.delenv(ax_models.CONFIG_ENV, raising=False)
        for cid in concepts:
            for name in sorted(train_cfg["models"]):
                params = _model_params(train_cfg["models"][name])
                bm = getattr(axbench_ns, name)(
                    model, tok, layer=train_cfg["layer"], training_args=params,
                    lm_model_name=train_cfg["model_name"], device="cpu", seed=train_cfg["seed"])
                bm.make_model(
                    mode="train", low_rank_dimension=params.low_rank_dimension or 1, dtype=None,
                    intervention_type=params.intervention_type, concept_id=int(cid),
                    sae_params=None, metadata_path=str(data_dir / "metadata.jsonl"),
                    dump_dir=train_dir, model_params=params)
                ax_modules.append(bm.ax)
                prepared = _prepared_df(frame, cid, tok, train_cfg["max_num_of_examples"])
                bm.train(prepared, prefix_length=1, positions=params.intervention_positions,
                         exclude_bos=params.exclude_bos,
                         metadata_path=str(data_dir / "metadata.jsonl"))
                bm.save(train_dir, model_name=f"rank_0_{name}")
                del bm
    return types.SimpleNamespace(dump=dump, train_dir=train_dir, calls=calls, data_dir=data_dir,
                                 metadata=metadata, concepts=concepts, ax_modules=ax_modules)


def _steering_df(concept: dict, tok, factors) -> pd.DataFrame:
    """AxBench's steering rows for one concept (create_eval_df + inference.py's extra columns)."""
    rows = []
    for input_id, prompt in enumerate(PROMPTS):
        for factor in factors:
            rows.append({
                "dataset_name": "AlpacaEval", "concept_id": concept["concept_id"],
                "input_concept": concept["concept"], "input_id": input_id,
                "factor": float(factor), "original_prompt": prompt,
                "steered_input": format_prompt(tok, f"Mention {concept['concept']}. {prompt}"),
                "input": format_prompt(tok, prompt),
            })
    df = pd.DataFrame(rows)
    df["sae_link"] = concept["ref"]
    df["sae_id"] = int(concept["ref"].split("/")[-1])
    return df


def _inference_model(axbench_ns, name, base, trained, layer=2):
    model, tok = base
    bm = getattr(axbench_ns, name)(
        model, tok, layer=layer, training_args=_model_params({}),
        low_rank_dimension=len(trained.metadata), device="cpu", steering_layers=[2])
    return bm


# ------------------------------------------------------------------------- train.py replay

def test_train_replay_trains_once_per_method_and_writes_no_weight_rows(trained, base):
    assert [c[0] for c in trained.calls] == METHODS  # first concept only; later calls no-ops
    for name, data_dir, dump_dir, base_pair in trained.calls:
        assert data_dir == trained.data_dir and dump_dir == trained.dump
        assert base_pair[0] is base[0]  # AxBench's already loaded LM is reused
        assert train_stage.is_trained(trained.dump, name)
    assert json.loads((trained.train_dir / "config.json").read_text())["layer"] == 2
    assert not list(trained.train_dir.glob("*_weight.pt"))
    assert not list(trained.train_dir.glob("*_bias.pt"))
    assert all(isinstance(m, torch.nn.Module) for m in trained.ax_modules)  # .ax.to(bf16) works
    assert len(trained.ax_modules) == len(METHODS) * len(trained.concepts)


# --------------------------------------------------------------------- inference.py replay

@pytest.mark.parametrize("name", METHODS)
def test_inference_replay_gives_evaluate_columns(name, trained, base, axbench_ns, cfg_path,
                                                 monkeypatch, tmp_path):
    inference_cfg = yaml.safe_load(cfg_path.read_text())["inference"]
    factors = inference_cfg["steering_factors"]
    ax_models.clear_cache()
    loads = []
    original = HyperSteer.from_pretrained
    monkeypatch.setattr(HyperSteer, "from_pretrained", classmethod(
        lambda cls, *a, **k: (loads.append(a[0]), original(*a, **k))[1]))
    frames = []
    for cid in trained.concepts:
        concept = trained.metadata[cid]
        current_df = _steering_df(concept, base[1], factors)
        bm = _inference_model(axbench_ns, name, base, trained)
        bm.load(dump_dir=str(trained.train_dir), sae_path=trained.metadata[0]["ref"],
                mode="steering", intervention_type="addition", concept_id=int(cid))
        bm.to("cpu")
        assert isinstance(bm.ax, torch.nn.Module) and any(True for _ in bm.ax.parameters())
        bm.pre_compute_mean_activations(os.path.join(trained.dump, "inference"),
                                        master_data_dir="axbench/data",
                                        disable_neuronpedia_max_act=False,
                                        metadata=trained.metadata)
        results = bm.predict_steer(
            current_df, concept_id=int(cid), sae_link=concept["ref"],
            sae_id=int(current_df["sae_id"].iloc[0]),
            batch_size=int(inference_cfg["steering_batch_size"]),
            eval_output_length=int(inference_cfg["steering_output_length"]),
            temperature=float(inference_cfg["temperature"]), prefix_length=1, positions=None,
            use_synergy=False, disable_neuronpedia_max_act=False)
        for k, v in results.items():
            current_df[f"{name}_{k}"] = v
        frames.append(current_df)
        del bm
    assert len(loads) == 1  # read from disk once across the per-concept load() calls
    out = pd.concat(frames, ignore_index=True).sort_values(["concept_id", "input_id", "factor"])
    out.to_parquet(tmp_path / "steering_data.parquet")  # what inference.py writes
    back = pd.read_parquet(tmp_path / "steering_data.parquet")
    n = len(trained.concepts) * len(PROMPTS) * len(factors)
    assert len(back) == n
    for column in ("concept_id", "input_id", "factor", "input_concept", "original_prompt",
                   f"{name}_steered_generation", f"{name}_perplexity", f"{name}_strength"):
        assert column in back.columns and back[column].notna().all(), column
    assert all(isinstance(g, str) for g in back[f"{name}_steered_generation"])
    assert all(math.isfinite(p) and p > 0 for p in back[f"{name}_perplexity"])
    strength = back[f"{name}_strength"].to_numpy()
    assert (strength[back["factor"].to_numpy() == 0.0] == 0).all()
    assert (strength[back["factor"].to_numpy() > 0] > 0).all()


def test_predict_steer_mixed_batch_equals_rows_alone(trained, base, axbench_ns):
    """Cross-attention, the variant whose vectors depend on each row's own prompt: a shuffled
    batch mixing concepts, prompts of different lengths and factors gives, row for row, what the
    row gives alone (greedy), in the input order."""
    bm = _inference_model(axbench_ns, "HyperSteerXAttn", base, trained)
    bm.load(dump_dir=str(trained.train_dir), mode="steering", concept_id=0)
    df = pd.concat([_steering_df(trained.metadata[0], base[1], [0.0, 3.0]).iloc[[0, 3]],
                    _steering_df(trained.metadata[1], base[1], [1.0])], ignore_index=True)
    df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert df["original_prompt"].nunique() == 2 and df["factor"].nunique() == 3
    kw = dict(concept_id=None, sae_link=None, sae_id=None, eval_output_length=4,
              temperature=0.0, prefix_length=1, positions=None)
    batched = bm.predict_steer(df, batch_size=len(df), **kw)
    assert len(set(batched["steered_generation"])) > 1
    for i in range(len(df)):
        alone = bm.predict_steer(df.iloc[[i]], batch_size=1, **kw)
        assert alone["steered_generation"][0] == batched["steered_generation"][i], i
        assert alone["perplexity"][0] == pytest.approx(batched["perplexity"][i], rel=1e-4)
        assert alone["strength"][0] == pytest.approx(batched["strength"][i], rel=1e-5)


def test_load_without_checkpoint_is_an_error(base, trained, axbench_ns, tmp_path):
    bm = _inference_model(axbench_ns, "HyperSteerXAttn", base, trained)
    with pytest.raises(FileNotFoundError,
                       match="no trained HyperSteer checkpoint.*run train first"):
        bm.load(dump_dir=str(tmp_path / "train"), mode="steering", concept_id=0)
    with pytest.raises(RuntimeError, match="load"):
        bm.predict_steer(_steering_df(trained.metadata[0], base[1], [1.0]))


def _copy_train_dir(trained, tmp_path: Path, name: str) -> Path:
    train_dir = tmp_path / "train"
    shutil.copytree(trained.train_dir / name, train_dir / name)
    shutil.copy(trained.train_dir / "config.json", train_dir / "config.json")
    return train_dir


def test_load_rejects_another_layer(base, trained, axbench_ns, tmp_path):
    train_dir = _copy_train_dir(trained, tmp_path, "HyperSteerXAttn")
    bm = _inference_model(axbench_ns, "HyperSteerXAttn", base, trained, layer=1)
    with pytest.raises(ConfigError, match="steers layer 2.*layer=1"):
        bm.load(dump_dir=str(train_dir), mode="steering", concept_id=0)
    config = json.loads((train_dir / "config.json").read_text())
    (train_dir / "config.json").write_text(json.dumps({**config, "layer": 3}))
    bm = _inference_model(axbench_ns, "HyperSteerXAttn", base, trained, layer=3)
    with pytest.raises(ConfigError, match="steers layer 2.*config.json says layer 3"):
        bm.load(dump_dir=str(train_dir), mode="steering", concept_id=0)


def test_load_rejects_another_base_model(tokenizer, base, trained, axbench_ns):
    other = build_tiny_gemma2(tokenizer, hidden_size=32, num_layers=4, seed=1)
    bm = getattr(axbench_ns, "HyperSteerNoContext")(other, base[1], layer=2, device="cpu")
    with pytest.raises(ConfigError, match="hidden_size=64.*hidden_size=32"):
        bm.load(dump_dir=str(trained.train_dir), mode="steering", concept_id=0)


def test_train_needs_the_sweep_yaml(base, concept10_dir, axbench_ns, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train.py", "--dump_dir", str(tmp_path)])
    monkeypatch.delenv(ax_models.CONFIG_ENV, raising=False)
    bm = getattr(axbench_ns, "HyperSteerXAttn")(base[0], base[1], layer=2, device="cpu")
    meta = str(concept10_dir / "generate" / "metadata.jsonl")
    bm.make_model(mode="train", concept_id=0, metadata_path=meta, dump_dir=tmp_path / "train")
    with pytest.raises(ConfigError, match="sweep YAML"):
        bm.train(pd.DataFrame(), metadata_path=meta)


def test_heldout_refuses_training_data_with_eval_concepts(concept10_dir, tmp_path):
    concept500 = concept10_dir.parents[1] / "concept500" / "prod_2b_l20_v1" / "generate"
    raw = yaml.safe_load((SWEEP / "tiny_cpu.yaml").read_text())
    raw["hypersteer"] = {"eval_concepts": str(concept500 / "metadata.jsonl")}
    (tmp_path / "ho.yaml").write_text(yaml.safe_dump(raw))
    run = load_run_config(tmp_path / "ho.yaml")
    with pytest.raises(ConfigError, match="held-out.*10 evaluation concept.*splits"):
        ax_models.check_no_eval_concepts(run, concept10_dir)
    other = tmp_path / "other" / "generate"
    other.mkdir(parents=True)
    (other / "metadata.jsonl").write_text(json.dumps(
        {"concept_id": 0, "concept": "something unrelated", "ref": "x/1",
         "concept_genres_map": {"something unrelated": ["text"]}}) + "\n")
    ax_models.check_no_eval_concepts(run, other.parent)  # disjoint: fine


def test_latent_inference_is_refused_and_names_are_artifact_keys():
    for name, cls in registry.CLASSES.items():
        bm = cls(None, None, 2, device="cpu")
        assert str(bm) == name == cls.__name__
        with pytest.raises(NotImplementedError, match="steering-only"):
            bm.predict_latent(pd.DataFrame({"input": ["x"]}), batch_size=1, prefix_length=1)
        assert bm.pre_compute_mean_activations("/does/not/exist") == {}
        assert bm.save(Path("/does/not/exist"), model_name=f"rank_0_{name}") is None


# ----------------------------------------------------------------------------- registry

def test_register_is_idempotent_and_sets_classes_and_aliases():
    module = types.ModuleType("axbench")
    assert registry.register(module) is module
    registry.register(module)
    expected = {"HyperSteerNoContext": HyperSteerNoContext,
                "HyperSteerInContext": HyperSteerInContext, "HyperSteerXAttn": HyperSteerXAttn,
                "hypersteer_nocontext": HyperSteerNoContext,
                "hypersteer_incontext": HyperSteerInContext,
                "hypersteer_xattn": HyperSteerXAttn}
    for name, cls in expected.items():
        assert getattr(module, name) is cls
        assert registry.lookup(name) is cls
        assert registry.lookup(name, module) is cls


def test_register_refuses_a_clash_and_sets_nothing():
    module = types.ModuleType("axbench")
    module.hypersteer_xattn = object()
    with pytest.raises(registry.RegistryError, match="hypersteer_xattn"):
        registry.register(module)
    assert not hasattr(module, "HyperSteerXAttn")


def test_lookup_unknown_name_lists_known_names():
    with pytest.raises(registry.UnknownMethodError) as err:
        registry.lookup("HyperSteerXattn")
    assert "HyperSteerXAttn" in str(err.value) and "hypersteer_xattn" in str(err.value)
    with pytest.raises(registry.UnknownMethodError, match="on module 'axbench'"):
        registry.lookup("LsReFT", types.ModuleType("axbench"))


@needs_real_axbench
def test_classes_derive_from_real_axbench_model():
    assert ax_models.AXBENCH_BASE
    for cls in registry.CLASSES.values():
        assert issubclass(cls, REAL_AXBENCH.models.model.Model)
    registry.register(REAL_AXBENCH)
    assert REAL_AXBENCH.hypersteer_xattn is HyperSteerXAttn
    inference = sys.modules["axbench.scripts.inference"]
    assert isinstance(inference.LATENT_EXCLUDE_MODELS, set)


# ---------------------------------------------------------------------------- launcher

def test_launcher_without_axbench_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "axbench", None)  # import axbench -> ImportError
    with pytest.raises(registry.AxBenchNotInstalled) as err:
        launcher.main(["train", "--config", str(SWEEP / "tiny_cpu.yaml"), "--dump_dir", "x"])
    assert INSTALL_LINE in str(err.value)
    assert "pip install --no-deps pyreft==0.1.0" in str(err.value)
    from axbench_hypersteer.axbench import __main__ as entry

    monkeypatch.setattr(sys, "argv", ["x", "inference", "--config", "c.yaml", "--dump_dir", "d"])
    assert entry._run() == 2
    assert INSTALL_LINE in capsys.readouterr().err


FAKE_FILES = {
    "axbench/__init__.py": """
        from .models import model, sae
        from .models.model import Model
        from .scripts import inference, evaluate
    """,
    "axbench/models/__init__.py": "",
    "axbench/models/model.py": """
        class Model:
            def __init__(self, model, tokenizer, layer, training_args=None, **kwargs):
                self.model, self.tokenizer, self.layer = model, tokenizer, layer
                self.training_args = training_args
                self.device = kwargs.get("device", "cpu")
    """,
    "axbench/models/sae.py": """
        def save_pruned_sae(*args, **kwargs):
            raise RuntimeError("fake save_pruned_sae would query Neuronpedia")
    """,
    "axbench/scripts/__init__.py": "",
    "axbench/scripts/args/__init__.py": "",
    "axbench/scripts/args/training_args.py": "class TrainingArgs:\n    pass\n",
    "axbench/scripts/inference.py": """
        import os, sys
        import torch
        import yaml
        import axbench
        LATENT_EXCLUDE_MODELS = {"PromptSteering"}
        CALLS = []

        def main():
            cfg = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
            CALLS.append({"argv": list(sys.argv), "latent_exclude": set(LATENT_EXCLUDE_MODELS),
                          "device": str(torch.device("cuda:0")), "rank": os.environ.get("RANK"),
                          "classes": {n: getattr(axbench, n) for n in cfg["inference"]["models"]},
                          "inference_models": cfg["inference"]["models"]})
    """,
    "axbench/scripts/evaluate.py": """
        import sys
        import yaml
        from axbench.scripts.inference import LATENT_EXCLUDE_MODELS
        CALLS = []

        def main():
            cfg = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
            CALLS.append({"argv": list(sys.argv), "latent_exclude": set(LATENT_EXCLUDE_MODELS),
                          "models": cfg["evaluate"]["models"]})
    """,
    "axbench/scripts/train.py": """
        import json, os, sys
        from pathlib import Path
        import torch
        import torch.distributed as dist
        import yaml
        from args.training_args import TrainingArgs
        from axbench.models.sae import save_pruned_sae
        import axbench

        def main():
            config = sys.argv[sys.argv.index("--config") + 1]
            dump_dir = Path(sys.argv[sys.argv.index("--dump_dir") + 1])
            models = sorted(yaml.safe_load(open(config))["train"]["models"])
            dist.init_process_group(backend="nccl", init_method="env://")
            try:
                device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
                torch.cuda.set_device(device)
                record = {"argv": list(sys.argv), "config": config, "models": models,
                          "backend": str(dist.get_backend()), "device": str(device),
                          "sae": save_pruned_sae("gemma"),
                          "classes": [getattr(axbench, m).__name__ for m in models
                                      if hasattr(axbench, m)]}
            finally:
                dist.destroy_process_group()
            with open(dump_dir / "train" / "metadata.jsonl", "a") as f:  # rank 0's merge
                f.write(json.dumps({"concept_id": 0, "concept": "a"}) + "\\n")
                f.write(json.dumps({"concept_id": 1, "concept": "b"}) + "\\n")
            Path(os.environ["FAKE_AXBENCH_RECORD"]).write_text(json.dumps(record))

        if __name__ == "__main__":
            main()
    """,
}


@pytest.fixture()
def fake_axbench(tmp_path, monkeypatch):
    root = tmp_path / "fakepkg"
    for rel, text in FAKE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(root))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FAKE_AXBENCH_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    for name in [m for m in sys.modules if m == "axbench" or m.startswith("axbench.")]:
        monkeypatch.delitem(sys.modules, name)
    import axbench

    assert axbench.__file__.startswith(str(root))
    yield axbench
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("axbench", "args"):
            del sys.modules[name]


def _launcher_config(tmp_path: Path, train_models: dict, inference_models: list) -> Path:
    raw = yaml.safe_load((SWEEP / "tiny_cpu.yaml").read_text())
    raw["train"]["models"] = train_models
    raw["inference"]["models"] = inference_models
    raw["evaluate"]["models"] = inference_models
    path = tmp_path / "launch.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _process_state():
    import torch.distributed as dist
    return (dist.init_process_group, torch.cuda.set_device, list(sys.argv), list(sys.path),
            {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")},
            dist.is_initialized())


def test_launcher_train_trains_hypersteer_then_hands_others_to_train_py(
        fake_axbench, concept10_dir, tmp_path, monkeypatch):
    hs_entry = {"num_blocks": 2, "cross_attention_heads": 4, "max_steps": 1}
    cfg = _launcher_config(tmp_path, {"hypersteer_xattn": hs_entry, "LsReFT": {"lr": 0.01}},
                           ["hypersteer_xattn"])
    dump = tmp_path / "dump"
    (dump / "train").mkdir(parents=True)
    (dump / "train" / "metadata.jsonl").write_text(json.dumps({"concept_id": 0, "concept": "a"})
                                                   + "\n")  # what our trainer wrote
    trained = []
    monkeypatch.setattr(train_stage, "train_method",
                        lambda run, spec, data, dump_dir, **kw: trained.append(
                            (spec.name, Path(data), Path(dump_dir))))
    data_dir = concept10_dir / "generate"
    before = _process_state()
    sae_before = fake_axbench.models.sae.save_pruned_sae
    launcher.main(["train", "--config", str(cfg), "--dump_dir", str(dump), "--method",
                   "hypersteer_xattn", "--overwrite_data_dir", str(data_dir),
                   "--run_name", "smoke"])
    assert trained == [("HyperSteerXAttn", data_dir, dump)]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["argv"][0].endswith("train.py")
    assert record["argv"][1:] == ["--config", record["config"], "--dump_dir", str(dump),
                                  "--overwrite_data_dir", str(data_dir), "--run_name", "smoke"]
    assert record["config"] != str(cfg) and not Path(record["config"]).exists()  # temp, removed
    assert record["models"] == ["LsReFT"]  # HyperSteer is never trained per concept
    assert record["sae"] is None  # no SAE method: pruning patched out
    if not torch.cuda.is_available():
        assert record["backend"] == "gloo" and record["device"] == "cpu"
    assert fake_axbench.hypersteer_xattn is HyperSteerXAttn
    lines = (dump / "train" / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line)["concept_id"] for line in lines] == [0, 1]  # deduplicated
    # every patch undone
    assert fake_axbench.models.sae.save_pruned_sae is sae_before
    assert _process_state() == before


def test_launcher_train_keeps_sae_pruning_and_skips_train_py_when_needed(
        fake_axbench, concept10_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_stage, "train_method", lambda *a, **k: None)
    data = str(concept10_dir / "generate")
    cfg = _launcher_config(tmp_path, {"HyperSteerXAttn": {"num_blocks": 2,
                                                          "cross_attention_heads": 4}},
                           ["HyperSteerXAttn"])
    launcher.main(["train", "--config", str(cfg), "--dump_dir", str(tmp_path / "d"),
                   "--overwrite_data_dir", data])
    assert not (tmp_path / "record.json").exists()  # only HyperSteer: train.py not run
    (tmp_path / "d" / "train").mkdir(parents=True)
    cfg = _launcher_config(tmp_path, {"HyperSteerXAttn": {"num_blocks": 2,
                                                          "cross_attention_heads": 4},
                                      "GemmaScopeSAE": {}}, ["HyperSteerXAttn"])
    with pytest.raises(RuntimeError, match="Neuronpedia"):  # an SAE method needs the real one
        launcher.main(["train", "--config", str(cfg), "--dump_dir", str(tmp_path / "d"),
                       "--overwrite_data_dir", data])
    with pytest.raises(ConfigError, match="does not exist"):
        launcher.main(["train", "--config", str(cfg), "--dump_dir", str(tmp_path / "d"),
                       "--overwrite_data_dir", str(tmp_path / "absent")])


def test_launcher_inference_checks_checkpoints_patches_and_hands_over(fake_axbench, tmp_path):
    entry = {"num_blocks": 2, "cross_attention_heads": 4}
    cfg = _launcher_config(tmp_path, {"HyperSteerXAttn": entry, "HyperSteerNoContext": {}},
                           ["HyperSteerNoContext", "hypersteer_xattn"])
    dump = tmp_path / "dump"
    argv = ["inference", "--config", str(cfg), "--dump_dir", str(dump), "--mode", "steering"]
    with pytest.raises(launcher.CheckpointMissing, match="HyperSteerNoContext.*run train first"):
        launcher.main(argv)
    assert fake_axbench.scripts.inference.CALLS == []
    (dump / "train" / "HyperSteerXAttn").mkdir(parents=True)
    (dump / "train" / "HyperSteerXAttn" / "hypersteer_config.json").write_text("{}")
    before = _process_state()
    launcher.main(argv + ["--method", "hypersteer_xattn"])  # NoContext untrained: dropped
    [call] = fake_axbench.scripts.inference.CALLS
    assert call["argv"][0] == fake_axbench.scripts.inference.__file__
    assert call["argv"][1:] == ["--config", call["argv"][2], "--dump_dir", str(dump),
                                "--mode", "steering"]
    assert call["inference_models"] == ["hypersteer_xattn"]
    assert call["classes"] == {"hypersteer_xattn": HyperSteerXAttn}
    assert set(registry.NAMES) | {"PromptSteering"} == call["latent_exclude"]
    assert call["rank"] == "0"
    if not torch.cuda.is_available():
        assert call["device"] == "cpu"
    assert fake_axbench.scripts.inference.LATENT_EXCLUDE_MODELS == {"PromptSteering"}
    assert fake_axbench.scripts.inference.torch is torch
    assert _process_state() == before


def test_launcher_evaluate_hands_over_unchanged(fake_axbench, tmp_path):
    cfg = _launcher_config(tmp_path, {"HyperSteerXAttn": {"num_blocks": 2}}, ["HyperSteerXAttn"])
    argv = ["evaluate", "--config", str(cfg), "--dump_dir", str(tmp_path), "--mode",
            "steering_test"]
    launcher.main(argv)
    [call] = fake_axbench.scripts.evaluate.CALLS
    assert call["argv"][1:] == ["--config", str(cfg), "--dump_dir", str(tmp_path), "--mode",
                                "steering_test"]
    assert call["models"] == ["HyperSteerXAttn"]
    assert "HyperSteerXAttn" in call["latent_exclude"]
    assert fake_axbench.scripts.evaluate.LATENT_EXCLUDE_MODELS == {"PromptSteering"}


def test_launcher_rejects_a_method_not_in_train_models(fake_axbench, tmp_path):
    cfg = _launcher_config(tmp_path, {"HyperSteerXAttn": {"num_blocks": 2}}, ["HyperSteerXAttn"])
    with pytest.raises(ConfigError, match="HyperSteerInContext.*not listed in train.models"):
        launcher.main(["inference", "--config", str(cfg), "--dump_dir", str(tmp_path),
                       "--method", "hypersteer_incontext"])
    raw = yaml.safe_load(cfg.read_text())
    raw["inference"]["models"] = ["HyperSteerXAttn", "HyperSteerNoContext"]
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="inference.models lists 'HyperSteerNoContext'"):
        launcher.main(["inference", "--config", str(cfg), "--dump_dir", str(tmp_path)])


# ------------------------------------------------------------------------- sweep configs

def _generator():
    spec = importlib.util.spec_from_file_location("sweep_generate", SWEEP / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_configs_are_reproduced_by_generate_py(tmp_path):
    _generator().main(["--out_dir", str(tmp_path)])
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.yaml"))
    # ablations/ has its own generator (axbench_hypersteer.experiments.ablations) and test.
    committed = sorted(p.relative_to(SWEEP) for p in SWEEP.rglob("*.yaml")
                       if p.relative_to(SWEEP).parts[0] != "ablations")
    assert generated == committed and len(committed) == 14
    for rel in committed:
        assert (tmp_path / rel).read_text() == (SWEEP / rel).read_text(), rel


@pytest.mark.parametrize("size,variant,split", [
    (s, v, h) for s in ("2b", "9b") for v in ("nocontext", "incontext", "xattn")
    for h in ("heldin", "heldout")])
def test_sweep_config_numbers(size, variant, split):
    path = SWEEP / size / "l20" / f"hypersteer_{variant}_{split}.yaml"
    run = load_run_config(path)
    spec = run.method()
    xattn = variant == "xattn"
    batch, lr, blocks = {("2b", True): (12, 8e-5, 22), ("2b", False): (6, 8e-5, 26),
                         ("9b", True): (4, 5e-6, 34), ("9b", False): (6, 5e-6, 42)}[size, xattn]
    assert (spec.train.batch_size, spec.train.lr, spec.model.num_blocks) == (batch, lr, blocks)
    assert spec.train.n_epochs == 3 and run.use_bf16 and run.layer == 20
    assert spec.model.variant == variant and str(spec.name).lower().endswith(variant)
    if xattn:
        assert spec.model.cross_attention_heads == 8
    assert run.inference.steering_factors == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8,
                                              2.0, 2.5, 3.0, 4.0, 5.0]
    assert run.inference.steering_num_of_examples == 10 and run.inference.split_ratio == 0.5
    assert run.judge.lm_model == "gpt-4o-mini"
    raw = run.raw
    assert raw["inference"]["models"] == raw["evaluate"]["models"] == [spec.name]
    assert raw["train"]["model_name"] == f"google/gemma-2-{size}-it"
    if split == "heldout":
        assert run.eval_concepts == (f"axbench/concept500/prod_{size}_l20_v1/generate/"
                                     "metadata.jsonl")
    else:
        assert run.eval_concepts is None
