"""``hypersteer plan``: per-GPU memory of a training run for ddp/fsdp × adamw/adamw8bit, before
renting the GPUs.

    hypersteer plan --config sweep_configs/9b/l20/hypersteer_xattn_heldin.yaml --gpus 8 --gpu_mem_gb 80

The parameter, gradient and optimizer figures are exact counts of the hypernetwork the config
builds (made on the meta device: no memory, no download for the Gemma-2 sizes it knows), per
tensor as FSDP2 shards it (dim 0, the first rank holding the rounded-up share) and as torchao
stores 8-bit moments (int8 codes, one fp32 scale per 256 values and a 256-entry code table; a
tensor whose shard has fewer than 4096 values keeps fp32 moments); with ``freeze_embeddings``
the token table counts as weights only (no gradient, no moments). The tests check them against
what the tiny model allocates per rank. The rest is an estimate: ``gather`` is FSDP's transient
unsharded copy (the root's parameters, two blocks in flight and one block's full-size gradient
before the reduce-scatter), ``activ`` the activations saved for backward (Korthikanti et al.'s
``34·d + 5·heads·T`` bytes per token per block in 16-bit, the base model's blocks from the
steering layer on included). A combination fits when its total is at most 90 % of a GPU (CUDA
context and allocator fragmentation take the rest).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..model.config import OPTIMIZERS, STRATEGIES, ConfigError, HyperSteerConfig, TrainConfig
from .optimizers import AO_BLOCK_SIZE, AO_MIN_QUANT_SIZE

GB = 1e9
USABLE = 0.9  # share of a GPU's memory a plan may fill
HYPERNET_TOKENS = 64  # steering prompt length the activation estimate assumes (not in-context)

# Gemma-2 sizes for the hub names the sweep configs use (planning needs no download).
KNOWN_BASES: dict[str, dict[str, Any]] = {
    "google/gemma-2-2b": {},  # transformers' Gemma2Config defaults are the 2B model
    "google/gemma-2-9b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                              query_pre_attn_scalar=256, sliding_window=4096),
}


def base_config(model_name: str):
    """A transformers config for ``model_name``: a local directory, ``tiny``, a known Gemma-2
    hub name, or any name the local Hugging Face cache holds."""
    from transformers import AutoConfig, Gemma2Config

    if model_name == "tiny":
        from ..testing.tiny import build_tiny_tokenizer, tiny_gemma2_config

        return tiny_gemma2_config(len(build_tiny_tokenizer()))
    known = KNOWN_BASES.get(model_name.removesuffix("-it"))
    if known is not None:
        return Gemma2Config(**known)
    try:
        return AutoConfig.from_pretrained(model_name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model_name: cannot read the architecture of {model_name!r} "
                          f"({str(err).splitlines()[0]}); give a local model directory") from None


@dataclass
class Plan:
    """Bytes per GPU (the first rank, which holds the largest shards)."""

    strategy: str
    optimizer: str
    base: float
    weights: float
    grads: float
    optim: float
    gather: float
    activ: float

    @property
    def state(self) -> float:
        return self.weights + self.grads + self.optim

    @property
    def total(self) -> float:
        return self.base + self.state + self.gather + self.activ


def _shard_numel(shape: torch.Size, ranks: int) -> int:
    if not shape:
        return 1
    return math.ceil(shape[0] / ranks) * math.prod(shape[1:])


def _moment_bytes(local: int, element: int, optimizer: str) -> int:
    """Both AdamW moments of one (local) tensor."""
    if optimizer == "adamw8bit" and local >= AO_MIN_QUANT_SIZE and local % AO_BLOCK_SIZE == 0:
        return 2 * (local + local // AO_BLOCK_SIZE * 4 + 256 * 4)
    return 2 * local * element


def _meta_models(base_cfg, model_cfg: HyperSteerConfig):
    """The base LM and the hypernetwork on the meta device (random init: same shapes as
    pretrained, and nothing to copy from)."""
    from transformers import AutoModelForCausalLM

    from ..model.hypernet import HyperNetwork

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_cfg)
        hypernet = HyperNetwork(base, dataclasses.replace(model_cfg, init="random"))
    return base, hypernet


def _activation_bytes(cfg, blocks: int, batch: int, tokens: int, element: int,
                      checkpointed: bool) -> float:
    """Saved activations of ``blocks`` decoder blocks over ``tokens`` tokens."""
    per_block = batch * tokens * (34 * cfg.hidden_size + 5 * cfg.num_attention_heads * tokens)
    per_block *= element / 2
    if checkpointed:  # block inputs only, plus one block recomputed at a time
        return blocks * batch * tokens * cfg.hidden_size * element + per_block
    return blocks * per_block


@dataclass
class _Counts:
    """What the plans need from the models, counted once."""

    shapes: list[torch.Size]  # hypernetwork parameters
    trainable: list[bool]  # per parameter: has a gradient and optimizer moments
    element: int  # bytes per hypernetwork parameter (its config dtype)
    compute: int  # bytes per value of the base and of FSDP's gathered copies
    root: int  # hypernetwork parameters outside the per-block units
    largest_unit: int
    base_layers: int
    base_rest: int
    activ: float


def _count(base_cfg, model_cfg: HyperSteerConfig, train: TrainConfig, bf16: bool) -> _Counts:
    base, hypernet = _meta_models(base_cfg, model_cfg)
    if train.freeze_embeddings:  # as the trainer does: the table is held, never updated
        hypernet.freeze_token_embeddings()
    compute = 2 if bf16 else 4
    base_layers = sum(p.numel() for p in base.base_model.layers.parameters())
    params = list(hypernet.parameters())
    units = [sum(p.numel() for p in block.parameters()) for block in hypernet.body.layers]
    for i, xattn in enumerate(hypernet.cross_attentions):
        units[i] += sum(p.numel() for p in xattn.parameters())
    hyper_tokens = train.max_length if model_cfg.variant == "incontext" else HYPERNET_TOKENS
    activ = (_activation_bytes(base_cfg, model_cfg.resolved_num_blocks(base_cfg),
                               train.batch_size, hyper_tokens, compute,
                               train.gradient_checkpointing)
             + _activation_bytes(base_cfg, base_cfg.num_hidden_layers - model_cfg.steering_layer,
                                 train.batch_size, train.max_length, compute, False))
    return _Counts(
        shapes=[p.shape for p in params], trainable=[p.requires_grad for p in params],
        element=params[0].element_size(), compute=compute,
        root=sum(p.numel() for p in params) - sum(units), largest_unit=max(units, default=0),
        base_layers=base_layers,
        base_rest=sum(p.numel() for p in base.parameters()) - base_layers, activ=activ)


def _plans(c: _Counts, gpus: int, shard_base: bool) -> list[Plan]:
    plans = []
    for strategy in STRATEGIES:
        ranks = gpus if strategy == "fsdp" else 1
        base_ranks = gpus if strategy == "fsdp" and shard_base else 1
        base_bytes = (c.base_rest + math.ceil(c.base_layers / base_ranks)) * c.compute
        local = [_shard_numel(shape, ranks) for shape in c.shapes]
        trained = [n for n, trainable in zip(local, c.trainable) if trainable]
        gather = 0.0
        if ranks > 1:
            gather = (c.root + 2 * c.largest_unit) * c.compute + c.largest_unit * c.element
        for optimizer in OPTIMIZERS:
            plans.append(Plan(
                strategy, optimizer, base=base_bytes,
                weights=sum(local) * c.element, grads=sum(trained) * c.element,
                optim=sum(_moment_bytes(n, c.element, optimizer) for n in trained),
                gather=gather, activ=c.activ))
    return plans


def plan(base_cfg, model_cfg: HyperSteerConfig, train: TrainConfig, gpus: int,
         bf16: bool = True) -> list[Plan]:
    """Every strategy × optimizer on ``gpus`` GPUs. ``bf16``: base model and FSDP compute in
    bf16 (``use_bf16``); the hypernetwork's master weights keep ``model_cfg.dtype``."""
    return _plans(_count(base_cfg, model_cfg, train, bf16), gpus, train.shard_base)


