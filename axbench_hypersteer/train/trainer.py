"""One hypernetwork trained over every concept at once.

The loop is deliberately plain (nanoGPT-style): AdamW on the fp32 hypernetwork parameters (bf16
autocast on GPU, never AdamW on bf16 weights), linear warmup/decay, clipping, accumulation, a dev
loss every ``eval_every`` updates, and checkpoints that let ``resume=True`` finish with the same
weights as a run that was never interrupted (same seed, CPU, fp32): the data order is a function
of (seed, epoch) and the checkpoint stores the position in it. How the hypernetwork is spread
over ranks (DDP replicas or FSDP2 shards) is the strategy's business (``strategy.py``): the loop
only asks it to wrap, clip, save and restore.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..model.collate import SteeringCollator
from ..model.config import ConfigError, TrainConfig
from ..model.errors import DataError
from ..model.fileio import load_tensors
from ..model.hypersteer import HyperSteer
from .prefix_cache import FrozenPrefixCache, auto_mode, cache_bytes, cached_blocks
from .batching import bucketed_batches, pad_fraction, plain_batches
from .checkpointing import list_checkpoints
from .dataset import TrainDataset
from .distributed import DistInfo, all_reduce_mean
from .strategy import make_strategy

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    dev_losses: list[float] = field(default_factory=list)
    examples_per_s: float = 0.0
    resumed_from: str | None = None

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def last_loss(self) -> float:
        # Average of the last few updates: a single batch of mixed concepts is noisy.
        tail = self.losses[-5:]
        return sum(tail) / len(tail) if tail else float("nan")


def reconstruction_loss(delta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos(Δ, Δ*) + ||Δ - Δ*||²`` per row ([B, d] each), averaged over the batch."""
    delta, target = delta.float(), target.float()
    cos = torch.nn.functional.cosine_similarity(delta, target, dim=-1)
    return (1.0 - cos + (delta - target).pow(2).sum(-1)).mean()


def load_reconstruction_targets(path: str, hidden_size: int) -> torch.Tensor:
    """A [num_concepts, d] matrix, row i = concept_id i (e.g. AxBench's ``{Name}_weight.pt``)."""
    tensors = load_tensors(path)
    if len(tensors) != 1 and "weight" not in tensors:
        raise DataError(f"{path}: expected one [num_concepts, d] tensor, found keys "
                         f"{sorted(tensors)}")
    matrix = tensors.get("weight", next(iter(tensors.values())))
    if matrix.dim() != 2 or matrix.shape[1] != hidden_size:
        raise DataError(f"{path}: expected shape [num_concepts, {hidden_size}], "
                         f"got {list(matrix.shape)}")
    return matrix.float()


class _LinearSchedule:
    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


