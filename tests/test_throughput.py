"""Throughput options of the trainer change speed, not learning: length-bucketed batches and the
frozen-prefix cache give the losses and weights of the plain loop (figures: docs/benchmarks.md)."""

from __future__ import annotations

import logging

import pytest
import torch

from axbench_hypersteer.model.config import ConfigError, HyperSteerConfig
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.train.batching import bucketed_batches, pad_fraction, plain_batches
from axbench_hypersteer.train.prefix_cache import auto_mode
from axbench_hypersteer.stages.data import load_train_frame
from axbench_hypersteer.train.trainer import Trainer
from axbench_hypersteer.testing.tiny import build_tiny_gemma2

from trainer_helpers import INIT_RANGE, hypernet_state, train_cfg


def _hs(tokenizer, variant: str, steering_layer: int = 2, context_layer: int | None = None,
        backend: str = "hook"):
    base = build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0,
                             initializer_range=INIT_RANGE)
    cfg = HyperSteerConfig(variant=variant, steering_layer=steering_layer, num_blocks=1,
                           cross_attention_heads=4, context_layer=context_layer, seed=42)
    return HyperSteer.from_base(base, tokenizer, cfg, backend=backend)


PLAIN = dict(length_bucket_group=0, prefix_cache="off")  # the paper's loop: no option on


def _train(tokenizer, frame, out, variant="xattn", context_layer=None, backend="hook", **cfg):
    cfg = {**PLAIN, **cfg}
    hs = _hs(tokenizer, variant, context_layer=context_layer, backend=backend)
    trainer = Trainer(hs, frame, train_cfg(**cfg), out, progress=False)
    return trainer, trainer.train(), hypernet_state(hs)


# ----------------------------------------------------------------------------- bucketing


