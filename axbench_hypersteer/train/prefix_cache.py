"""The frozen-prefix cache: each training example's block-l residual, kept after its first pass.

Blocks ``0..l`` of the base model are frozen and deterministic (eval mode, no dropout), so the
residual they produce for a training example is the same in every epoch: recomputing it is most of
the base forward at the paper's setting (l = 20 of Gemma-2-2B's 26 blocks). The cache records block
``l``'s pre-steering output (which the steering adds to, and which the cross-attention reads) the
first time an example is trained on, and from then on the blocks ``0..l`` are replaced, for the
duration of a batch, by stubs that hand the recorded residual to block ``l + 1``: the embeddings,
masks and rotary tables are still built by the model's own ``forward`` (cheap), the steering
intervention and the cross-attention still see block ``l``'s output through its hooks, and every
block after ``l`` runs exactly as before. With an earlier ``context_layer`` its output is kept too
(prompt positions only: the cross-attention reads nothing else).

Rows are stored unpadded in one flat ``[tokens, d]`` tensor (in memory, or a memory-mapped file)
whose size is known before training starts: the trainer estimates it and refuses to start when it
will not fit. Padding positions are rebuilt as zeros; no real position can read them (right padding
and causal attention; the cross-attention masks them), so the loss is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..model.config import ConfigError
from ..model.steering import decoder_layers
from ..model.tokens import hidden_of

logger = logging.getLogger(__name__)

_GB = 1024 ** 3
# prefix_cache: auto takes the memory cache only when its estimate is at most this share of the
# RAM available at start: the rest stays for the model, activations, the data and the OS.
AUTO_MEMORY_SHARE = 0.5


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else free RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _Store:
    """Rows of one layer: row i lives at ``flat[offsets[i] : offsets[i] + lengths[i]]``."""

    def __init__(self, lengths: Sequence[int], width: int, dtype: torch.dtype,
                 path: Path | None):
        self.lengths = list(lengths)
        self.offsets = [0]
        for n in self.lengths[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        numel = sum(self.lengths) * width
        if path is None:
            # Pages are only touched when a row is written: resident memory grows as rows arrive.
            self.flat = torch.empty(numel, dtype=dtype)
        else:
            with open(path, "wb") as f:
                f.truncate(numel * dtype.itemsize)  # sparse until written
            self.flat = torch.from_file(str(path), shared=True, size=numel, dtype=dtype)
        self.flat = self.flat.view(-1, width)

    def put(self, i: int, rows: torch.Tensor) -> None:  # rows [n_i, d]
        self.flat[self.offsets[i]: self.offsets[i] + self.lengths[i]] = rows

    def batch(self, ids: Sequence[int], width: int, device, dtype) -> torch.Tensor:
        """[B, width, d] with each row's stored positions, zeros after them."""
        out = torch.zeros(len(ids), width, self.flat.shape[1], dtype=dtype)
        for r, i in enumerate(ids):
            n = self.lengths[i]
            out[r, :n] = self.flat[self.offsets[i]: self.offsets[i] + n]
        return out.to(device, non_blocking=True)


