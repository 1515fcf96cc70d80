"""The optimizer of the hypernetwork: fp32 AdamW, or torchao's 8-bit AdamW for the 9B-width one.

8-bit moments cut AdamW's 8 bytes per parameter to about 2 (block-wise int8 with one fp32 scale per
256 values), which is what lets the 9B hypernetwork's optimizer state fit next to its weights.
torchao's ``AdamW8bit`` is the one that works on FSDP2's DTensor parameters; bitsandbytes' fails
on them ("mixed torch.Tensor and DTensor"), so it is not offered.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..model.config import ConfigError

# torchao quantizes a moment only when the parameter has at least this many values and they
# split into whole blocks; smaller tensors (norms, biases) keep fp32 moments.
AO_BLOCK_SIZE = 256
AO_MIN_QUANT_SIZE = 4096


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                    weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    """``fused``: torch's fused AdamW kernel (``TrainConfig.fused_adamw``; adamw only)."""
    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adamw8bit":
        try:
            from torchao.optim import AdamW8bit
        except ImportError:
            raise ConfigError("optimizer: adamw8bit needs torchao: pip install "
                              "-c constraints.txt -e '.[scale]'") from None
        return AdamW8bit(params, lr=lr, weight_decay=weight_decay,
                         block_size=AO_BLOCK_SIZE)
    raise ConfigError(f"optimizer: {name!r} is not one of ['adamw', 'adamw8bit']")


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds for ``tensor``: the local shard of a DTensor, the int8 codes plus
    scales of a torchao 8-bit state, the storage of a plain tensor."""
    if hasattr(tensor, "to_local"):
        tensor = tensor.to_local()
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None and type(tensor) is not torch.Tensor and \
            not isinstance(tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(local_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state (moments, scales; not
    the step counters, which are scalars)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                total += local_bytes(value)
    return total
