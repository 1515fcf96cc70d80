"""FSDP2 training on CPU with gloo: two sharded ranks train exactly what one process (and two DDP
ranks) train on the same global batch, hold about half the bytes each, torchao's 8-bit AdamW
trains with a ~4x smaller state, a frozen token table stays put (and out of the optimizer), a
SIGKILLed FSDP run resumes to the uninterrupted run's weights, the export is the usual single
safetensors, and bad settings fail in one line.

Every 2-rank check runs in ONE torchrun (tests/run_fsdp_checks.py) after one killed run:
two process starts in all. torchao's optimizer step is ``torch.compile``d per parameter shape,
minutes of inductor work on 2 cores for a handful of tiny steps: the worker runs it eagerly
(``TORCHDYNAMO_DISABLE=1``; same optimizer, same 8-bit state)."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from axbench_hypersteer import cli
from axbench_hypersteer.model.config import ConfigError, TrainConfig
from axbench_hypersteer.model.fileio import save_tensors
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.model.loading import load_base
from axbench_hypersteer.train.checkpointing import SHARDS, list_checkpoints
from axbench_hypersteer.stages.data import load_train_frame
from axbench_hypersteer.train.optimizers import build_optimizer
from axbench_hypersteer.train.planner import base_config, plan
from axbench_hypersteer.train.trainer import Trainer
from axbench_hypersteer.testing.tiny import save_tiny

from fsdp_helpers import WIDTH, fsdp_train_cfg, make_wide_hs, wide_base, wide_hs_config
from trainer_helpers import (REPO, TORCHRUN, kill_after_step, method_entry, run_group,
                             start_torchrun, train_steps, write_run_yaml)

WORKER = str(REPO / "tests" / "run_fsdp_checks.py")
METHOD = "HyperSteerXAttn"
TABLE = "body.embed_tokens.weight"


def _train_args(config, data_dir, dump_dir, *extra) -> list[str]:
    return ["--config", str(config), "--data_dir", str(data_dir), "--dump_dir", str(dump_dir),
            *extra]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, tokenizer, concept10_dir):
    root = tmp_path_factory.mktemp("fsdp")
    base_dir = save_tiny(wide_base(tokenizer), tokenizer, root / "base")
    targets = root / "targets.safetensors"
    save_tensors(targets, {"weight": torch.randn(10, WIDTH, generator=torch.Generator()
                                                 .manual_seed(0))})
    config = write_run_yaml(root / "cfg.yaml", str(base_dir), {METHOD: method_entry(
        max_steps=6, checkpoint_every=2, keep_checkpoints=2, warmup_ratio=0.1, num_blocks=2,
        strategy="fsdp")})

    # A 2-rank FSDP run SIGKILLed (torchrun and both workers) after step 3: checkpoint 2 is whole.
    killed = root / "killed"
    log = killed / "train" / METHOD / "train_log.jsonl"
    proc = start_torchrun(_train_args(config, concept10_dir, killed), root / "killed.txt")
    kill_after_step(proc, log, 3, seen_before=0, timeout=120, group=True)
    assert proc.returncode == -signal.SIGKILL
    killed_at = train_steps(log)[-1]

    out = root / "out"
    out.mkdir()
    proc = run_group([TORCHRUN, "--standalone", "--nproc_per_node=2", WORKER, str(base_dir),
                      str(concept10_dir), str(targets), str(config), str(killed), str(out)],
                     timeout=300, TORCHDYNAMO_DISABLE="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return SimpleNamespace(root=root, out=out, reports=reports, base_dir=base_dir,
                           targets=targets, killed=killed, killed_at=killed_at)


def _one_process_run(fsdp_runs, concept10_dir, name: str, **overrides) -> SimpleNamespace:
    """The same training in this process, one rank, the 2-rank global batch (2 x 2 rows)."""
    model, tokenizer = load_base(str(fsdp_runs.base_dir))
    frame = load_train_frame(concept10_dir, max_num_of_examples=2, seed=0)
    hs = make_wide_hs(model, tokenizer)
    initial = {k: v.clone() for k, v in hs.hypernet.state_dict().items()}
    trainer = Trainer(hs, frame, fsdp_train_cfg(fsdp_runs.targets, batch_size=4, **overrides),
                      fsdp_runs.root / name, progress=False)
    result = trainer.train()
    return SimpleNamespace(losses=result.losses, memory=trainer.state_bytes(),
                           weights=trainer.strategy.full_state_dict(), initial=initial)


@pytest.fixture(scope="module")
def one_process(fsdp_runs, concept10_dir):
    return _one_process_run(fsdp_runs, concept10_dir, "one_process")


@pytest.fixture(scope="module")
def one_process_frozen(fsdp_runs, concept10_dir):
    return _one_process_run(fsdp_runs, concept10_dir, "one_process_frozen",
                            freeze_embeddings=True)


def _assert_close(got: dict, want: dict, what: str) -> None:
    """Per tensor, the difference's norm within 1e-4 of the weights' norm. Not elementwise:
    summation order differs (one batch of 4 vs two of 2 reduce-scattered), and on a gradient
    that is ~0 up to rounding Adam's first steps (update ~ g / |g|) turn a 1e-9 difference into
    one of ~lr on that single element. A real fault (unreduced or misrouted gradients) moves
    every trained element by ~lr: 100x over this bound."""
    assert sorted(got) == sorted(want), what
    for key in want:
        diff = float((got[key] - want[key]).norm() / want[key].norm().clamp(min=1e-12))
        assert diff <= 1e-4, f"{what}: {key}: relative difference {diff:.2e}"


def test_two_fsdp_ranks_train_what_one_process_and_ddp_train(fsdp_runs, one_process):
    fsdp = load_file(fsdp_runs.out / "fsdp_adamw.safetensors")
    ddp = load_file(fsdp_runs.out / "ddp_adamw.safetensors")
    _assert_close(fsdp, one_process.weights, "2-rank FSDP vs 1 process")
    _assert_close(fsdp, ddp, "2-rank FSDP vs 2-rank DDP")
    _assert_close(load_file(fsdp_runs.out / "fsdp_shard_base.safetensors"), fsdp,
                  "base sharded too vs base replicated")
    for name in ("fsdp_adamw", "ddp_adamw", "fsdp_shard_base"):
        losses = fsdp_runs.reports[0][name]["losses"]
        assert len(losses) == 3
        assert losses == pytest.approx(one_process.losses, rel=1e-5), name
    # Both ranks report the same (all-reduced) losses.
    assert fsdp_runs.reports[1]["fsdp_adamw"]["losses"] == fsdp_runs.reports[0]["fsdp_adamw"][
        "losses"]


def test_fsdp_with_frozen_embeddings_keeps_the_table_and_trains_the_rest(fsdp_runs,
                                                                         one_process_frozen):
    """The table shares the root unit with trainable parameters (readout, norms): FSDP2 must
    reduce-scatter only those, and the optimizer must never see the table."""
    fsdp = load_file(fsdp_runs.out / "fsdp_freeze.safetensors")
    _assert_close(fsdp, one_process_frozen.weights, "2-rank FSDP vs 1 process, frozen table")
    assert torch.equal(fsdp[TABLE], one_process_frozen.initial[TABLE])
    assert not torch.equal(fsdp["readout.weight"], one_process_frozen.initial["readout.weight"])
    for report in fsdp_runs.reports:
        assert report["fsdp_freeze"]["losses"] == pytest.approx(one_process_frozen.losses,
                                                                rel=1e-5)
        assert report["fsdp_freeze"]["table_in_optimizer"] is False
        assert report["fsdp_adamw"]["table_in_optimizer"] is True  # the check can fail


def test_each_fsdp_rank_holds_about_half_the_training_state(fsdp_runs, one_process):
    whole = sum(one_process.memory.values())
    for rank, report in enumerate(fsdp_runs.reports):
        memory = report["fsdp_adamw"]["memory"]
        print(f"\nrank {rank}: {memory} vs one process {one_process.memory}")
        assert sum(memory.values()) <= 0.55 * whole
        assert memory["grads"] > 0 and memory["optimizer"] > 0
    # DDP replicates: each rank holds everything.
    assert sum(fsdp_runs.reports[0]["ddp_adamw"]["memory"].values()) == whole


def test_adamw8bit_trains_under_fsdp_with_a_quarter_of_the_state(fsdp_runs):
    report = fsdp_runs.reports[0]
    losses = report["fsdp_adamw8bit"]["losses"]
    print(f"\nadamw8bit losses {[round(x, 3) for x in losses]}")
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 1.0
    for rep in fsdp_runs.reports:
        eight, full = rep["fsdp_adamw8bit"]["memory"], rep["fsdp_adamw"]["memory"]
        assert 3 * eight["optimizer"] <= full["optimizer"], (eight, full)
        assert eight["params"] == full["params"]


def test_killed_fsdp_run_resumes_to_the_uninterrupted_weights(fsdp_runs, tokenizer):
    ref_dir = fsdp_runs.out / "ref" / "train" / METHOD
    out_dir = fsdp_runs.killed / "train" / METHOD
    assert fsdp_runs.reports[0]["resumed_from"].endswith("step_00000002")
    assert fsdp_runs.killed_at >= 3
    got, want = load_file(out_dir / "hypernet.safetensors"), load_file(
        ref_dir / "hypernet.safetensors")
    assert sorted(got) == sorted(want)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"resumed vs uninterrupted: {different[:3]}"
    # Checkpoints are sharded (one file per rank + metadata), the export is one plain file.
    checkpoint = list_checkpoints(out_dir / "checkpoints")[-1]
    assert len(list((checkpoint / SHARDS).glob("*.distcp"))) == 2
    assert json.loads((out_dir / "train_summary.json").read_text())["steps"] == 6
    assert sorted(json.loads((out_dir / "hypersteer_config.json").read_text())) == [
        "base_model", "hypernet_architecture", "hypersteer", "package_version"]
    model, tok = load_base(str(fsdp_runs.base_dir))
    hs = HyperSteer.from_pretrained(out_dir, model, tok, backend="hook")
    assert torch.equal(hs.hypernet.state_dict()["readout.weight"], want["readout.weight"])
    assert hs.steering_vectors(["legal terms"], ["Write a poem."]).shape == (1, WIDTH)


def test_planner_counts_what_each_rank_allocates(fsdp_runs, one_process):
    """``hypersteer plan``'s parameter, gradient and optimizer bytes (2 GPUs, fp32 on CPU)
    against the local shards the 2-rank trainings held, within 5 %."""
    cfg = base_config(str(fsdp_runs.base_dir))
    plans = {(p.strategy, p.optimizer): p for p in plan(
        cfg, wide_hs_config(), fsdp_train_cfg(fsdp_runs.targets), gpus=2, bf16=False)}
    measured = {("fsdp", "adamw"): fsdp_runs.reports[0]["fsdp_adamw"]["memory"],
                ("fsdp", "adamw8bit"): fsdp_runs.reports[0]["fsdp_adamw8bit"]["memory"],
                ("ddp", "adamw"): one_process.memory}
    for key, memory in measured.items():
        planned = plans[key]
        for what, got in (("params", planned.weights), ("grads", planned.grads),
                          ("optimizer", planned.optim)):
            assert got == pytest.approx(memory[what], rel=0.05), (key, what, got, memory)


def test_planner_counts_no_grads_or_moments_for_a_frozen_table(fsdp_runs, one_process,
                                                               one_process_frozen):
    """With ``freeze_embeddings`` the table still counts as weights, not as gradients or
    optimizer state: planned against what the ranks (and one process) held, within 5 %."""
    cfg = base_config(str(fsdp_runs.base_dir))
    train = fsdp_train_cfg(fsdp_runs.targets)
    plans = {(p.strategy, p.optimizer): p for p in plan(cfg, wide_hs_config(), train, gpus=2,
                                                        bf16=False)}
    frozen = {(p.strategy, p.optimizer): p for p in plan(
        cfg, wide_hs_config(), dataclasses.replace(train, freeze_embeddings=True), gpus=2,
        bf16=False)}
    measured = {("fsdp", "adamw"): fsdp_runs.reports[0]["fsdp_freeze"]["memory"],
                ("ddp", "adamw"): one_process_frozen.memory}
    for key, memory in measured.items():
        planned = frozen[key]
        assert planned.weights == plans[key].weights
        for what, got in (("grads", planned.grads), ("optimizer", planned.optim)):
            assert got == pytest.approx(memory[what], rel=0.05), (key, what, got, memory)
    # The table is a real share of this model: the check would catch counting it.
    saved = one_process.memory["grads"] - one_process_frozen.memory["grads"]
    assert saved >= 0.1 * one_process.memory["grads"]


def test_plan_command_prints_every_combination(fsdp_runs, capsys):
    assert cli.main(["plan", "--config", str(fsdp_runs.root / "cfg.yaml"), "--gpus", "2",
                     "--gpu_mem_gb", "1"]) == 0
    out = capsys.readouterr().out
    for strategy in ("ddp", "fsdp"):
        for optimizer in ("adamw ", "adamw8bit"):
            assert re.search(rf"^{strategy}\s+{optimizer}.*\byes\b", out, re.M), out


# ------------------------------------------------------------------------------ bad settings


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_unknown_strategy_and_optimizer_are_one_line_errors(tmp_path, capsys, concept10_dir):
    with pytest.raises(ConfigError, match="strategy: 'zero3' is not one of"):
        TrainConfig(strategy="zero3")
    with pytest.raises(ConfigError, match="optimizer: 'lion' is not one of"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="shard_base: needs strategy: fsdp"):
        TrainConfig(shard_base=True)
    config = write_run_yaml(tmp_path / "cfg.yaml", "tiny",
                            {METHOD: method_entry(strategy="zero3")})
    assert cli.main(["train", *_train_args(config, concept10_dir, tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "strategy: 'zero3'" in err, err


def test_fsdp_without_a_process_group_and_cpu_offload_on_cpu(tokenizer, concept10_dir, tmp_path):
    from trainer_helpers import make_hs, tiny_base

    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    hs = make_hs(tiny_base(tokenizer), tokenizer, "xattn")
    with pytest.raises(ConfigError) as err:
        Trainer(hs, frame, TrainConfig(strategy="fsdp", max_length=256), tmp_path)
    assert "process group" in _one_line(err.value) and "torchrun" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Trainer(hs, frame, TrainConfig(strategy="fsdp", cpu_offload=True, max_length=256),
                tmp_path)
    assert "cpu_offload" in _one_line(err.value) and "GPU" in str(err.value)


def test_adamw8bit_without_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(ConfigError) as err:
        build_optimizer("adamw8bit", [torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0)
    assert ".[scale]" in _one_line(err.value)


def test_resuming_under_the_other_strategy_says_which(tokenizer, concept10_dir, tmp_path):
    from axbench_hypersteer.train.checkpointing import commit_checkpoint, stage_checkpoint
    from trainer_helpers import make_hs, tiny_base

    root = tmp_path / "checkpoints"
    staged = stage_checkpoint(root, 2)
    (staged / SHARDS).mkdir()
    (staged / SHARDS / ".metadata").write_bytes(b"shards of an fsdp run")
    commit_checkpoint(root, staged, 2, {"step": 2}, keep=2)
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    trainer = Trainer(make_hs(tiny_base(tokenizer), tokenizer, "xattn"), frame,
                      TrainConfig(max_length=256), tmp_path, progress=False)
    with pytest.raises(ConfigError) as err:
        trainer.train(resume=True)
    assert "written by strategy fsdp" in _one_line(err.value)
