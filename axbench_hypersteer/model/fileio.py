"""Atomic writes and safe loads.

Long jobs here are killed (preempted GPUs, Ctrl-C, OOM). Every file is written to a temporary
sibling, fsynced and renamed, so a reader sees the old file or the new one, never half of one.
Nothing loaded executes code: weights are safetensors, ``.pt`` files go through
``torch.load(weights_only=True)``, configs through ``json`` / ``yaml.safe_load``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import CorruptFileError, MissingFileError, UnsafeFileError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported where tensors are handled, so text-only users stay light
    import torch


# torch.save writes a zip archive; older torch and plain pickle start with the PROTO opcode.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; written files should look ordinary
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def remove_interrupted_writes(directory: str | Path) -> list[Path]:
    """Delete the temporaries a killed writer left in ``directory``: hidden ``.<name>.*.tmp``
    files of ``atomic_write`` and directories of ``save_checkpoint``. They are never read, but a
    checkpoint's can hold gigabytes. Call it where a job resumes, before anything writes there
    (a concurrent writer's temporary would go too). Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted write in %s",
                    len(removed), directory)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, "torch.Tensor"],
                 metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, "torch.Tensor"]:
    """Load a safetensors file, or a ``.pt``/``.bin`` file without unpickling arbitrary objects."""
    import torch

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))  # never unpickles, so trying it first is safe
        except Exception as err:  # safetensors raises its own error types
            with open(path, "rb") as f:
                head = f.read(4)
            if head.startswith(_PICKLE_MAGIC):
                raise UnsafeFileError(
                    f"{path}: refused to load: this is a pickle/torch.save file, not "
                    "safetensors (unpickling could execute code)") from None
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CorruptFileError(f"{path}: not a valid safetensors file ({reason}); "
                                   "truncated or corrupt, re-train or restore it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only raises for a non-tensor object
        raise UnsafeFileError(
            f"{path}: refused to load (only plain tensors are accepted; "
            f"weights_only=True load failed: {str(err).splitlines()[0]})"
        ) from None
    except Exception as err:  # truncated zip, not a torch file at all, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptFileError(f"{path}: not a readable torch file ({reason}); "
                               "truncated or corrupt, re-create or restore it") from None
    if isinstance(obj, torch.Tensor):
        return {"weight": obj}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise CorruptFileError(f"{path}: expected a tensor or a dict of tensors, "
                           f"got {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: not valid JSON ({err})") from None