def test_bucketed_batches_cover_the_epoch_once_and_depend_on_seed_and_epoch():
    lengths = torch.randint(5, 300, (103,), generator=torch.Generator().manual_seed(0)).tolist()
    order = torch.randperm(103, generator=torch.Generator().manual_seed(1)).tolist()
    batches = bucketed_batches(order, lengths, 4, 8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert batches == bucketed_batches(order, lengths, 4, 8, seed=0, epoch=0)
    assert batches != bucketed_batches(order, lengths, 4, 8, seed=0, epoch=1)
    assert pad_fraction(batches, lengths) < 0.5 * pad_fraction(plain_batches(order, 4), lengths)
    # group=1: each batch holds the plain loop's examples, only reordered within it.
    same = bucketed_batches(order, lengths, 4, 1, seed=0, epoch=0)
    assert [sorted(b) for b in same] == [sorted(b) for b in plain_batches(order, 4)]


def test_bucketing_of_single_batches_leaves_the_losses_unchanged(tokenizer, concept10_dir,
                                                                 tmp_path):
    """Identical batches (group=1 reorders rows inside a batch only) give identical losses."""
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    _, plain, w_plain = _train(tokenizer, frame, tmp_path / "plain", n_epochs=2)
    _, bucketed, w_bucketed = _train(tokenizer, frame, tmp_path / "b1", n_epochs=2,
                                     length_bucket_group=1)
    torch.testing.assert_close(bucketed.losses, plain.losses, rtol=1e-5, atol=0)
    for k in w_plain:
        torch.testing.assert_close(w_bucketed[k], w_plain[k], rtol=1e-4, atol=1e-6)


def test_bucketing_lowers_the_pad_fraction_on_concept10(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, seed=0)
    hs = _hs(tokenizer, "nocontext")
    plain = Trainer(hs, frame, train_cfg(batch_size=4, **PLAIN), tmp_path / "a", progress=False)
    bucketed = Trainer(hs, frame, train_cfg(batch_size=4), tmp_path / "b", progress=False)
    assert bucketed.cfg.length_bucket_group == 16  # the default
    assert bucketed.pad_fraction() < 0.5 * plain.pad_fraction()


def test_a_short_last_batch_stays_last_so_accumulation_groups_stay_aligned():
    lengths = list(range(1, 11))
    batches = bucketed_batches(list(range(10)), lengths, 4, 16, seed=0, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert bucketed_batches([], [], 4, 16, seed=0, epoch=0) == []


def test_bucketed_accumulation_trains_on_the_larger_batch_examples(tokenizer, concept10_dir,
                                                                   tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=3, seed=0)  # 30 rows
    hs = _hs(tokenizer, "nocontext")
    big = Trainer(hs, frame, train_cfg(batch_size=4), tmp_path / "a", progress=False)
    small = Trainer(hs, frame, train_cfg(batch_size=2, gradient_accumulation_steps=2),
                    tmp_path / "b", progress=False)
    for epoch in (0, 1):
        pairs = small.epoch_batches(epoch)
        updates = [pairs[i] + pairs[i + 1] for i in range(0, len(pairs) - 1, 2)]
        assert updates == big.epoch_batches(epoch)[:len(updates)]
        assert len(big.epoch_batches(epoch)[-1]) == 2  # 30 rows: the short update comes last


# ----------------------------------------------------------------------------- prefix cache


@pytest.mark.parametrize("variant,context_layer,backend", [
    ("xattn", None, "pyvene"),  # pyvene steers the block output in place: recorded before that
    ("xattn", 1, "hook"), ("nocontext", None, "hook")])
def test_prefix_cache_trains_exactly_like_the_full_pass(variant, context_layer, backend,
                                                        tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)  # 3 batches/epoch
    kw = dict(variant=variant, context_layer=context_layer, backend=backend, n_epochs=2,
              batch_size=4)
    _, plain, w_plain = _train(tokenizer, frame, tmp_path / "plain", **kw)
    for mode in ("memory", "disk"):
        trainer, cached, w_cached = _train(tokenizer, frame, tmp_path / mode,
                                           prefix_cache=mode, **kw)
        # Epoch 1 records every example, epoch 2 replays them all.
        assert (trainer.prefix_cache.misses, trainer.prefix_cache.hits) == (3, 3)
        torch.testing.assert_close(cached.losses, plain.losses, rtol=1e-5, atol=1e-6)
        for k in w_plain:
            torch.testing.assert_close(w_cached[k], w_plain[k], rtol=1e-4, atol=1e-6)
    assert not list((tmp_path / "disk").glob("prefix_cache*")), "mapped file left behind"


def test_prefix_cache_restores_the_base_model(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    trainer, _, _ = _train(tokenizer, frame, tmp_path / "run", n_epochs=2, prefix_cache="memory")
    blocks = trainer.model.base_model.model.layers
    assert all("forward" not in block.__dict__ for block in blocks)


def test_prefix_cache_refuses_what_does_not_fit(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)
    with pytest.raises(ConfigError, match=r"needs .* GB .* prefix_cache_max_gb=1e-06"):
        _train(tokenizer, frame, tmp_path / "a", prefix_cache="memory", prefix_cache_max_gb=1e-6)
    targets = tmp_path / "targets.pt"
    torch.save(torch.zeros(int(frame["concept_id"].max()) + 1, 64), targets)
    with pytest.raises(ConfigError, match="never runs the base model: nothing to cache"):
        Trainer(_hs(tokenizer, "nocontext"), frame,
                train_cfg(prefix_cache="memory", objective="reconstruction",
                          reconstruction_targets=str(targets)), tmp_path / "b", progress=False)


def test_prefix_cache_auto_takes_memory_only_where_it_replays_and_fits(tokenizer, concept10_dir,
                                                                      tmp_path, caplog):
    frame = load_train_frame(concept10_dir, max_num_of_examples=1, seed=0)  # 3 batches/epoch
    targets = tmp_path / "targets.pt"
    torch.save(torch.zeros(int(frame["concept_id"].max()) + 1, 64), targets)
    cases = [  # (variant, TrainConfig overrides, mode, the log line's reason)
        ("xattn", dict(n_epochs=2), "memory", "within 50% of the"),
        ("xattn", dict(n_epochs=1), "off", "ends within its first epoch"),
        ("xattn", dict(n_epochs=2, max_steps=3), "off", "ends within its first epoch"),
        ("xattn", dict(n_epochs=2, prefix_cache_max_gb=1e-9), "off",
         "above prefix_cache_max_gb=1e-09"),
        ("nocontext", dict(n_epochs=2, objective="reconstruction",
                           reconstruction_targets=str(targets)), "off", "never run the base"),
    ]
    for variant, cfg, mode, why in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="axbench_hypersteer.train.trainer"):
            trainer = Trainer(_hs(tokenizer, variant), frame, train_cfg(**cfg), tmp_path / "r",
                              progress=False)
        assert trainer.cfg.prefix_cache == "auto"  # the default
        assert trainer.prefix_cache_mode == mode and (trainer.prefix_cache is None) == (
            mode == "off")
        lines = [r.getMessage() for r in caplog.records if "prefix_cache auto" in r.getMessage()]
        assert len(lines) == 1 and f"-> {mode}: " in lines[0] and why in lines[0], lines
    trainer = Trainer(_hs(tokenizer, "xattn"), frame, train_cfg(n_epochs=2), tmp_path / "t",
                      progress=False)
    trainer.train()
    assert (trainer.prefix_cache.misses, trainer.prefix_cache.hits) == (3, 3)


def test_prefix_cache_auto_declines_what_would_not_fit_and_distributed_runs():
    mode, why = auto_mode(10**16, replays=True, world_size=1, max_gb=None)  # 10 PB
    assert mode == "off" and "above 50% of the" in why and "GB of RAM available" in why
    mode, why = auto_mode(1024, replays=True, world_size=2, max_gb=None)
    assert mode == "off" and "2 ranks" in why
    assert auto_mode(1024, replays=True, world_size=1, max_gb=None)[0] == "memory"
