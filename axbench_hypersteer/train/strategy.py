"""How the hypernetwork is spread over ranks: wrapped, optimized, checkpointed and exported.

``ddp`` (the default, and the single-process case) replicates the hypernetwork on every rank; a
9B-width one then needs ~150 GB per GPU in fp32 AdamW. ``fsdp`` shards it with PyTorch's FSDP2
(``fully_shard``): one unit per hypernetwork block (its cross-attention with it) plus the root,
so each rank holds 1/N of the weights, gradients and optimizer state and gathers one block at a
time. On GPU with bf16 the units compute in bf16 over fp32 master weights and reduce gradients in
fp32. The frozen base model stays replicated unless ``shard_base`` asks otherwise.

Both strategies write the same checkpoint directory layout (``checkpointing``); FSDP's holds
``torch.distributed.checkpoint`` shards instead of one safetensors file, so no rank ever gathers
the optimizer state. The final export is the same single ``hypernet.safetensors`` either way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..model.config import ConfigError, TrainConfig
from ..model.fileio import load_tensors
from ..model.hypernet import check_architecture
from .checkpointing import (SHARDS, WEIGHTS, commit_checkpoint, latest_checkpoint,
                            load_trainer_state, save_checkpoint, stage_checkpoint)
from .distributed import DistInfo
from .optimizers import build_optimizer, local_bytes, optimizer_state_bytes


class _VectorsOnly(nn.Module):
    """``HyperSteer.compute_vectors`` as a module's forward, so DDP can wrap it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.compute_vectors(*args)


