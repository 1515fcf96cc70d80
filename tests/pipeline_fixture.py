"""A tiny trained pipeline dump shared by the reliability and bad-input tests (and by
``tests/bad_input_cases.py`` when it regenerates ``docs/bad-inputs.md``).

Built once per process (about 15 s on 2 CPU cores): ``demo.prepare`` writes the tiny base model,
the built-in concept data and a config; the config is shrunk (2 factors, 2 prompts, 4 new tokens,
greedy) and the demo's HyperSteerXAttn is trained for 2 updates. Tests copy what they need out of
it and never modify it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

METHOD = "HyperSteerXAttn"
N_CONCEPTS = 4  # concepts steered by the inference tests: the demo's first training concepts


@dataclass(frozen=True)
class Pipeline:
    root: Path            # everything below lives here; read-only for tests
    base_model: Path      # tiny Gemma-2 + tokenizer (from_pretrained directory)
    dump: Path            # generate/ + train/ (trained METHOD), no inference outputs
    config: dict          # the run config (AxBench YAML layout) as a dict
    concepts: Path        # metadata.jsonl of the first N_CONCEPTS concepts

    def write_config(self, path: Path, config: dict | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config if config is not None else self.config,
                                       sort_keys=False))
        return path

    def copy_dump(self, dest: Path, parts: tuple[str, ...] = ("generate", "train")) -> Path:
        """A private copy of the dump's ``parts`` (sub-directories) at ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        for part in parts:
            shutil.copytree(self.dump / part, dest / part)
        return dest


_CACHE: dict[str, Pipeline] = {}


def small_config(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    config["train"]["models"][METHOD].update(max_steps=2, batch_size=4, dev_examples=0)
    config["inference"].update(steering_factors=[0.0, 1.0], steering_num_of_examples=2,
                               steering_output_length=4, steering_batch_size=64, temperature=0.0)
    return config


def build_pipeline(root: Path, tokenizer=None) -> Pipeline:
    """``tokenizer``: reuse an already trained tiny tokenizer (the test session's) instead of
    training the demo's own, which is most of the build time."""
    import torch

    from axbench_hypersteer.model.loading import load_base
    from axbench_hypersteer.demo import run as demo
    from axbench_hypersteer.stages.run_config import load_run_config
    from axbench_hypersteer.stages.train_stage import train_method
    from axbench_hypersteer.testing.tiny import build_tiny_gemma2, build_tiny_tokenizer, save_tiny

    root.mkdir(parents=True, exist_ok=True)
    dump = root / "dump"
    # demo.prepare keeps a base model that is already there.
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    save_tiny(build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4), tokenizer,
              dump / "base_model")
    config_path = demo.prepare(dump)
    # Move the base model out of the dump: tests copy dumps, never the (larger) model.
    base_model = root / "base_model"
    shutil.move(str(dump / "base_model"), base_model)
    config = small_config(yaml.safe_load(config_path.read_text()))
    config["train"]["model_name"] = str(base_model.resolve())
    config_path.unlink()
    pipeline = Pipeline(root, base_model, dump, config, root / "concepts.jsonl")
    config_path = pipeline.write_config(root / "config.yaml")
    run = load_run_config(config_path)
    torch.manual_seed(0)
    train_method(run, run.method(METHOD), dump, dump, base=load_base(run.model_name),
                 progress=False)
    lines = (dump / "generate" / "metadata.jsonl").read_text().splitlines()[:N_CONCEPTS]
    pipeline.concepts.write_text("".join(line + "\n" for line in lines))
    return pipeline


def shared_pipeline(root: Path | None = None, tokenizer=None) -> Pipeline:
    """The process-wide pipeline, built on first use under ``root`` (default: a temp dir)."""
    if "pipeline" not in _CACHE:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="hypersteer-pipeline-"))
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        _CACHE["pipeline"] = build_pipeline(root, tokenizer)
    return _CACHE["pipeline"]


# pytest fixtures, imported by the test modules that use the pipeline --------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the doc script runs without pytest too
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module", autouse=True)
    def one_torch_thread():
        """The tiny model runs fastest on one thread, and several threads on a shared, busy
        2-core machine mostly wait on each other (3x slower here)."""
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(old)

    @pytest.fixture(scope="module")
    def pipeline(one_torch_thread, tmp_path_factory, tokenizer):
        return shared_pipeline(tmp_path_factory.mktemp("pipeline"), tokenizer)