class Trainer:
    def __init__(self, model: HyperSteer, train_frame, cfg: TrainConfig, out_dir: str | Path,
                 dist_info: DistInfo | None = None, dev_frame=None, heldout_frame=None,
                 use_bf16: bool = False, progress: bool = True):
        self.model, self.cfg, self.out_dir = model, cfg, Path(out_dir)
        self.dist = dist_info or DistInfo(device=model.device)
        self.progress = progress
        self.autocast = use_bf16 and self.dist.device.type == "cuda"
        hypernet_text = model.hypernet_text if model.config.variant == "incontext" else None
        self.collate = SteeringCollator(model.tokenizer, cfg.max_length, hypernet_text)
        self.train_set = TrainDataset(train_frame)
        self._check_lengths(train_frame)
        self.dev_sets = {name: TrainDataset(f) for name, f in
                         (("dev", dev_frame), ("heldout", heldout_frame))
                         if f is not None and len(f)}
        for name, f in (("dev", dev_frame), ("heldout", heldout_frame)):
            if name in self.dev_sets:  # else the first dev loss, steps later, would fail
                self._check_lengths(f, name)
        self.targets = None
        if cfg.objective != "lm":
            self.targets = load_reconstruction_targets(
                cfg.reconstruction_targets, model.base_model.config.hidden_size
            ).to(self.dist.device)
            top = int(train_frame["concept_id"].max())
            if top >= self.targets.shape[0]:
                raise DataError(f"{cfg.reconstruction_targets}: has {self.targets.shape[0]} rows "
                                 f"but the training data has concept_id {top}")
        if cfg.gradient_checkpointing:
            model.hypernet.enable_gradient_checkpointing(use_reentrant=False)
        if cfg.freeze_embeddings:  # before the strategy collects the trainable parameters
            model.hypernet.freeze_token_embeddings()
        # Wraps (DDP) or shards (FSDP) the hypernetwork, then builds the optimizer on the result.
        self.strategy = make_strategy(cfg, self.dist, use_bf16)
        self.strategy.prepare(model)
        self.optimizer, self.params = self.strategy.optimizer, self.strategy.params
        self.net, self.vectors_net = self.strategy.net, self.strategy.vectors_net
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world_size,
                                          rank=self.dist.rank, shuffle=True, seed=cfg.seed)
        self.batches_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        updates_per_epoch = math.ceil(self.batches_per_epoch / cfg.gradient_accumulation_steps)
        self.total_updates = cfg.n_epochs * updates_per_epoch
        if cfg.max_steps:
            self.total_updates = min(self.total_updates, cfg.max_steps)
        warmup = int(cfg.warmup_ratio * self.total_updates)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _LinearSchedule(warmup, self.total_updates))
        self.step, self.epoch, self.next_batch = 0, 0, 0
        self.lengths: list[int] | None = None  # base tokens per training example, when needed
        self.prefix_cache: FrozenPrefixCache | None = None
        if cfg.length_bucket_group or cfg.prefix_cache != "off":
            prompt_lengths, self.lengths = self.collate.lengths(self.train_set.rows)
        self.prefix_cache_mode = cfg.prefix_cache
        if cfg.prefix_cache == "auto":
            self.prefix_cache_mode = self._auto_prefix_cache(prompt_lengths)
        if self.prefix_cache_mode != "off":
            hs_cfg = model.config
            blocks = cached_blocks(hs_cfg.variant, hs_cfg.steering_layer,
                                   hs_cfg.resolved_context_layer, cfg.objective)
            self.prefix_cache = FrozenPrefixCache(
                model.base_model, blocks, self.lengths, prompt_lengths, self.prefix_cache_mode,
                self.out_dir, cfg.prefix_cache_max_gb)

    def _auto_prefix_cache(self, prompt_lengths: list[int]) -> str:
        hs_cfg = self.model.config
        try:
            blocks = cached_blocks(hs_cfg.variant, hs_cfg.steering_layer,
                                   hs_cfg.resolved_context_layer, self.cfg.objective)
            need = cache_bytes(self.model.base_model, blocks, self.lengths, prompt_lengths)
        except ConfigError:
            need = None
        # A batch replays only once all its examples were recorded: from the second epoch on.
        replays = self.total_updates * self.cfg.gradient_accumulation_steps > \
            self.batches_per_epoch
        mode, why = auto_mode(need, replays, self.dist.world_size, self.cfg.prefix_cache_max_gb)
        if self.dist.is_main:
            logger.info("prefix_cache auto -> %s: %s", mode, why)
        return mode

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches (training example indices) of one epoch: a function of
        (seed, epoch), so a resumed run replays the order."""
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        size = self.cfg.batch_size
        if not self.cfg.length_bucket_group:
            return plain_batches(order, size)
        # Bucketed by update, then cut into micro-batches: accumulating k batches of b still
        # trains on the examples of one batch of k * b.
        span = size * self.cfg.gradient_accumulation_steps
        updates = bucketed_batches(order, self.lengths, span, self.cfg.length_bucket_group,
                                   self.cfg.seed, epoch)
        return [u[i:i + size] for u in updates for i in range(0, len(u), size)]

    def pad_fraction(self, epoch: int = 0) -> float:
        """Share of padding in the base model's batches of one epoch (docs/benchmarks.md)."""
        lengths = self.lengths or self.collate.lengths(self.train_set.rows)[1]
        return pad_fraction(self.epoch_batches(epoch), lengths)

    def _check_lengths(self, frame, what: str = "training") -> None:
        """Fail before the first step, not at step 10 000, when a prompt leaves no answer token."""
        from ..model.tokens import format_prompt
        from ..model.errors import DataError

        tok = self.model.tokenizer
        prompts = tok([format_prompt(tok, x) for x in frame["input"]],
                      add_special_tokens=True)["input_ids"]
        too_long = [i for i, p in enumerate(prompts) if len(p) >= self.cfg.max_length]
        if too_long:
            longest = max(len(prompts[i]) for i in too_long)
            raise DataError(
                f"{len(too_long)} {what} prompt(s) are >= max_length={self.cfg.max_length} "
                f"tokens (longest {longest}): raise max_length in the method's config")

    # ----- losses ------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            if cfg.objective == "reconstruction":
                delta = self.vectors_net(
                    batch["hyper_input_ids"], batch["hyper_attention_mask"],
                    batch["input_ids"], batch["attention_mask"], batch["context_mask"])
                lm = None
            else:
                out = self.net(batch["input_ids"], batch["attention_mask"],
                               batch["hyper_input_ids"], batch["hyper_attention_mask"],
                               labels=batch["labels"], context_mask=batch["context_mask"],
                               return_logits=False)
                delta, lm = out.steering_vectors, out.loss
        parts: dict[str, float] = {}
        loss = torch.zeros((), device=self.dist.device)
        if lm is not None:
            loss = loss + cfg.lm_weight * lm.float()
            parts["lm_loss"] = lm.item()
        if self.targets is not None:
            rec = reconstruction_loss(delta, self.targets[batch["concept_ids"]])
            loss = loss + cfg.reconstruction_weight * rec
            parts["reconstruction_loss"] = rec.item()
        return loss, parts

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on each dev set (held-in examples; held-out concepts when given)."""
        self.model.hypernet.eval()
        results = {}
        for name, dataset in self.dev_sets.items():
            total, count = 0.0, 0
            for start in range(0, len(dataset), self.cfg.batch_size):
                rows = [dataset[i] for i in range(start, min(len(dataset), start + self.cfg.batch_size))]
                loss, _ = self._loss(self._to_device(self.collate(rows)))
                total, count = total + loss.item() * len(rows), count + len(rows)
            results[f"{name}_loss"] = total / max(count, 1)
        self.model.hypernet.train()
        return results

    # ----- state -------------------------------------------------------------------------------
    def _to_device(self, batch):
        return {k: v.to(self.dist.device) for k, v in batch.items()}

    def _state(self) -> dict:
        """Everything but the weights and the optimizer (the strategy saves those)."""
        state = {
            "step": self.step, "epoch": self.epoch, "next_batch": self.next_batch,
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _restore(self) -> str | None:
        found = self.strategy.load_checkpoint(self.out_dir / "checkpoints")
        if found is None:
            return None
        state, path = found
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.epoch, self.next_batch = state["step"], state["epoch"], state["next_batch"]
        return str(path)

    def state_bytes(self) -> dict[str, int]:
        """This rank's hypernetwork parameter, gradient and optimizer bytes, after one more
        forward/backward so that the gradients exist (the loop frees them after each step)."""
        rows = [self.train_set[i] for i in range(min(self.cfg.batch_size, len(self.train_set)))]
        loss, _ = self._loss(self._to_device(self.collate(rows)))
        loss.backward()
        memory = self.strategy.memory_bytes()
        self.optimizer.zero_grad(set_to_none=True)
        return memory

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ----- loop --------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> TrainResult:
        cfg, accum = self.cfg, self.cfg.gradient_accumulation_steps
        result = TrainResult(steps=0)
        self._start(result, resume)
        self.model.hypernet.train()
        bar = tqdm(total=self.total_updates, initial=self.step, desc="hypersteer train",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        seen, start_time = 0, time.perf_counter()
        while self.epoch < cfg.n_epochs and self.step < self.total_updates:
            batches = self.epoch_batches(self.epoch)
            b = self.next_batch
            while b < len(batches) and self.step < self.total_updates:
                group = batches[b:b + accum]
                loss_sum, parts_sum = self._accumulate(group)
                seen += sum(len(idx) for idx in group)
                grad_norm = self.strategy.clip_grad_norm(cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                b += len(group)
                self.step += 1
                self.next_batch = b
                reported, parts_sum = self._reduce_losses(loss_sum, parts_sum)
                result.losses.append(reported)
                lr = float(self.scheduler.get_last_lr()[0])  # a tensor in torchao's optimizers
                bar.update(1)
                bar.set_postfix(loss=f"{reported:.4f}", lr=f"{lr:.2e}")
                if self.step % cfg.log_every == 0:
                    self._log({"step": self.step, "epoch": self.epoch, "loss": reported,
                               "lr": lr, "grad_norm": float(grad_norm), **parts_sum})
                self._after_update(result, len(batches))
            if self.next_batch >= len(batches):
                self.epoch, self.next_batch = self.epoch + 1, 0
        bar.close()
        result.steps = self.step
        result.examples_per_s = seen / max(time.perf_counter() - start_time, 1e-9)
        return result

    def _start(self, result: TrainResult, resume: bool) -> None:
        """Resume from the newest checkpoint, or clear what an earlier run left in ``out_dir``."""
        if resume:
            result.resumed_from = self._restore()
            if result.resumed_from:
                logger.info("resumed from %s at step %d", result.resumed_from, self.step)
        elif self.dist.is_main and list_checkpoints(self.out_dir / "checkpoints"):
            # A fresh start must not leave an older run's checkpoints behind: rotation would keep
            # the stale higher-numbered ones and a later resume would pick them up.
            logger.warning("starting from scratch: removing the checkpoints of an earlier run "
                           "in %s (pass resume=True / --resume to continue it)",
                           self.out_dir / "checkpoints")
            shutil.rmtree(self.out_dir / "checkpoints")
        if not result.resumed_from and self.dist.is_main:  # a fresh run starts a fresh log
            (self.out_dir / "train_log.jsonl").unlink(missing_ok=True)

    def _accumulate(self, group: list) -> tuple[float, dict[str, float]]:
        """Backward over one update's micro-batches; gradients are synchronised across ranks on
        the last one only. Returns this rank's mean loss and loss parts."""
        parts_sum: dict[str, float] = {}
        loss_sum = 0.0
        for i, idx in enumerate(group):
            batch = self._to_device(self.collate([self.train_set[j] for j in idx]))
            sync = i == len(group) - 1 or not self.dist.enabled
            ctx = self.strategy.no_sync() if not sync else contextlib.nullcontext()
            cache = (self.prefix_cache.serving(idx, batch) if self.prefix_cache
                     else contextlib.nullcontext())
            with ctx:
                with cache:
                    loss, parts = self._loss(batch)
                (loss / len(group)).backward()
            loss_sum += loss.item() / len(group)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / len(group)
        return loss_sum, parts_sum

    def _reduce_losses(self, loss_sum: float,
                       parts_sum: dict[str, float]) -> tuple[float, dict[str, float]]:
        """Mean over ranks of the loss and of its parts, in one collective (a device tensor:
        NCCL reduces nothing else)."""
        names = sorted(parts_sum)
        values = all_reduce_mean(torch.tensor([loss_sum] + [parts_sum[k] for k in names],
                                              device=self.dist.device), self.dist).tolist()
        return values[0], dict(zip(names, values[1:]))

    def _after_update(self, result: TrainResult, n_batches: int) -> None:
        """Dev evaluation and checkpoint when their step comes; the epoch is closed first so
        that the checkpoint records where the next update starts."""
        cfg = self.cfg
        if self.dev_sets and (self.step % cfg.eval_every == 0
                              or self.step == self.total_updates):
            dev = self.evaluate()
            result.dev_losses.append(dev.get("dev_loss", float("nan")))
            self._log({"step": self.step, **dev})
        if self.next_batch >= n_batches:
            self.epoch, self.next_batch = self.epoch + 1, 0
        if self.step % cfg.checkpoint_every == 0:
            self.strategy.save_checkpoint(self.out_dir / "checkpoints", self.step,
                                          self._state())