class ReplicatedStrategy:
    """One full copy of the hypernetwork per rank; DDP all-reduces gradients when world > 1."""

    name = "ddp"

    def __init__(self, cfg: TrainConfig, info: DistInfo, use_bf16: bool = False):
        self.cfg, self.dist, self.use_bf16 = cfg, info, use_bf16

    def prepare(self, model) -> None:
        """Wrap ``model`` (a HyperSteer) and build the optimizer on the parameters that result.
        Sets ``net`` (the steered forward), ``vectors_net`` (vectors only) and ``optimizer``."""
        self.model, self.hypernet = model, model.hypernet
        self.net, self.vectors_net = model, model.compute_vectors
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
            if self.cfg.objective == "reconstruction":
                # DDP all-reduces gradients only for a forward that went through the DDP wrapper;
                # calling model.compute_vectors directly would let every rank drift apart.
                self.net = self.vectors_net = DistributedDataParallel(_VectorsOnly(model),
                                                                      device_ids=ids)
            else:
                self.net = DistributedDataParallel(model, device_ids=ids)
        self.params = [p for p in self.hypernet.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.cfg.optimizer, self.params, self.cfg.lr,
                                         self.cfg.weight_decay, fused=self.cfg.fused_adamw)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """A micro-batch whose gradients are only accumulated (no all-reduce yet)."""
        with (self.net.no_sync() if self.dist.enabled else contextlib.nullcontext()):
            yield

    def clip_grad_norm(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole hypernetwork's weights, for the export (meaningful on rank 0)."""
        return self.hypernet.state_dict()

    def save_checkpoint(self, root: Path, step: int, trainer_state: dict[str, Any]) -> None:
        if self.dist.is_main:
            save_checkpoint(root, step, self.hypernet.state_dict(),
                            {**trainer_state, "optimizer": self.optimizer.state_dict()},
                            self.cfg.keep_checkpoints)

    def load_checkpoint(self, root: Path) -> tuple[dict[str, Any], Path] | None:
        """Weights and optimizer from the newest whole checkpoint; returns the rest of the
        trainer state and its path, or None when there is none."""
        path = latest_checkpoint(root)
        if path is None:
            return None
        _check_kind(path, WEIGHTS, self.name)
        weights = load_tensors(path / WEIGHTS)
        check_architecture(weights, str(path))
        self.hypernet.load_state_dict(weights)
        state = load_trainer_state(path)
        self.optimizer.load_state_dict(state.pop("optimizer"))
        return state, path

    def memory_bytes(self) -> dict[str, int]:
        """What this rank holds for the hypernetwork: parameters, gradients, optimizer state."""
        return {
            "params": sum(local_bytes(p) for p in self.params),
            "grads": sum(local_bytes(p.grad) for p in self.params if p.grad is not None),
            "optimizer": optimizer_state_bytes(self.optimizer),
        }


class FSDPStrategy(ReplicatedStrategy):
    """FSDP2: parameters, gradients and optimizer state sharded on dim 0 over the ranks."""

    name = "fsdp"

    def __init__(self, cfg: TrainConfig, info: DistInfo, use_bf16: bool = False):
        super().__init__(cfg, info, use_bf16)
        if cfg.cpu_offload and info.device.type != "cuda":
            raise ConfigError("cpu_offload: FSDP2's CPU offload needs a GPU (it moves shards "
                              "between host and accelerator); this run is on the CPU")
        if not dist.is_initialized():
            raise ConfigError("strategy: fsdp needs a process group of >= 1 rank: launch with "
                              "torchrun (--nproc_per_node=1 on one device)")

    def prepare(self, model) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy,
                                            OffloadPolicy, fully_shard)

        self.model, self.hypernet = model, model.hypernet
        mesh = init_device_mesh(self.dist.device.type, (dist.get_world_size(),))
        kwargs: dict[str, Any] = {"mesh": mesh}
        if self.use_bf16 and self.dist.device.type == "cuda":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                       reduce_dtype=torch.float32)
        kwargs["offload_policy"] = CPUOffloadPolicy() if self.cfg.cpu_offload else OffloadPolicy()
        for block in hypernet_units(self.hypernet):
            fully_shard(block, **kwargs)
        fully_shard(self.hypernet, **kwargs)
        if self.cfg.shard_base:
            # Frozen: nothing to reduce. Each base block is its own unit, gathered as it runs.
            for layer in model.base_model.base_model.layers:
                fully_shard(layer, mesh=mesh, offload_policy=kwargs["offload_policy"])
        self.net, self.vectors_net = model, model.compute_vectors
        self.params = [p for p in self.hypernet.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.cfg.optimizer, self.params, self.cfg.lr,
                                         self.cfg.weight_decay, fused=self.cfg.fused_adamw)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.hypernet.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.hypernet.set_requires_gradient_sync(True)

    def clip_grad_norm(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Gathers the shards (a collective: every rank calls it); rank 0 gets the full fp32
        state on the CPU, the others an empty dict."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)

        return get_model_state_dict(self.hypernet, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def _sharded_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.hypernet, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def save_checkpoint(self, root: Path, step: int, trainer_state: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp

        tmp = stage_checkpoint(root, step) if self.dist.is_main else None
        tmp = _broadcast(tmp)
        dcp.save(self._sharded_state(), checkpoint_id=tmp / SHARDS)
        barrier_all()
        if self.dist.is_main:
            commit_checkpoint(root, tmp, step, trainer_state, self.cfg.keep_checkpoints)
        barrier_all()

    def load_checkpoint(self, root: Path) -> tuple[dict[str, Any], Path] | None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        # Rank 0 alone verifies and cleans up; every rank then reads the checkpoint it chose.
        path = _broadcast(latest_checkpoint(root) if self.dist.is_main else None)
        if path is None:
            return None
        _check_kind(path, SHARDS, self.name)
        state = self._sharded_state()
        dcp.load(state, checkpoint_id=path / SHARDS)
        set_state_dict(self.hypernet, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        return load_trainer_state(path), path


def hypernet_units(hypernet: nn.Module) -> list[nn.Module | list[nn.Module]]:
    """One FSDP unit per hypernetwork block: the decoder layer with the cross-attention that its
    hooks call (a list is one unit to ``fully_shard``)."""
    layers = list(hypernet.body.layers)
    xattns = list(hypernet.cross_attentions)
    if not xattns:
        return layers
    return [[layer, xattn] for layer, xattn in zip(layers, xattns)]


def _check_kind(path: Path, expected: str, strategy: str) -> None:
    """A checkpoint resumes under the strategy that wrote it (one file vs per-rank shards)."""
    if not (path / expected).exists():
        other = "fsdp" if strategy == "ddp" else "ddp"
        raise ConfigError(f"{path}: written by strategy {other}, resumed with strategy "
                          f"{strategy}: resume with strategy: {other} (or start afresh without "
                          "--resume)")


def _broadcast(value):
    """Rank 0's ``value`` on every rank (a picklable object)."""
    box = [value]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier_all() -> None:
    if dist.is_initialized():
        dist.barrier()


def make_strategy(cfg: TrainConfig, info: DistInfo, use_bf16: bool = False) -> ReplicatedStrategy:
    strategies = {"ddp": ReplicatedStrategy, "fsdp": FSDPStrategy}
    if cfg.strategy not in strategies:
        raise ConfigError(f"strategy: {cfg.strategy!r} is not one of {sorted(strategies)}")
    return strategies[cfg.strategy](cfg, info, use_bf16)
