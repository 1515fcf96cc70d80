"""The hypernetwork must learn at the paper's learning rate as fast as the official one (issue 17).

Every other test checks mechanics; this one checks learning speed. On a random tiny Gemma-2 whose
weights are drawn at std 0.2 (so one steering vector can move the loss), 20 updates at lr 8e-5
must remove a pinned fraction of the held-out loss, and the vectors must start at the scale of the
raw residual. Both numbers were set from the fixed code with margin; the architecture before the
fix (normalised readout input, un-normalised cross-attention output) misses both by far. The
full side-by-side comparison with the official code is benchmarks/fidelity_vs_official.py.
"""

import pandas as pd
import pytest
import torch

from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.model.config import ConfigError, HyperSteerConfig, TrainConfig
from axbench_hypersteer.model.fileio import load_tensors, save_tensors
from axbench_hypersteer.model.hypersteer import WEIGHTS_NAME, HyperSteer
from axbench_hypersteer.stages.data import load_train_frame
from axbench_hypersteer.stages.steering_loss import example_losses
from axbench_hypersteer.train.trainer import Trainer
from axbench_hypersteer.testing.tiny import build_tiny_gemma2, redraw_matrices_

STEPS, BATCH, HELDOUT = 20, 4, 16
# Measured (torch 2.13 CPU, transformers 4.57): the fixed code starts at norm 3.49 and removes
# 0.49 % of the held-out loss (8.980 -> 8.936); the code before the fix starts at 1.32 and removes
# 0.06 % (8.988 -> 8.983). Pins sit about 30-40 % below the fixed code's figures.
MIN_INIT_NORM = 2.5
MIN_FRACTION = 0.003


def std02_base(tokenizer):
    return redraw_matrices_(build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0), 0.2)


def mean_norm(hs: HyperSteer, frame: pd.DataFrame) -> float:
    batch = SteeringCollator(hs.tokenizer)(frame.to_dict("records"))
    with torch.no_grad():
        vecs = hs.compute_vectors(batch["hyper_input_ids"], batch["hyper_attention_mask"],
                                  batch["input_ids"], batch["attention_mask"],
                                  batch["context_mask"])
    return float(vecs.norm(dim=-1).mean())


def test_learns_at_the_papers_learning_rate(tokenizer, concept10_dir, tmp_path):
    frame = load_train_frame(concept10_dir, seed=0)
    train, heldout = frame.iloc[:STEPS * BATCH], frame.iloc[STEPS * BATCH:STEPS * BATCH + HELDOUT]
    hs = HyperSteer.from_base(std02_base(tokenizer), tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=2, num_blocks=2, cross_attention_heads=4), backend="hook")

    init_norm = mean_norm(hs, heldout)
    before = example_losses(hs, heldout, batch_size=HELDOUT, max_length=512)["loss"].mean()
    Trainer(hs, train, TrainConfig(batch_size=BATCH, n_epochs=1, lr=8e-5, dev_examples=0,
                                   eval_every=10**6, checkpoint_every=10**6, seed=0),
            tmp_path, progress=False).train()
    after = example_losses(hs, heldout, batch_size=HELDOUT, max_length=512)["loss"].mean()

    fraction = (before - after) / before
    print(f"init norm {init_norm:.2f}, held-out loss {before:.3f} -> {after:.3f} "
          f"({100 * fraction:.1f}%)")
    assert init_norm >= MIN_INIT_NORM, (
        f"steering vectors start at norm {init_norm:.2f} < {MIN_INIT_NORM}: the readout no longer "
        "reads the raw residual")
    assert fraction >= MIN_FRACTION, (
        f"{STEPS} updates at lr 8e-5 removed {100 * fraction:.1f}% of the held-out loss, "
        f"pinned >= {100 * MIN_FRACTION:.0f}%: the hypernetwork learns slower than it did")


def test_checkpoint_of_the_old_architecture_fails_with_one_line(tiny_model, tokenizer, tmp_path):
    hs = HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=2, num_blocks=2, cross_attention_heads=4), backend="hook")
    hs.save_pretrained(tmp_path)
    HyperSteer.from_pretrained(tmp_path, tiny_model, tokenizer, backend="hook")  # round trip
    state = load_tensors(tmp_path / WEIGHTS_NAME)
    old = {k.replace(".post_norm.", ".context_norm."): v for k, v in state.items()}
    old["body.norm.weight"] = torch.ones(tiny_model.config.hidden_size)
    save_tensors(tmp_path / WEIGHTS_NAME, old, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"hypernet.safetensors: saved by hypernetwork "
                                          r"architecture 1 .* train the hypernetwork again"):
        HyperSteer.from_pretrained(tmp_path, tiny_model, tokenizer, backend="hook")
