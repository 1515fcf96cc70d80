"""Helpers of tests/test_trainer.py: a tiny base model whose logits a steering vector can move,
small training configs, AxBench-format YAML / data dumps, and subprocess runs of
``hypersteer train`` (tests/run_train_stage.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from axbench_hypersteer.model.config import HyperSteerConfig, TrainConfig
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.testing.tiny import build_tiny_gemma2

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RUN_SCRIPT = str(REPO / "tests" / "run_train_stage.py")

VARIANTS = ("nocontext", "incontext", "xattn")
NUM_LAYERS = 2
LAYER = 0  # steering layer: the answer's loss flows back through one base block
# Gemma's 0.02 gives near-uniform logits at width 64 (loss ~ log|V| whatever the steering);
# 0.2 gives a random model whose output a steering vector can move visibly.
INIT_RANGE = 0.2


def tiny_base(tokenizer, seed: int = 0):
    return build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=NUM_LAYERS, seed=seed,
                             initializer_range=INIT_RANGE)


def make_hs(base, tokenizer, variant: str, seed: int = 42, backend: str = "hook") -> HyperSteer:
    cfg = HyperSteerConfig(variant=variant, steering_layer=LAYER, num_blocks=1,
                           cross_attention_heads=4, seed=seed)
    return HyperSteer.from_base(base, tokenizer, cfg, backend=backend)


def train_cfg(**overrides) -> TrainConfig:
    kw = dict(batch_size=4, n_epochs=50, lr=1e-2, max_length=256, dev_examples=0,
              eval_every=1000, checkpoint_every=1000, keep_checkpoints=5, seed=0)
    kw.update(overrides)
    return TrainConfig(**kw)


def hypernet_state(hs: HyperSteer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hs.hypernet.state_dict().items()}


def assert_same_tensors(a: dict, b: dict, what: str = "") -> None:
    assert sorted(a) == sorted(b), f"{what}: different tensor names"
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:3]}"


# ----------------------------------------------------------------------------- files


def write_run_yaml(path: Path, model_name: str, models: dict[str, dict], **train_keys) -> Path:
    config = {"train": {"model_name": model_name, "layer": LAYER, "component": "res",
                        "seed": 42, **train_keys, "models": models},
              "inference": {"models": list(models)}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def method_entry(**overrides) -> dict:
    entry = dict(batch_size=2, n_epochs=2, lr=1.0e-2, num_blocks=1, cross_attention_heads=4,
                 max_length=256, dev_examples=0, eval_every=1000, checkpoint_every=1000,
                 max_num_of_examples=2)
    entry.update(overrides)
    return entry


def copy_dump(src: Path, dst: Path, edit=None) -> Path:
    """Copy an AxBench dump's generate/ dir; ``edit(frame) -> frame`` rewrites the parquet."""
    gen = dst / "generate"
    gen.mkdir(parents=True)
    shutil.copy(src / "generate" / "metadata.jsonl", gen / "metadata.jsonl")
    frame = pd.read_parquet(src / "generate" / "train_data.parquet")
    if edit is not None:
        frame = edit(frame)
    frame.to_parquet(gen / "train_data.parquet")
    return dst


def read_log(path: Path) -> list[dict]:
    """Records of a train_log.jsonl; a last line still being written (no newline) is left out."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # everything before the last newline
    return [json.loads(line) for line in lines if line.strip()]


def train_steps(path: Path) -> list[int]:
    """Steps of the training records (not the dev-loss ones) in a train_log.jsonl."""
    return [r["step"] for r in read_log(path) if "loss" in r]


# ----------------------------------------------------------------------------- processes


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def start_train(args: list[str], log_path: Path, **env) -> subprocess.Popen:
    with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([PYTHON, RUN_SCRIPT, *args], cwd=REPO,
                                env=subprocess_env(**env), stdout=out, stderr=subprocess.STDOUT)


def start_torchrun(args: list[str], log_path: Path, nproc: int = 2, **env) -> subprocess.Popen:
    """``hypersteer train`` under torchrun; ``kill_after_step(..., group=True)`` SIGKILLs
    torchrun and its workers at once, as a node failure would."""
    with open(log_path, "ab") as out:
        return subprocess.Popen([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}",
                                 RUN_SCRIPT, *args], cwd=REPO, env=subprocess_env(**env),
                                stdout=out, stderr=subprocess.STDOUT)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): torchrun starts each worker in a session of
    its own, so a process-group kill misses them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_after_step(proc: subprocess.Popen, train_log: Path, step: int, seen_before: int,
                    timeout: float = 60.0, group: bool = False) -> int:
    """SIGKILL ``proc`` (and every process below it with ``group``) as soon as its train_log shows
    ``step`` (among the records after the first ``seen_before``). Returns the last step logged
    before the kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = train_steps(train_log)[seen_before:]
        if steps and steps[-1] >= step:
            kill_tree(proc) if group else proc.kill()
            proc.wait(timeout=30)
            return train_steps(train_log)[seen_before:][-1]
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc={proc.returncode}) before step {step} "
                                 "was logged: it could not be killed mid-run")
        time.sleep(0.01)
    kill_tree(proc) if group else proc.kill()
    raise AssertionError(f"step {step} was not logged within {timeout}s")


def run_group(cmd: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the whole process group (torchrun's
    workers survive a kill of torchrun alone) and fail."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # torchrun's workers sit in sessions of their own
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[0]} hung for {timeout}s; stderr tail:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
