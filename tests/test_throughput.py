"""Throughput options of the trainer change speed, not learning: length-bucketed batches and the
frozen-prefix cache give the losses and weights of the plain loop (figures: docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch

from axbench_hypersteer.model.config import ConfigError, HyperSteerConfig
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.train.batching import bucketed_batches, pad_fraction, plain_batches
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


def _train(tokenizer, frame, out, variant="xattn", context_layer=None, backend="hook", **cfg):
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
    plain = Trainer(hs, frame, train_cfg(batch_size=4), tmp_path / "a", progress=False)
    bucketed = Trainer(hs, frame, train_cfg(batch_size=4, length_bucket_group=16),
                       tmp_path / "b", progress=False)
    assert bucketed.pad_fraction() < 0.5 * plain.pad_fraction()


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
