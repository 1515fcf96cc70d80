"""A trained hypernetwork directory -> a ready ``HyperSteer`` on its base model.

Shared by ``hypersteer serve`` and ``hypersteer vectors``. The base model defaults to the one the
run trained on (``DUMP/train/config.json``'s ``model_name``, AxBench's record of it), so a user
needs only the hypernetwork directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.errors import ConfigError, DataError, MissingFileError
from ..model.fileio import read_json
from ..model.hypersteer import CONFIG_NAME, HyperSteer
from ..model.loading import load_base
from ..stages.data import load_metadata


def trained_base_name(hypernet_dir: Path) -> str:
    run_config = hypernet_dir.parent / "config.json"
    if run_config.is_file():
        name = read_json(run_config).get("model_name")
        if name:
            return str(name)
    saved = read_json(hypernet_dir / CONFIG_NAME).get("base_model", {}).get("name_or_path")
    if saved:
        return str(saved)
    raise ConfigError(f"{hypernet_dir}: cannot tell which base model it was trained on; "
                      "give --model")


def load_hypersteer(hypernet_dir: str | Path, model: str | None = None,
                    device: str | None = None, dtype: torch.dtype = torch.float32) -> HyperSteer:
    """``hypernet_dir`` = ``DUMP/train/<Method>``. The plain-hook backend: the serving loop
    calls the steered forward once per decoded token, where pyvene's per-call setup costs."""
    hypernet_dir = Path(hypernet_dir)
    if not (hypernet_dir / CONFIG_NAME).is_file():
        raise MissingFileError(f"{hypernet_dir}: no trained hypernetwork here (expected "
                                f"{CONFIG_NAME}; train one with `hypersteer train` or "
                                "`hypersteer demo`)")
    base, tokenizer = load_base(model or trained_base_name(hypernet_dir), dtype=dtype,
                                device=device)
    return HyperSteer.from_pretrained(hypernet_dir, base, tokenizer, backend="hook").eval()


def trained_concepts(hypernet_dir: str | Path, limit: int = 50) -> list[str]:
    """Concept descriptions the hypernetwork was trained on (the playground's examples)."""
    path = Path(hypernet_dir).parent / "metadata.jsonl"
    try:
        return [m["concept"] for m in load_metadata(path, required=("concept",))][:limit]
    except DataError:
        return []