def min_gpus(base_cfg, model_cfg: HyperSteerConfig, train: TrainConfig, gpu_mem_gb: float,
             bf16: bool = True, limit: int = 64) -> dict[tuple[str, str], int | None]:
    """Fewest GPUs of ``gpu_mem_gb`` each combination fits on (None: not within ``limit``)."""
    counts = _count(base_cfg, model_cfg, train, bf16)
    best: dict[tuple[str, str], int | None] = {}
    for n in range(1, limit + 1):
        for p in _plans(counts, n, train.shard_base):
            if (p.strategy, p.optimizer) not in best and p.total <= USABLE * gpu_mem_gb * GB:
                best[(p.strategy, p.optimizer)] = n
    return {(s, o): best.get((s, o)) for s in STRATEGIES for o in OPTIMIZERS}


def format_table(plans: list[Plan], gpus: int, gpu_mem_gb: float,
                 fewest: dict[tuple[str, str], int | None]) -> str:
    head = (f"{'strategy':<8} {'optimizer':<10} {'base':>7} {'weights':>8} {'grads':>7} "
            f"{'optim':>7} {'gather':>7} {'activ':>7} {'total':>7}  fits {gpus}x{gpu_mem_gb:g}GB"
            f"  fewest {gpu_mem_gb:g}GB GPUs")
    lines = [head, "-" * len(head)]
    for p in plans:
        fits = "yes" if p.total <= USABLE * gpu_mem_gb * GB else "no"
        n = fewest[(p.strategy, p.optimizer)]
        lines.append(
            f"{p.strategy:<8} {p.optimizer:<10} {p.base / GB:7.1f} {p.weights / GB:8.1f} "
            f"{p.grads / GB:7.1f} {p.optim / GB:7.1f} {p.gather / GB:7.1f} {p.activ / GB:7.1f} "
            f"{p.total / GB:7.1f}  {fits:<{len(str(gpus)) + len(f'{gpu_mem_gb:g}') + 9}}"
            f"  {n if n else 'none'}")
    return "\n".join(lines)
