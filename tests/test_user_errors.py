"""User-fixable files that used to end in a plain ValueError traceback are HyperSteerErrors: one
line naming the file (issue 22)."""

from __future__ import annotations

import pytest
import torch

from axbench_hypersteer.model.config import HyperSteerConfig
from axbench_hypersteer.model.errors import CorruptFileError, DataError, HyperSteerError
from axbench_hypersteer.model.fileio import save_tensors
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.train.trainer import load_reconstruction_targets


def test_weights_of_another_variant_are_a_corrupt_file_error(tiny_model, tokenizer, tmp_path):
    config = HyperSteerConfig(variant="nocontext", steering_layer=2, num_blocks=2)
    HyperSteer.from_base(tiny_model, tokenizer, config).save_pretrained(tmp_path)
    xattn = HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=2, num_blocks=2, cross_attention_heads=4))
    save_tensors(tmp_path / "hypernet.safetensors",
                 {k: v.contiguous() for k, v in xattn.hypernet.state_dict().items()})
    with pytest.raises(CorruptFileError, match="hypernet.safetensors: weights do not fit"):
        HyperSteer.from_pretrained(tmp_path, tiny_model, tokenizer)


@pytest.mark.parametrize("tensors, message", [
    ({"a": torch.zeros(3, 64), "b": torch.zeros(3, 64)}, "expected one"),
    ({"weight": torch.zeros(3, 32)}, r"expected shape \[num_concepts, 64\]"),
])
def test_bad_reconstruction_targets_are_data_errors(tmp_path, tensors, message):
    path = tmp_path / "targets.safetensors"
    save_tensors(path, tensors)
    with pytest.raises(DataError, match=message) as caught:
        load_reconstruction_targets(str(path), hidden_size=64)
    assert isinstance(caught.value, HyperSteerError) and str(path) in str(caught.value)
