"""What the stages share, in one place: the prompt split, loading the base model, and loading a
trained method from a dump.

Each stage imports this module and ``model``, never another stage, so a stage can change without
silently changing its neighbours (the split used to be computed three ways: inference from the
config, evaluate from the ids present, steering-loss from the example count).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..model.config import InferenceConfig
from ..model.errors import ConfigError, DataError
from ..model.fileio import atomic_write_json, read_json
from ..model.hypersteer import CONFIG_NAME, HyperSteer
from ..model.loading import load_base
from .data import load_metadata
from .run_config import RunConfig, is_hypersteer_method

MODES = ("steering", "steering_test")


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """The one progress convention of every command: bars on stderr by default, ``--no_progress``
    turns them off (logs, CI); ``--progress`` is accepted to say the default explicitly."""
    parser.add_argument("--no_progress", dest="progress", action="store_false",
                        help="no progress bars")
    parser.add_argument("--progress", dest="progress", action="store_true",
                        help="progress bars on stderr (the default)")
    parser.set_defaults(progress=True)
SPLIT_FILE = "prompt_split.json"  # in DUMP/inference/, written by the first inference run


# ------------------------------------------------------------------------------ the prompt split


@dataclass(frozen=True)
class PromptSplit:
    """AxBench's split by ``input_id``: of ``num_prompts`` prompts per concept, the first
    ``num_prompts - round(num_prompts * split_ratio)`` pick the factor (``steering``), the rest
    report it (``steering_test``). It comes from the config, never from the ids a file happens to
    hold: a dump holding only the ``steering`` prompts would otherwise be split again."""

    num_prompts: int
    split_ratio: float

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ConfigError(f"steering_num_of_examples: must be >= 1, got {self.num_prompts}")
        if not 0.0 <= self.split_ratio < 1.0:
            raise ConfigError(f"split_ratio: must lie in [0, 1), got {self.split_ratio}")

    @classmethod
    def from_config(cls, cfg: InferenceConfig) -> "PromptSplit":
        return cls(cfg.steering_num_of_examples, cfg.split_ratio)

    def ids(self, mode: str) -> range:
        n_steer = self.num_prompts - round(self.num_prompts * self.split_ratio)
        if mode == "steering":
            return range(0, n_steer)
        if mode == "steering_test":
            return range(n_steer, self.num_prompts)
        raise ConfigError(f"mode: {mode!r} is not one of {list(MODES)}")

    def describe(self) -> str:
        return f"steering_num_of_examples={self.num_prompts}, split_ratio={self.split_ratio}"


def recorded_split(dump_dir: str | Path) -> PromptSplit | None:
    """The split the dump's inference was run with, or None if no inference recorded one."""
    path = Path(dump_dir) / "inference" / SPLIT_FILE
    if not path.exists():
        return None
    saved = read_json(path)
    try:
        return PromptSplit(int(saved["num_prompts"]), float(saved["split_ratio"]))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: expected {{'num_prompts': int, 'split_ratio': float}}, "
                        f"got {json.dumps(saved)[:120]}") from None


def check_split(dump_dir: str | Path, split: PromptSplit | None, stage: str) -> PromptSplit:
    """The split a stage must use: the dump's recorded one, which ``split`` (from the stage's
    config) must agree with. With nothing recorded, ``split`` is used; with neither, an error."""
    recorded = recorded_split(dump_dir)
    path = Path(dump_dir) / "inference" / SPLIT_FILE
    if recorded is not None and split is not None and recorded != split:
        raise ConfigError(f"{path}: this dump's prompts were split with {recorded.describe()}, "
                          f"but the {stage} config says {split.describe()}; use the same "
                          "inference settings, or a new dump_dir")
    if recorded is None and split is None:
        raise ConfigError(f"{path}: no prompt split recorded (inference writes it); pass "
                          f"--config so that {stage} knows steering_num_of_examples and "
                          "split_ratio")
    return recorded or split


def record_split(dump_dir: str | Path, split: PromptSplit) -> None:
    """Write the split on the first inference run; later runs (the other mode, a resume) must
    use the same one."""
    check_split(dump_dir, split, "inference")
    path = Path(dump_dir) / "inference" / SPLIT_FILE
    if not path.exists():
        atomic_write_json(path, asdict(split) | {"modes": {m: list(split.ids(m)) for m in MODES}})


# ------------------------------------------------------------------------------ what to run on


def resolve_concepts(dump_dir: Path, concepts_path: str | None) -> list[dict]:
    """Concepts to steer: an explicit metadata.jsonl, else the dump's generate/ or train/ one."""
    candidates = [Path(concepts_path)] if concepts_path else [
        dump_dir / "generate" / "metadata.jsonl", dump_dir / "train" / "metadata.jsonl"]
    for path in candidates:
        if path.exists() or concepts_path:
            return load_metadata(path)
    raise DataError(f"{dump_dir}: no concepts to steer (looked for "
                    f"{', '.join(map(str, candidates))}); pass --concepts")


def inference_methods(run: RunConfig, methods: Sequence[str] | None) -> list[str]:
    names = methods or [m for m in (run.raw.get("inference") or {}).get("models") or []
                        if is_hypersteer_method(m)] or list(run.methods)
    return [run.method(m).name for m in names]


# ------------------------------------------------------------------------------ models


def stage_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_stage_base(run: RunConfig, device: str | None = None):
    """The run's base model and tokenizer as every stage loads them: on the GPU when there is
    one, in bf16 there when the config says ``use_bf16`` (fp32 on CPU, where bf16 is slow)."""
    device = device or stage_device()
    dtype = torch.bfloat16 if run.use_bf16 and device.startswith("cuda") else torch.float32
    return load_base(run.model_name, dtype=dtype, device=device)


def autocast_for(run: RunConfig, model) -> contextlib.AbstractContextManager:
    """bf16 autocast when the run asks for it and ``model`` sits on a GPU; a no-op otherwise."""
    device = next(model.parameters()).device
    return torch.autocast("cuda", dtype=torch.bfloat16,
                          enabled=bool(run.use_bf16 and device.type == "cuda"))


def method_dir(dump_dir: str | Path, method: str) -> Path:
    return Path(dump_dir) / "train" / method


def is_trained(dump_dir: str | Path, method: str) -> bool:
    return (method_dir(dump_dir, method) / CONFIG_NAME).exists()


def load_checkpoint(directory: str | Path, base) -> HyperSteer:
    """A saved HyperSteer on ``base = (model, tokenizer)``, in eval mode (the one place the
    stages, the experiments and the AxBench adapter load checkpoints)."""
    model, tokenizer = base
    hs = HyperSteer.from_pretrained(directory, model, tokenizer)
    hs.hypernet.eval()
    return hs


def load_method(dump_dir: str | Path, method: str, base) -> HyperSteer:
    """The trained ``method`` of a dump (``DUMP/train/<method>``), in eval mode."""
    return load_checkpoint(method_dir(dump_dir, method), base)
