"""Configuration dataclasses: the one place where defaults live.

Every dataclass here has a YAML mirror (``to_dict`` / ``from_dict``). Unknown keys and impossible
values raise :class:`ConfigError` naming the key, because a silently dropped key is how the public
HyperSteer code ended up ignoring ``max_concepts`` and the steering factor.

Why not pydantic (issue 15 asked): it would replace only ``_check_keys`` and ``_coerce`` (~45
lines); the cross-field rules (``context_layer <= steering_layer``, the in-context template's
slots, targets required by the reconstruction objective) stay hand-written, and keeping today's
one-line ``where.key: ...`` messages needs a translator of its errors about as long as what it
removes. Its lax mode would accept ``batch_size: "8"``, its strict mode a YAML ``1`` for a float
only with per-field settings, and PyYAML's ``lr: 1e-4`` string still needs a hook. It would also
add a dependency to ``model``, which installs with torch and transformers alone.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

VARIANTS = ("nocontext", "incontext", "xattn")
INITS = ("pretrained", "random")
READOUTS = ("last_token", "mean")
DTYPES = ("float32", "bfloat16", "float16")
OBJECTIVES = ("lm", "reconstruction", "both")
# How the hypernetwork is spread over ranks (ddp: replicated, also the single-process case;
# fsdp: FSDP2-sharded) and which optimizer updates it (adamw8bit: torchao's, the ``scale`` extra).
STRATEGIES = ("ddp", "fsdp")
OPTIMIZERS = ("adamw", "adamw8bit")
PREFIX_CACHES = ("auto", "off", "memory", "disk")

# The separator between steering prompt and base prompt for the in-context variant. It is plain
# text (no new special tokens) so a pretrained-initialised hypernetwork can read it.
DEFAULT_IN_CONTEXT_TEMPLATE = "{steering_prompt}\n\n### Steer this prompt:\n{base_prompt}"


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}"
        )


# Scientific notation without a dot ("1e-4"): a float in YAML 1.2 and JSON, a string to PyYAML.
_YAML11_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check types of YAML values against the dataclass annotations (ints may stand for floats)."""
    out: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in data.items():
        hint = str(hints[key])
        if value is None:
            if "None" not in hint:
                raise ConfigError(f"{where}.{key}: must not be null")
            out[key] = None
            continue
        if hint.startswith("bool"):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        elif hint.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        elif hint.startswith("float"):
            if isinstance(value, str) and _YAML11_EXPONENT_FLOAT.match(value.strip()):
                value = float(value)  # PyYAML reads `lr: 1e-4` (no dot) as a string
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            value = float(value)
        elif hint.startswith("str"):
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        elif hint.startswith("list"):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
            value = list(value)
        out[key] = value
    return out


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own message spans several lines with a caret)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(err).split())


def read_yaml_mapping(path: str | Path, what: str = "config file",
                      empty_ok: bool = False) -> dict:
    """``yaml.safe_load`` of a file that must hold a mapping; every failure is a one-line
    :class:`ConfigError` naming the file (safe_load: a YAML tag never constructs objects)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


class _YamlMixin:
    """``from_dict`` / ``to_dict`` / YAML round trip shared by every config dataclass."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None):
        where = where or cls.__name__
        data = dict(data or {})
        _check_keys(cls, data, where)
        return cls(**_coerce(cls, data, where))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path: str | Path):
        return cls.from_dict(read_yaml_mapping(path, empty_ok=True), where=str(path))

    def to_yaml(self, path: str | Path) -> None:
        from .fileio import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


