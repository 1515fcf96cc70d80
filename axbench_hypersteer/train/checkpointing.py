"""Training checkpoints that survive being killed at any instant.

A checkpoint is a directory ``step_{N:08d}`` holding the hypernetwork (safetensors; under FSDP a
``shards/`` directory of ``torch.distributed.checkpoint`` files, weights and optimizer, one per
rank), the optimizer/scheduler/RNG/data-position state (a ``torch.save`` of plain tensors and
numbers that ``torch.load(weights_only=True)`` accepts) and a ``manifest.json`` with every file's
SHA-256. It is assembled in a temporary directory and renamed into place, and the manifest is
written last, so a directory without a valid manifest is an interrupted or corrupted write: resume
skips it with a warning and falls back to the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..model.fileio import (atomic_write_json, read_json, remove_interrupted_writes,
                           save_tensors)

logger = logging.getLogger(__name__)

WEIGHTS = "hypernet.safetensors"
STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
SHARDS = "shards"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_checkpoint(root: Path, step: int) -> Path:
    """A fresh hidden temporary directory for step ``step`` (what a killed writer leaves behind
    is removed by ``remove_interrupted_writes``)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", suffix=".tmp", dir=root))


def commit_checkpoint(root: Path, tmp: Path, step: int, trainer_state: dict[str, Any],
                      keep: int) -> Path:
    """Add the trainer state and the manifest of every file in ``tmp``, rename it into place and
    drop all but the newest ``keep`` checkpoints."""
    final = root / f"step_{step:08d}"
    try:
        torch.save(trainer_state, tmp / STATE)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        atomic_write_json(tmp / MANIFEST, {
            "step": step, "files": {n: _sha256(tmp / n) for n in files},
        })
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(root: Path, step: int, model_state: dict[str, torch.Tensor],
                    trainer_state: dict[str, Any], keep: int) -> Path:
    tmp = stage_checkpoint(root, step)
    try:
        save_tensors(tmp / WEIGHTS, model_state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_checkpoint(root, tmp, step, trainer_state, keep)


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def verify_checkpoint(path: Path) -> str | None:
    """None when the checkpoint is whole, else what is wrong with it."""
    try:
        manifest = read_json(path / MANIFEST)
    except (FileNotFoundError, ValueError) as err:
        return f"manifest unreadable ({err})"
    for name, digest in manifest.get("files", {}).items():
        file = path / name
        if not file.exists():
            return f"{name} missing"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def latest_checkpoint(root: Path) -> Path | None:
    """The newest whole checkpoint, skipping (with a warning) any that are not. A checkpoint
    write that was killed half way leaves a hidden temporary directory: it goes now."""
    remove_interrupted_writes(root)
    for path in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(path)
        if problem:
            logger.warning("skipping checkpoint %s: %s; falling back to the previous one",
                           path, problem)
            continue
        return path
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE, map_location="cpu", weights_only=True)

