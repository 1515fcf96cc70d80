"""The trainer: the loss falls on real AxBench data, an interrupted run resumes to the very same
weights, two DDP ranks save once, the reconstruction objective, gradient flow, the train layout
and data errors. Everything runs on CPU in fp32 with one intra-op thread (bit-reproducible and,
on a shared 2-core machine, much faster than two contending threads)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from axbench_hypersteer import cli
from axbench_hypersteer.model.errors import DataError
from axbench_hypersteer.model.fileio import UnsafeFileError, save_tensors
from axbench_hypersteer.stages import train_stage
from axbench_hypersteer.train.checkpointing import list_checkpoints
from axbench_hypersteer.stages.data import load_train_frame
from axbench_hypersteer.stages.run_config import load_run_config
from axbench_hypersteer.train.trainer import (Trainer, load_reconstruction_targets,
                                                 reconstruction_loss)
from axbench_hypersteer.testing.tiny import save_tiny

from trainer_helpers import (
    RUN_SCRIPT,
    TORCHRUN,
    VARIANTS,
    assert_same_tensors,
    copy_dump,
    hypernet_state,
    kill_after_step,
    make_hs,
    method_entry,
    read_log,
    run_group,
    start_train,
    tiny_base,
    train_cfg,
    train_steps,
    write_run_yaml,
)


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory, tokenizer):
    """The tiny base model on disk, so CLI runs load it in a blink instead of retraining the
    tokenizer (``model_name: tiny``) in every process."""
    return save_tiny(tiny_base(tokenizer), tokenizer, tmp_path_factory.mktemp("tiny_base"))


def _cli_args(config, data_dir, dump_dir, *extra) -> list[str]:
    return ["--config", str(config), "--data_dir", str(data_dir), "--dump_dir", str(dump_dir),
            *extra]


# ------------------------------------------------------------------------- 1. learning


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_falls_on_concept10(variant, tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=6, seed=0)  # 6 x 10 concepts
    # dev: unseen examples of the same (held-in) concepts
    dev, train = frame.iloc[:10].reset_index(drop=True), frame.iloc[10:].reset_index(drop=True)
    hs = make_hs(tiny_base(tokenizer), tokenizer, variant)
    trainer = Trainer(hs, train, train_cfg(max_steps=20, eval_every=20), tmp_path,
                      dev_frame=dev, progress=False)
    dev_start = trainer.evaluate()["dev_loss"]
    result = trainer.train()
    print(f"\n[{variant}] train loss {result.first_loss:.3f} -> {result.last_loss:.3f} "
          f"(mean of last 5); dev loss {dev_start:.3f} -> {result.dev_losses[-1]:.3f}")
    assert result.steps == 20 and len(result.losses) == 20
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.last_loss < result.first_loss - 0.3
    assert result.dev_losses[-1] < dev_start - 0.1
    log = read_log(tmp_path / "train_log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in log if "dev_loss" in r] == [20]


# ------------------------------------------------------------------------- 2. resume


def test_resume_in_process_matches_uninterrupted(tokenizer, concept10_dir, tmp_path, caplog):
    frame = load_train_frame(concept10_dir, max_num_of_examples=2, seed=0)  # 10 batches/epoch
    # 14 updates over 2 epochs, warmup then decay; checkpoints at 5 and 10 (an epoch boundary)
    cfg = train_cfg(batch_size=2, n_epochs=2, max_steps=14, checkpoint_every=5,
                    warmup_ratio=0.2)
    full_hs = make_hs(tiny_base(tokenizer), tokenizer, "xattn")
    full = Trainer(full_hs, frame, cfg, tmp_path / "full", progress=False).train()
    want = hypernet_state(full_hs)
    assert full.steps == 14
    assert [p.name for p in list_checkpoints(tmp_path / "full" / "checkpoints")] == \
        ["step_00000005", "step_00000010"]

    def copy_with(name: str, keep: set[str]):
        out = tmp_path / name
        shutil.copytree(tmp_path / "full", out)
        for path in list_checkpoints(out / "checkpoints"):
            if path.name not in keep:
                shutil.rmtree(path)
        return out

    def resume(out):
        # A different init seed: only the checkpoint can make the weights equal.
        hs = make_hs(tiny_base(tokenizer), tokenizer, "xattn", seed=7)
        assert not torch.equal(hs.hypernet.readout.weight, want["readout.weight"])
        return hs, Trainer(hs, frame, cfg, out, progress=False).train(resume=True)

    out = copy_with("from10", {"step_00000010"})
    stale = out / "checkpoints" / ".step_00000012.k1ll3d.tmp"  # a checkpoint write killed half way
    stale.mkdir()
    (stale / "hypernet.safetensors").write_bytes(b"partial")
    hs, result = resume(out)
    assert not stale.exists()
    assert result.resumed_from.endswith("step_00000010")
    assert result.steps == 14 and result.losses == full.losses[10:]
    assert_same_tensors(hypernet_state(hs), want, "resumed at step 10")

    # The newest checkpoint truncated (a kill mid-copy, a full disk): skipped with a warning.
    out = copy_with("corrupt", {"step_00000005", "step_00000010"})
    weights = out / "checkpoints" / "step_00000010" / "hypernet.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="axbench_hypersteer.train.checkpointing"):
        hs, result = resume(out)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step_00000010" in w and "skipping" in w for w in warnings), warnings
    assert result.resumed_from.endswith("step_00000005")
    assert result.losses == full.losses[5:]
    assert_same_tensors(hypernet_state(hs), want, "resumed at step 5 past a corrupt step 10")


def test_fresh_start_discards_an_earlier_runs_checkpoints(tokenizer, concept10_dir, tmp_path,
                                                           caplog):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    frame["output"] = "A short answer."

    def make(steps: int) -> Trainer:
        return Trainer(make_hs(tiny_base(tokenizer), tokenizer, "nocontext"), frame,
                       train_cfg(batch_size=2, max_steps=steps, checkpoint_every=2), tmp_path,
                       progress=False)

    make(6).train()
    assert [p.name[-1] for p in list_checkpoints(tmp_path / "checkpoints")] == ["2", "4", "6"]
    with caplog.at_level(logging.WARNING, logger="axbench_hypersteer.train.trainer"):
        make(2).train(resume=False)
    assert "removing the checkpoints of an earlier run" in caplog.text
    # Without the clean-up, rotation would have kept the stale step 4 and 6 for a resume.
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    assert make(2).train(resume=True).resumed_from.endswith("step_00000002")


def test_a_fresh_run_starts_a_fresh_train_log(tokenizer, concept10_dir, tmp_path):
    """A non-resumed run rewrites train_log.jsonl (it used to append to the old run's lines);
    a resumed one appends."""
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)

    def make(steps: int) -> Trainer:
        return Trainer(make_hs(tiny_base(tokenizer), tokenizer, "nocontext"), frame,
                       train_cfg(batch_size=2, max_steps=steps, checkpoint_every=1), tmp_path,
                       progress=False)

    make(3).train()
    assert [r["step"] for r in read_log(tmp_path / "train_log.jsonl")] == [1, 2, 3]
    make(2).train()
    assert [r["step"] for r in read_log(tmp_path / "train_log.jsonl")] == [1, 2]
    make(3).train(resume=True)
    assert [r["step"] for r in read_log(tmp_path / "train_log.jsonl")] == [1, 2, 3]


def test_sigkill_and_resume_matches_uninterrupted(saved_base, concept10_dir, tmp_path):
    config = write_run_yaml(tmp_path / "cfg.yaml", str(saved_base), {
        "HyperSteerXAttn": method_entry(max_steps=12, checkpoint_every=2, keep_checkpoints=2,
                                        warmup_ratio=0.1)})
    # The uninterrupted run, in this process, through the same entry point (1 thread too).
    assert train_stage.main(_cli_args(config, concept10_dir, tmp_path / "ref")) == 0
    want = load_file(tmp_path / "ref" / "train" / "HyperSteerXAttn" / "hypernet.safetensors")

    dump = tmp_path / "killed"
    out_dir = dump / "train" / "HyperSteerXAttn"
    log, stdout = out_dir / "train_log.jsonl", tmp_path / "stdout.txt"
    args = _cli_args(config, concept10_dir, dump)

    proc = start_train(args, stdout)
    first_kill = kill_after_step(proc, log, 3, seen_before=0)
    assert proc.returncode == -signal.SIGKILL
    assert not (out_dir / "hypersteer_config.json").exists()
    assert list_checkpoints(out_dir / "checkpoints")

    seen = len(train_steps(log))
    proc = start_train(args + ["--resume"], stdout)
    second_kill = kill_after_step(proc, log, 7, seen_before=seen)
    assert proc.returncode == -signal.SIGKILL
    assert not (out_dir / "hypersteer_config.json").exists()
    resume_at = int(list_checkpoints(out_dir / "checkpoints")[-1].name.split("_")[1])

    # The final resume runs in this process (one process start less; the same entry point).
    assert train_stage.main(args + ["--resume"]) == 0
    summary = json.loads((out_dir / "train_summary.json").read_text())
    print(f"\nkilled after steps {first_kill} and {second_kill}; "
          f"finished from {summary['resumed_from']}")
    assert summary["steps"] == 12
    assert summary["resumed_from"].endswith(f"step_{resume_at:08d}")
    assert resume_at >= 6  # the last run really started from the second run's progress
    assert_same_tensors(load_file(out_dir / "hypernet.safetensors"), want,
                        "killed twice and resumed")


# ------------------------------------------------------------------------- 3. torchrun


def test_torchrun_two_ranks_train_and_save_once(saved_base, concept10_dir, tmp_path):
    targets = tmp_path / "targets.safetensors"
    save_tensors(targets, {"weight": torch.randn(10, 64, generator=torch.Generator()
                                                 .manual_seed(0))})
    config = write_run_yaml(tmp_path / "cfg.yaml", str(saved_base), {
        "HyperSteerXAttn": method_entry(max_steps=4, checkpoint_every=2, dev_examples=4,
                                        eval_every=2),
        # Reconstruction only: its forward must go through DDP too, or the ranks drift apart.
        "HyperSteerNoContext": method_entry(max_steps=3, objective="reconstruction",
                                            reconstruction_targets=str(targets)),
    })
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    dump = tmp_path / "dump"
    proc = run_group([TORCHRUN, "--standalone", "--nproc_per_node=2", RUN_SCRIPT,
                      *_cli_args(config, concept10_dir, dump, "--method", "all")],
                     timeout=150, HYPERSTEER_TEST_RANK_DIR=str(ranks))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("HyperSteerXAttn: 4 updates") == 1, proc.stdout  # rank 0 prints

    train_dir = dump / "train"
    files = sorted(str(p.relative_to(train_dir)) for p in train_dir.rglob("*")
                   if p.is_file() and "checkpoints" not in p.parts)
    assert files == sorted([
        "config.json", "metadata.jsonl",
        *(f"{m}/{f}" for m in ("HyperSteerXAttn", "HyperSteerNoContext")
          for f in ("hypernet.safetensors", "hypersteer_config.json", "train_log.jsonl",
                    "train_summary.json")),
    ])
    assert json.loads((train_dir / "config.json").read_text()) == {
        "model_name": str(saved_base), "layer": 0, "component": "res"}
    assert len((train_dir / "metadata.jsonl").read_text().splitlines()) == 10
    checkpoints = train_dir / "HyperSteerXAttn" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002", "step_00000004"]

    log = read_log(train_dir / "HyperSteerXAttn" / "train_log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "dev_loss" in r] == [2, 4]
    assert train_steps(train_dir / "HyperSteerNoContext" / "train_log.jsonl") == [1, 2, 3]
    summary = json.loads((train_dir / "HyperSteerXAttn" / "train_summary.json").read_text())
    assert summary["train_examples"] == 16  # 20 rows - 4 dev, split by the sampler over 2 ranks

    for method in ("HyperSteerXAttn", "HyperSteerNoContext"):
        rank0 = load_file(ranks / f"{method}.rank0.safetensors")
        assert_same_tensors(load_file(ranks / f"{method}.rank1.safetensors"), rank0,
                            f"{method}: rank 1 vs rank 0")
        assert_same_tensors(load_file(train_dir / method / "hypernet.safetensors"), rank0,
                            f"{method}: saved vs rank 0")


# ------------------------------------------------------------------------- 4. reconstruction


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_reconstruction_objective_lowers_the_loss(suffix, tokenizer, concept10_dir, tmp_path):
    targets = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"targets{suffix}"
    if suffix == ".pt":
        torch.save(targets, path)
    else:
        save_tensors(path, {"weight": targets})
    assert torch.equal(load_reconstruction_targets(str(path), 64), targets)

    frame = load_train_frame(concept10_dir, max_num_of_examples=2, seed=0)
    hs = make_hs(tiny_base(tokenizer), tokenizer, "nocontext")
    cfg = train_cfg(objective="reconstruction", reconstruction_targets=str(path), lr=5e-2,
                    max_steps=30)
    trainer = Trainer(hs, frame, cfg, tmp_path / "out", dev_frame=frame, progress=False)

    def measured() -> float:
        with torch.no_grad():
            rows = [trainer.train_set[i] for i in range(len(trainer.train_set))]
            batch = trainer.collate(rows)
            delta = hs.compute_vectors(batch["hyper_input_ids"], batch["hyper_attention_mask"])
            return reconstruction_loss(delta, targets[batch["concept_ids"]]).item()

    before = measured()
    assert trainer.evaluate()["dev_loss"] == pytest.approx(before, rel=1e-5)
    result = trainer.train()
    after = measured()
    print(f"\n[reconstruction {suffix}] loss {before:.2f} -> {after:.2f}")
    assert after < 0.1 * before
    record = read_log(tmp_path / "out" / "train_log.jsonl")[0]
    assert "reconstruction_loss" in record and "lm_loss" not in record
    assert result.steps == 30


def test_reconstruction_loss_by_hand():
    delta = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[4.0, 3.0], [0.0, 1.0], [0.0, 2.0]])
    # row 0: cos = 24/25, |d-t|^2 = 2;  row 1: cos = 0, |d-t|^2 = 2;  row 2: identical
    rows = [(1 - 24 / 25) + 2.0, 1.0 + 2.0, 0.0]
    assert reconstruction_loss(delta, target).item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    assert reconstruction_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # opposite directions: 1 - (-1) + |2t|^2
    assert reconstruction_loss(-target[:1], target[:1]).item() == pytest.approx(2 + 4 * 25)


def test_reconstruction_targets_errors(tokenizer, concept10_dir, tmp_path):
    narrow = tmp_path / "narrow.safetensors"
    save_tensors(narrow, {"weight": torch.zeros(10, 32)})
    with pytest.raises(ValueError, match=r"expected shape \[num_concepts, 64\], got \[10, 32\]") \
            as err:
        load_reconstruction_targets(str(narrow), 64)
    assert str(narrow) in str(err.value)

    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    hs = make_hs(tiny_base(tokenizer), tokenizer, "nocontext")
    with pytest.raises(ValueError, match="narrow.safetensors"):
        Trainer(hs, frame, train_cfg(objective="both", reconstruction_targets=str(narrow)),
                tmp_path / "out", progress=False)
    short = tmp_path / "short.pt"
    torch.save(torch.zeros(5, 64), short)
    with pytest.raises(ValueError, match=r"short\.pt: has 5 rows but the training data has "
                                         r"concept_id 9"):
        Trainer(hs, frame, train_cfg(objective="reconstruction", reconstruction_targets=str(short)),
                tmp_path / "out", progress=False)


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_malicious_pickle_targets_are_refused(suffix, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{suffix}"
    torch.save({"weight": torch.zeros(10, 64), "x": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeFileError, match=r"evil\.(pt|bin): refused to load"):
        load_reconstruction_targets(str(path), 64)
    assert not marker.exists()
    # The payload is live: a plain unpickle (what torch.load(weights_only=False) does) runs it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


# ------------------------------------------------------------------------- 5. gradients


def test_only_the_hypernetwork_learns(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    base = tiny_base(tokenizer)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    hs = make_hs(base, tokenizer, "xattn")  # xattn: the base forward feeds the hypernetwork too
    hyper_before = hypernet_state(hs)
    trainer = Trainer(hs, frame, train_cfg(batch_size=2, max_steps=2), tmp_path, progress=False)
    assert {id(p) for p in trainer.params} == {id(p) for p in hs.hypernet.parameters()}
    assert not any(p.requires_grad for p in base.parameters())
    assert all(k.startswith("hypernet.") for k in hs.state_dict())

    with_grad = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: with_grad.append((
        [n for n, p in base.named_parameters() if p.grad is not None],
        [n for n, p in hs.hypernet.named_parameters() if p.grad is None],
    )))
    trainer.train()
    assert len(with_grad) == 2
    for base_grads, hyper_without_grad in with_grad:
        assert base_grads == [], "gradients reached the frozen base model"
        assert hyper_without_grad == [], "hypernetwork parameters got no gradient"
    assert_same_tensors(base.state_dict(), base_before, "base weights after training")
    changed = [k for k, v in hypernet_state(hs).items() if not torch.equal(v, hyper_before[k])]
    assert "readout.weight" in changed and any(k.startswith("cross_attentions.") for k in changed)


def test_freeze_embeddings_trains_everything_but_the_token_table(tokenizer, concept10_dir,
                                                                  tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    hs = make_hs(tiny_base(tokenizer), tokenizer, "xattn")
    before = hypernet_state(hs)
    trainer = Trainer(hs, frame, train_cfg(batch_size=2, max_steps=2, freeze_embeddings=True),
                      tmp_path, progress=False)
    table = hs.hypernet.body.get_input_embeddings().weight
    assert all(p is not table for p in trainer.params)
    trainer.train()
    after = hypernet_state(hs)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert "body.embed_tokens.weight" not in changed
    assert changed == set(after) - {"body.embed_tokens.weight"} - {
        k for k in after if not after[k].is_floating_point()}, "a trainable tensor did not move"


def test_gradient_accumulation_equals_the_larger_batch(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0).head(4)
    # Prompts (and so padding) differ; answers are equally long, so the token-mean loss of the
    # 4-row batch is exactly the mean of the two 2-row batches' token-mean losses.
    frame["output"] = "The same answer on every row, so each row scores as many tokens."
    runs = {}
    for name, batch_size, accum in (("batch4", 4, 1), ("batch2x2", 2, 2)):
        hs = make_hs(tiny_base(tokenizer), tokenizer, "nocontext")
        trainer = Trainer(hs, frame, train_cfg(batch_size=batch_size,
                                               gradient_accumulation_steps=accum, max_steps=1,
                                               max_grad_norm=1e6, lr=1e-3),
                          tmp_path / name, progress=False)
        grads = []
        trainer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, _grads=grads, _params=trainer.params:
            _grads.extend(p.grad.clone() for p in _params))
        before = [p.detach().clone() for p in trainer.params]
        result = trainer.train()
        assert result.steps == 1
        updates = [p.detach() - b for p, b in zip(trainer.params, before)]
        runs[name] = (grads, result.losses[0], updates)
    (g4, loss4, u4), (g22, loss22, u22) = runs["batch4"], runs["batch2x2"]
    assert loss22 == pytest.approx(loss4, rel=1e-5)
    assert len(g4) == len(g22) == len(u4) == len(u22)
    for a, b in zip(g4, g22):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    for g, a, b in zip(g4, u4, u22):
        # AdamW's first step is lr * g / (|g| + eps): well conditioned wherever |g| >> eps; a
        # gradient ~1e-9 (an almost unused embedding row) turns float noise into a visible step.
        clear = g.abs() > 1e-6
        torch.testing.assert_close(b[clear], a[clear], rtol=0, atol=1e-7)  # 1e-4 of lr
        assert b.abs().max() <= 1e-3 + 1e-6


def test_accumulation_counts_optimizer_steps(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)  # 10 rows
    frame["output"] = "Short."
    hs = make_hs(tiny_base(tokenizer), tokenizer, "nocontext")
    # 5 batches of 2 per epoch, 2 per update -> ceil(5 / 2) = 3 updates per epoch, 2 epochs
    trainer = Trainer(hs, frame, train_cfg(batch_size=2, gradient_accumulation_steps=2,
                                           n_epochs=2), tmp_path, progress=False)
    calls = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(1))
    result = trainer.train()
    assert trainer.total_updates == 6
    assert result.steps == len(calls) == len(result.losses) == 6
    assert train_steps(tmp_path / "train_log.jsonl") == [1, 2, 3, 4, 5, 6]
    assert (trainer.epoch, trainer.next_batch) == (2, 0)


# ------------------------------------------------------------------------- 6. layout


def test_train_layout_and_rerun_is_a_no_op(saved_base, concept10_dir, tmp_path, capsys):
    config = write_run_yaml(tmp_path / "cfg.yaml", str(saved_base), {
        "HyperSteerNoContext": method_entry(max_steps=2)}, max_concepts=3)
    dump = tmp_path / "dump"
    assert train_stage.main(_cli_args(config, concept10_dir, dump)) == 0
    assert "HyperSteerNoContext: 2 updates" in capsys.readouterr().out

    train_dir = dump / "train"
    assert json.loads((train_dir / "config.json").read_text()) == {
        "model_name": str(saved_base), "layer": 0, "component": "res"}
    lines = (train_dir / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 3
    source = (concept10_dir / "generate" / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [json.loads(x) for x in source[:3]]
    summary = json.loads((train_dir / "HyperSteerNoContext" / "train_summary.json").read_text())
    assert summary["train_concepts"] == 3 and summary["train_examples"] == 6

    weights = train_dir / "HyperSteerNoContext" / "hypernet.safetensors"
    stamp = (weights.stat().st_mtime_ns, weights.read_bytes(),
             (train_dir / "HyperSteerNoContext" / "train_log.jsonl").read_text())
    run = load_run_config(config)
    assert train_stage.train_method(run, run.method(), concept10_dir, dump) is None
    assert train_stage.main(_cli_args(config, concept10_dir, dump, "--resume")) == 0
    assert "updates" not in capsys.readouterr().out
    assert (weights.stat().st_mtime_ns, weights.read_bytes(),
            (train_dir / "HyperSteerNoContext" / "train_log.jsonl").read_text()) == stamp


# ------------------------------------------------------------------------- 7. bad data


def test_too_long_dev_prompt_fails_before_the_first_step(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    dev = frame.head(2).copy()
    dev.loc[1, "input"] = "word " * 300
    hs = make_hs(tiny_base(tokenizer), tokenizer, "nocontext")
    with pytest.raises(DataError, match=r"1 dev prompt\(s\) are >= max_length=256"):
        Trainer(hs, frame, train_cfg(), tmp_path, dev_frame=dev, progress=False)
    with pytest.raises(DataError, match=r"1 heldout prompt\(s\) are >= max_length=256"):
        Trainer(hs, frame, train_cfg(), tmp_path, heldout_frame=dev, progress=False)



def _first_positive(frame: pd.DataFrame) -> int:
    return int(frame.index[frame["category"] == "positive"][0])


def _unknown_concept(frame):
    frame.loc[_first_positive(frame), "concept_id"] = 99
    return frame


def _nan_output(frame):
    frame.loc[_first_positive(frame), "output"] = float("nan")
    return frame


BAD_DATA = {
    "missing_column": (lambda f: f.drop(columns=["output"]), {},
                       r"train_data\.parquet: missing column\(s\) \['output'\]"),
    "concept_not_in_metadata": (_unknown_concept, {},
                                r"train_data\.parquet: concept_id 99 is not in \S*metadata\.jsonl"),
    "empty_after_filtering": (lambda f: f[f["category"] == "negative"], {},
                              r"no positive rows in train_data\.parquet"),
    "nan_output": (_nan_output, {},
                   r"train_data\.parquet: column 'output' row \d+: expected non-empty text"),
    "prompt_longer_than_max_length": (None, {"max_length": 24},
                                      r"training prompt\(s\) are >= max_length=24"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_clearly_before_training(case, saved_base, concept10_dir, tmp_path,
                                                capsys):
    edit, entry, pattern = BAD_DATA[case]
    data = copy_dump(concept10_dir, tmp_path / "data", edit)
    config = write_run_yaml(tmp_path / "cfg.yaml", str(saved_base), {
        "HyperSteerXAttn": method_entry(max_steps=2, **entry)})
    dump = tmp_path / "dump"
    assert cli.main(["train", *_cli_args(config, data, dump)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hypersteer train: error: ") and "\n" not in err, err
    assert re.search(pattern, err), err
    if edit is not None:
        assert str(data / "generate") in err  # names the file (or its directory)
    out_dir = dump / "train" / "HyperSteerXAttn"
    assert not (out_dir / "train_log.jsonl").exists() and not (out_dir / "checkpoints").exists()