@dataclass
class HyperSteerConfig(_YamlMixin):
    """Architecture of one HyperSteer hypernetwork and where it steers the base model.

    Defaults are the paper's Gemma-2-2B cross-attention setting (22 blocks, 8 cross-attention heads,
    layer 20). ``num_blocks=None`` means the base model's full depth (the paper's no-context and
    in-context variants).
    """

    variant: str = "xattn"
    num_blocks: int | None = None
    init: str = "pretrained"
    cross_attention_heads: int = 8
    steering_layer: int = 20
    # Base block whose output (the residual the steering is added to, before steering) feeds the
    # cross-attention. None = steering_layer. Must not be later than steering_layer so that one
    # base pass serves both.
    context_layer: int | None = None
    readout: str = "last_token"
    dtype: str = "float32"
    in_context_template: str = DEFAULT_IN_CONTEXT_TEMPLATE
    seed: int = 42

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: {self.variant!r} is not one of {list(VARIANTS)}")
        if self.init not in INITS:
            raise ConfigError(f"init: {self.init!r} is not one of {list(INITS)}")
        if self.readout not in READOUTS:
            raise ConfigError(f"readout: {self.readout!r} is not one of {list(READOUTS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {list(DTYPES)}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError(f"num_blocks: must be >= 1, got {self.num_blocks}")
        if self.cross_attention_heads < 1:
            raise ConfigError(
                f"cross_attention_heads: must be >= 1, got {self.cross_attention_heads}"
            )
        if self.steering_layer < 0:
            raise ConfigError(f"steering_layer: must be >= 0, got {self.steering_layer}")
        if self.context_layer is not None and not 0 <= self.context_layer <= self.steering_layer:
            raise ConfigError(
                f"context_layer: must lie in [0, steering_layer={self.steering_layer}], "
                f"got {self.context_layer}"
            )
        if self.variant == "incontext":
            for slot in ("{steering_prompt}", "{base_prompt}"):
                if slot not in self.in_context_template:
                    raise ConfigError(f"in_context_template: must contain {slot}")

    @property
    def resolved_context_layer(self) -> int:
        return self.steering_layer if self.context_layer is None else self.context_layer

    def validate_for(self, base_config: Any) -> None:
        """Reject settings the given base model (a transformers config) cannot satisfy."""
        depth = base_config.num_hidden_layers
        width = base_config.hidden_size
        if self.num_blocks is not None and self.num_blocks > depth:
            raise ConfigError(
                f"num_blocks: {self.num_blocks} is larger than the base model's depth ({depth})"
            )
        if self.steering_layer >= depth:
            raise ConfigError(
                f"steering_layer: {self.steering_layer} is out of range for a base model with "
                f"{depth} layers (valid: 0..{depth - 1})"
            )
        if self.variant == "xattn" and width % self.cross_attention_heads != 0:
            raise ConfigError(
                f"cross_attention_heads: {self.cross_attention_heads} does not divide the hidden "
                f"size {width}"
            )

    def resolved_num_blocks(self, base_config: Any) -> int:
        return self.num_blocks or base_config.num_hidden_layers


@dataclass
class TrainConfig(_YamlMixin):
    """Optimisation of the hypernetwork. Defaults: the paper's Gemma-2-2B setting."""

    batch_size: int = 12
    n_epochs: int = 3
    lr: float = 8e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    objective: str = "lm"
    lm_weight: float = 1.0
    reconstruction_weight: float = 1.0
    # A [num_concepts, d_model] matrix (safetensors or .pt, e.g. AxBench's {Name}_weight.pt) whose
    # row i is the target vector of concept_id i. Required by the reconstruction objective.
    reconstruction_targets: str | None = None
    max_concepts: int | None = None
    max_num_of_examples: int | None = None
    max_length: int = 512
    dev_examples: int = 32
    eval_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    gradient_checkpointing: bool = False
    max_steps: int | None = None
    seed: int = 42
    strategy: str = "ddp"
    optimizer: str = "adamw"
    # fsdp only: shard the frozen base model too (else it is replicated, bf16 on GPU), and keep
    # the sharded parameters in host memory (FSDP2's CPUOffloadPolicy; needs an accelerator).
    shard_base: bool = False
    cpu_offload: bool = False
    # Throughput options (docs/benchmarks.md). Sort by length within shuffled groups of this many
    # updates (0: off, the paper's random batches). On by default: random Concept10 batches are
    # 21-28 % padding, and the learning curve against the official loop is unchanged within seed
    # noise (docs/fidelity.md).
    length_bucket_group: int = 16
    # Keep the frozen base blocks' output per training example after its first pass and skip
    # those blocks from then on: "memory", "disk" (a memory-mapped file in the run dir), "off",
    # or "auto": memory when the estimate fits in half the available RAM and the run has a second
    # epoch to replay it in (single process), else off; one log line says which and why.
    prefix_cache: str = "auto"
    prefix_cache_max_gb: float | None = None  # refuse to start above this (default: what fits)
    fused_adamw: bool = False  # torch's fused AdamW kernel: no gain on CPU; for GPUs
    # Keep the hypernetwork's token embeddings at their pretrained values (the official code
    # trains them). Words that no training description contains then keep the same geometry as
    # the words that train the map around them, which is what lets a small set of training
    # concepts generalise to unseen descriptions (the demo; docs/benchmarks.md).
    freeze_embeddings: bool = False

    def __post_init__(self) -> None:
        positive = ("batch_size", "n_epochs", "gradient_accumulation_steps", "max_length",
                    "eval_every", "checkpoint_every", "keep_checkpoints", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr: must be a positive number, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio: must lie in [0, 1), got {self.warmup_ratio}")
        # max_grad_norm 0 would silently zero every gradient; negative weights flip the loss.
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"max_grad_norm: must be a positive number, got {self.max_grad_norm}")
        for key in ("weight_decay", "lm_weight", "reconstruction_weight", "dev_examples"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{key}: must be >= 0, got {value}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective: {self.objective!r} is not one of {list(OBJECTIVES)}")
        if self.objective != "lm" and not self.reconstruction_targets:
            raise ConfigError(
                f"reconstruction_targets: required when objective is {self.objective!r}"
            )
        if self.length_bucket_group < 0:
            raise ConfigError(f"length_bucket_group: must be >= 0, got {self.length_bucket_group}")
        if self.prefix_cache not in PREFIX_CACHES:
            raise ConfigError(f"prefix_cache: {self.prefix_cache!r} is not one of "
                              f"{list(PREFIX_CACHES)}")
        if self.prefix_cache_max_gb is not None and not self.prefix_cache_max_gb > 0:
            raise ConfigError(f"prefix_cache_max_gb: must be > 0 or null, "
                              f"got {self.prefix_cache_max_gb}")
        for key in ("max_concepts", "max_num_of_examples", "max_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}: must be >= 1 or null, got {value}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: {self.strategy!r} is not one of {list(STRATEGIES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        for key in ("shard_base", "cpu_offload"):
            if getattr(self, key) and self.strategy != "fsdp":
                raise ConfigError(f"{key}: needs strategy: fsdp (got {self.strategy!r})")


@dataclass
class InferenceConfig(_YamlMixin):
    """The steering-factor sweep. Defaults follow AxBench's production sweep (14 factors, 10
    AlpacaEval prompts per concept, half of them used to pick the factor)."""

    steering_factors: list = field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0]
    )
    steering_num_of_examples: int = 10
    steering_batch_size: int = 10  # AxBench's predict_steer: rows per call, one concept at a time
    steering_output_length: int = 128
    # Rows (concept x prompt x factor, many concepts mixed) per generate call in `hypersteer
    # inference`. One concept's batch of 10 leaves most of a device idle (benchmarks P2).
    rows_per_call: int = 128
    temperature: float = 1.0
    # AlpacaEval-format JSON (a list of {"instruction": ...}); None = the built-in demo prompts.
    prompts_path: str | None = None
    # Fraction of each concept's prompts held back for reporting (AxBench's winrate_split_ratio).
    split_ratio: float = 0.5
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.steering_factors:
            raise ConfigError("steering_factors: must list at least one factor")
        for f in self.steering_factors:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f):
                raise ConfigError(f"steering_factors: {f!r} is not a finite number")
        self.steering_factors = [float(f) for f in self.steering_factors]
        for key in ("steering_num_of_examples", "steering_batch_size", "steering_output_length",
                    "rows_per_call"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.split_ratio < 1.0:
            raise ConfigError(f"split_ratio: must lie in [0, 1), got {self.split_ratio}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")


@dataclass
class JudgeConfig(_YamlMixin):
    """The OpenAI-compatible LLM judge. The API key is never a config field: it is read from
    ``OPENAI_API_KEY`` only, so it cannot end up in a dump."""

    lm_model: str = "gpt-4o-mini"
    base_url: str | None = None
    temperature: float = 0.0
    concurrency: int = 16
    max_retries: int = 4
    timeout: float = 60.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    # Judge templates: "auto" = AxBench's own when AxBench is importable (the only scores
    # comparable with AxBench's tables and the paper's), else the package's; or force one.
    rubric: str = "auto"

    def __post_init__(self) -> None:
        if self.rubric not in ("auto", "axbench", "package"):
            raise ConfigError(f"rubric: {self.rubric!r} is not one of ['auto', 'axbench', 'package']")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries: must be >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout: must be > 0, got {self.timeout}")
        for key in ("temperature", "backoff_base", "backoff_max"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
