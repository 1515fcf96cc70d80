"""``hypersteer demo``: the whole main job, end to end, on CPU in a few minutes.

Builds a tiny random Gemma-2 with a tokenizer trained on the spot, writes the built-in concept
dataset in AxBench's format, trains a HyperSteer variant, runs the factor sweep on both prompt
splits, judges every generation and prints the report table.

Without ``OPENAI_API_KEY`` the judge is an offline, rule-based STAND-IN served on 127.0.0.1 (it
counts concept words, instruction overlap and repetition; it is not an LLM), so the numbers show
that the pipeline works, not how good HyperSteer is. With ``OPENAI_API_KEY`` set (and optionally
``OPENAI_BASE_URL``) the real judge is used.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

from ..core.fileio import atomic_write_text
from ..testing.tiny import build_tiny_gemma2, build_tiny_tokenizer, save_tiny
from .demo_data import CONCEPTS, INSTRUCTIONS, TEMPLATES, write_demo_dataset

DEMO_CONFIG = {
    "train": {
        "model_name": None,  # filled with the saved tiny model's directory
        "layer": 2, "component": "res", "seed": 42, "use_bf16": False,
        "models": {"HyperSteerXAttn": {
            "batch_size": 8, "n_epochs": 20, "lr": 5e-3, "warmup_ratio": 0.05,
            "num_blocks": 2, "cross_attention_heads": 4, "max_length": 128,
            "dev_examples": 8, "eval_every": 20, "checkpoint_every": 20,
        }},
    },
    "inference": {
        "models": ["HyperSteerXAttn"],
        "steering_factors": [0.0, 0.5, 1.0, 2.0, 4.0],
        "steering_num_of_examples": 6,
        "steering_output_length": 24, "temperature": 0.0,
    },
    "evaluate": {"models": ["HyperSteerXAttn"], "lm_model": "gpt-4o-mini",
                 "winrate_split_ratio": 0.5},
    "hypersteer": {"judge": {"concurrency": 32, "max_retries": 2, "timeout": 30.0}},
}


def prepare(dump_dir: Path) -> Path:
    """Tiny base model, demo data and the run config in ``dump_dir``; returns the config path."""
    base_dir = dump_dir / "base_model"
    if not (base_dir / "config.json").exists():
        # Train the tokenizer on the demo vocabulary too, so concept words are whole tokens.
        extra = [t.format(a=w, b=w, c=w, d=w) for _, ws in CONCEPTS.values() for w in ws
                 for t in TEMPLATES] + INSTRUCTIONS
        tokenizer = build_tiny_tokenizer(extra_texts=extra * 20)
        save_tiny(build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4), tokenizer, base_dir)
    write_demo_dataset(dump_dir)
    config = yaml.safe_load(yaml.safe_dump(DEMO_CONFIG))
    config["train"]["model_name"] = str(base_dir.resolve())
    path = dump_dir / "demo_config.yaml"
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(dump_dir: str | Path = "dumps/demo", progress: bool = True) -> Path:
    from ..core.config import JudgeConfig
    from ..core.loading import load_base
    from ..judge.offline_server import start_offline_judge, stop_offline_judge
    from .common import PromptSplit
    from .evaluate import run_evaluate
    from .inference_stage import run_inference
    from .report import write_report
    from .run_config import load_run_config
    from .train_stage import train_method

    started = time.perf_counter()
    dump_dir = Path(dump_dir)
    config_path = prepare(dump_dir)
    run = load_run_config(config_path)
    base = load_base(run.model_name)
    spec = run.method()
    print(f"[demo] training {spec.name} on the built-in data ({dump_dir})")
    train_method(run, spec, dump_dir, dump_dir, resume=True, base=base, progress=progress)
    for mode in ("steering", "steering_test"):
        print(f"[demo] factor sweep, {mode} split")
        run_inference(config_path, dump_dir, mode, base=base, progress=progress)

    server = None
    judge_config = run.judge
    if os.environ.get("OPENAI_API_KEY"):
        print(f"[demo] judging with the real LLM judge ({judge_config.lm_model})")
    else:
        server, url = start_offline_judge()
        judge_config = JudgeConfig(**{**judge_config.to_dict(), "base_url": url,
                                      # the stand-in reads only the package's marked rubric
                                      "rubric": "package"})
        print(f"[demo] no OPENAI_API_KEY: judging with the OFFLINE RULE-BASED STAND-IN at {url} "
              "(not an LLM; scores only show the pipeline works)")
    try:
        for mode in ("steering", "steering_test"):
            run_evaluate(dump_dir, judge_config, mode,
                         split=PromptSplit.from_config(run.inference), progress=progress)
    finally:
        if server is not None:
            stop_offline_judge(server)
    report = write_report({"results": dump_dir}, dump_dir / "report")
    print_steering_effect(dump_dir, spec.name)
    print(f"[demo] done in {time.perf_counter() - started:.0f} s; report: {report}")
    return report


def print_steering_effect(dump_dir: Path, method: str) -> None:
    """What the factor does, in two views the table hides: a random tiny LM never follows the
    instruction, so its harmonic mean is 0 at every factor, yet the steering itself is visible."""
    import json

    import pandas as pd

    by_factor: dict[float, list[float]] = {}
    with open(dump_dir / "evaluate" / "steering.jsonl", encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)["results"]["LMJudgeEvaluator"][method]
            for factor, score in zip(entry["factor"], entry["relevance_concept_ratings"]):
                by_factor.setdefault(factor, []).append(score)
    cells = ", ".join(f"{k:g}: {sum(v) / len(v):.2f}" for k, v in sorted(by_factor.items()))
    print(f"[demo] concept score (0-2) by factor, mean over concepts: {cells}")
    rows = pd.read_parquet(dump_dir / "inference" / "steering_data.parquet")
    first = rows[(rows["concept_id"] == rows["concept_id"].min()) & (rows["input_id"] == 0)]
    print(f"[demo] '{first['input_concept'].iloc[0]}' on {first['original_prompt'].iloc[0]!r}:")
    for row in first.itertuples(index=False):
        text = getattr(row, f"{method}_steered_generation").strip().replace("\n", " ")
        print(f"         factor {row.factor:g}: {text[:90]!r}")


def main(argv: list[str] | None = None) -> int:
    from .common import add_progress_flags

    parser = argparse.ArgumentParser(prog="hypersteer demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dump_dir", default="dumps/demo")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    run_demo(args.dump_dir, progress=args.progress)
    return 0