class FrozenPrefixCache:
    """Per-example residuals of the frozen blocks, captured on first use, replayed afterwards.

    ``lengths[i]`` / ``prompt_lengths[i]``: base sequence and prompt tokens of training example i.
    ``layers``: the block outputs to keep, ``{block: "all" | "prompt"}``.
    """

    def __init__(self, base_model: torch.nn.Module, layers: dict[int, str],
                 lengths: Sequence[int], prompt_lengths: Sequence[int], mode: str,
                 directory: Path | None = None, max_gb: float | None = None):
        if mode not in ("memory", "disk"):
            raise ValueError(f"mode must be 'memory' or 'disk', got {mode!r}")
        self.base_model = base_model
        self.layers = dict(sorted(layers.items()))
        self.blocks = decoder_layers(base_model)
        width = base_model.config.hidden_size
        self.dtype = next(base_model.parameters()).dtype
        rows = {k: (lengths if part == "all" else prompt_lengths)
                for k, part in self.layers.items()}
        self.nbytes = cache_bytes(base_model, self.layers, lengths, prompt_lengths)
        self._check_fits(mode, directory, max_gb)
        logger.info("prefix cache (%s): %.2f GB for %d examples, blocks %s", mode,
                    self.nbytes / _GB, len(lengths), list(self.layers))
        self.stores = {}
        for k, r in rows.items():
            path = None
            if mode == "disk":
                path = Path(directory) / f"prefix_cache_block{k}_pid{os.getpid()}.bin"
            self.stores[k] = _Store(r, width, self.dtype, path)
            if path is not None:
                # Mapped already: unlinking now frees the space when the process ends, however
                # it ends (a SIGKILLed run leaves no stale cache behind).
                path.unlink()
        self.cached = torch.zeros(len(lengths), dtype=torch.bool)
        self._out_dtype = self.dtype
        self._tuple_output: bool | None = None  # learnt from the first captured block output
        self.hits = self.misses = 0

    def _check_fits(self, mode: str, directory: Path | None, max_gb: float | None) -> None:
        need = self.nbytes / _GB
        if max_gb is not None and need > max_gb:
            raise ConfigError(f"prefix_cache: needs {need:.2f} GB for this training set, above "
                              f"prefix_cache_max_gb={max_gb}: raise it or set prefix_cache: off")
        if mode == "memory":
            # Leave a quarter of what is free for the model, activations and the OS.
            free = available_memory_bytes() / _GB
            if need > 0.75 * free:
                raise ConfigError(f"prefix_cache: memory needs {need:.2f} GB but only "
                                  f"{free:.2f} GB of RAM is available: use prefix_cache: disk "
                                  "or off")
        else:
            Path(directory).mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(directory).free / _GB
            if need > 0.9 * free:
                raise ConfigError(f"prefix_cache: disk needs {need:.2f} GB but {directory} has "
                                  f"only {free:.2f} GB free: set prefix_cache: off")

    # ----- one batch -----------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self, example_ids: Sequence[int], batch: dict[str, torch.Tensor]) -> Iterator[None]:
        """Around one training forward: replay the stored residuals if every row has them, else
        record them from this forward."""
        ids = list(example_ids)
        if self._tuple_output is not None and bool(self.cached[ids].all()):
            self.hits += 1
            with self._replaying(ids, batch):
                yield
        else:
            self.misses += 1
            with self._recording(ids, batch):
                yield

    @contextlib.contextmanager
    def _recording(self, ids: list[int], batch: dict[str, torch.Tensor]) -> Iterator[None]:
        seen: dict[int, torch.Tensor] = {}
        originals = {}
        for k in self.layers:
            block = self.blocks[k]
            originals[k] = block.__dict__.get("forward")

            def record(*args, _k=k, _fwd=block.forward, **kwargs):
                out = _fwd(*args, **kwargs)
                hidden = hidden_of(out)
                self._out_dtype = hidden.dtype
                # Copied now, before the block's forward hooks run: pyvene steers the output
                # in place, and a reference would record the steered residual.
                seen.setdefault(_k, hidden.detach().to("cpu", self.dtype, copy=True))
                self._tuple_output = isinstance(out, tuple)
                return out

            block.forward = record
        try:
            yield
        finally:
            self._restore(originals)
        if set(seen) != set(self.layers):
            return  # this forward did not reach every cached block: nothing complete to keep
        for k, hidden in seen.items():
            store = self.stores[k]
            for r, i in enumerate(ids):
                store.put(i, hidden[r, : store.lengths[i]])
        self.cached[ids] = True

    @contextlib.contextmanager
    def _replaying(self, ids: list[int], batch: dict[str, torch.Tensor]) -> Iterator[None]:
        width, device = batch["input_ids"].shape[1], batch["input_ids"].device
        stored = {k: self.stores[k].batch(ids, width, device, self._out_dtype) for k in self.layers}
        wrap = (lambda h: (h,)) if self._tuple_output else (lambda h: h)
        originals = {}
        for k in range(max(self.layers) + 1):
            block = self.blocks[k]
            originals[k] = block.__dict__.get("forward")
            if k in stored:
                def replay(*args, _h=stored[k], **kwargs):
                    return wrap(_h)
            else:
                def replay(*args, **kwargs):  # a skipped block: its input goes on unchanged
                    return wrap(args[0] if args else kwargs["hidden_states"])
            block.forward = replay
        try:
            yield
        finally:
            self._restore(originals)

    def _restore(self, originals: dict) -> None:
        for k, fwd in originals.items():
            if fwd is None:
                self.blocks[k].__dict__.pop("forward", None)
            else:
                self.blocks[k].forward = fwd

    def close(self) -> None:
        """Drop the stored rows (a memory-mapped file's space is freed with its mapping)."""
        self.stores.clear()
        self.cached.zero_()


def cache_bytes(base_model: torch.nn.Module, layers: dict[int, str], lengths: Sequence[int],
                prompt_lengths: Sequence[int]) -> int:
    """What the cache will hold once every example has been seen: one row per real token of each
    ``"all"`` block, per prompt token of each ``"prompt"`` block, in the base model's dtype."""
    itemsize = next(base_model.parameters()).dtype.itemsize
    tokens = sum(sum(lengths if part == "all" else prompt_lengths) for part in layers.values())
    return tokens * base_model.config.hidden_size * itemsize


def auto_mode(need_bytes: int | None, replays: bool, world_size: int,
              max_gb: float | None) -> tuple[str, str]:
    """``prefix_cache: auto`` resolved: ("memory" or "off", why). ``need_bytes`` is None when the
    variant and objective run no frozen block to cache; ``replays``: the run reaches a second
    epoch (the first one only records)."""
    if need_bytes is None:
        return "off", "this variant and objective never run the base model"
    if not replays:
        return "off", "the run ends within its first epoch, where the cache only records"
    if world_size > 1:
        # DistributedSampler deals every epoch's examples to other ranks, so a rank's batches
        # rarely hold only examples it has seen, while each rank would grow towards the full set.
        return "off", f"{world_size} ranks: each sees other examples every epoch"
    need, free = need_bytes / _GB, available_memory_bytes() / _GB
    if max_gb is not None and need > max_gb:
        return "off", f"needs {need:.2f} GB, above prefix_cache_max_gb={max_gb}"
    if need > AUTO_MEMORY_SHARE * free:
        return "off", (f"needs {need:.2f} GB, above {AUTO_MEMORY_SHARE:.0%} of the "
                       f"{free:.2f} GB of RAM available")
    return "memory", (f"needs {need:.2f} GB, within {AUTO_MEMORY_SHARE:.0%} of the "
                      f"{free:.2f} GB of RAM available")


def cached_blocks(variant: str, steering_layer: int, context_layer: int,
                  objective: str) -> dict[int, str]:
    """The block outputs a training step reads from the frozen prefix: block l's (steered, and
    read by the cross-attention at l) unless only the reconstruction loss is trained, and an
    earlier context layer's prompt positions for the cross-attention variant."""
    blocks = {}
    if objective != "reconstruction":
        blocks[steering_layer] = "all"
    if variant == "xattn" and (objective == "reconstruction" or context_layer != steering_layer):
        blocks.setdefault(context_layer, "prompt")
    if not blocks:
        raise ConfigError(f"prefix_cache: the {variant!r} variant trained on the reconstruction "
                          "objective never runs the base model: nothing to cache (set "
                          "prefix_cache: off)")
    return blocks
