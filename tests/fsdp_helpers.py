"""Shared by tests/test_fsdp.py and its torchrun worker (tests/run_fsdp_checks.py): one
hypernetwork and the trainings both sides run, so "2 ranks" and "1 process" mean the same model
on the same global batch.

The base is 128 wide (not the 64 of the other trainer tests) so that every weight matrix's
2-rank shard still has >= 4096 values: torchao keeps smaller tensors' moments in fp32, and the
8-bit saving would not show.
"""

from __future__ import annotations

from axbench_hypersteer.model.config import HyperSteerConfig, TrainConfig
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.testing.tiny import build_tiny_gemma2

from trainer_helpers import INIT_RANGE, LAYER, NUM_LAYERS

WIDTH = 128
NUM_BLOCKS = 2  # two FSDP units below the root

# name -> TrainConfig overrides of the 2-rank trainings (batch_size is per rank).
TRAININGS = {
    "fsdp_adamw": dict(strategy="fsdp"),
    "ddp_adamw": dict(strategy="ddp"),
    "fsdp_adamw8bit": dict(strategy="fsdp", optimizer="adamw8bit", max_steps=8),
    # The token table (in the root unit, with trainable norms and readout) stays as it was.
    "fsdp_freeze": dict(strategy="fsdp", freeze_embeddings=True),
    # Last: it shards the (shared) base model's blocks in place.
    "fsdp_shard_base": dict(strategy="fsdp", shard_base=True),
}


def wide_base(tokenizer, seed: int = 0):
    return build_tiny_gemma2(tokenizer, hidden_size=WIDTH, num_layers=NUM_LAYERS, seed=seed,
                             initializer_range=INIT_RANGE)


def wide_hs_config() -> HyperSteerConfig:
    return HyperSteerConfig(variant="xattn", steering_layer=LAYER, num_blocks=NUM_BLOCKS,
                            cross_attention_heads=4, seed=42)


def make_wide_hs(base, tokenizer) -> HyperSteer:
    return HyperSteer.from_base(base, tokenizer, wide_hs_config(), backend="hook")


def fsdp_train_cfg(targets: str, **overrides) -> TrainConfig:
    """Reconstruction only: its loss is a mean over rows, so two ranks' mean of their own means
    is the one-process mean of the global batch (a token-averaged LM loss is not). The paper's
    batching (no length buckets, no prefix cache): with buckets each rank sorts its own shard,
    so two ranks' global batch holds other examples than one process's, a valid run but not
    the same one."""
    kw = dict(batch_size=2, n_epochs=5, max_steps=3, lr=1e-2, max_length=256, dev_examples=0,
              eval_every=1000, checkpoint_every=1000, objective="reconstruction",
              reconstruction_targets=str(targets), seed=0, length_bucket_group=0,
              prefix_cache="off")
    kw.update(overrides)
    return TrainConfig(**kw)
