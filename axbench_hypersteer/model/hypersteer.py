"""HyperSteer: a frozen base LM, a trainable hypernetwork, and the steering intervention between them.

Public API (see README):
    hs = HyperSteer.from_base(model, tokenizer, HyperSteerConfig(variant="xattn", steering_layer=20))
    vecs = hs.steering_vectors(["references to legal terminology"], base_prompts=["Write a poem."])
    texts = hs.generate(["Write a poem."], ["references to legal terminology"], factors=[1.0])
    hs.save_pretrained(path);  HyperSteer.from_pretrained(path, model, tokenizer)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import __version__
from .answer_loss import answer_loss, has_plain_head
from .collate import SteeringCollator
from .config import ConfigError, HyperSteerConfig
from .errors import CorruptFileError, MissingFileError
from .fileio import atomic_write_json, load_tensors, read_json, save_tensors
from .hypernet import ARCHITECTURE_VERSION, HyperNetwork, check_architecture
from .steering import DeltaFn, Steerer, SteeringSource, residual_after
from .tokens import encode_left, format_prompt, position_ids

logger = logging.getLogger(__name__)

CONFIG_NAME = "hypersteer_config.json"
WEIGHTS_NAME = "hypernet.safetensors"


@dataclass
class SteeredOutput:
    loss: torch.Tensor | None   # causal-LM loss on the labelled tokens (None without labels)
    logits: torch.Tensor | None  # [B, T, vocab]; None when only the loss was asked for
    steering_vectors: torch.Tensor  # [B, d_model], before the factor


def base_model_signature(model: nn.Module) -> dict:
    """What a checkpoint must match to be loaded onto a base model."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "name_or_path": getattr(cfg, "_name_or_path", "") or "",
    }


class HyperSteer(nn.Module):
    """Owns the hypernetwork (the only trainable part); the base model is referenced, not owned,
    so ``state_dict()`` and checkpoints hold the hypernetwork alone."""

    def __init__(self, base_model: nn.Module, tokenizer, config: HyperSteerConfig,
                 backend: str = "pyvene"):
        super().__init__()
        config.validate_for(base_model.config)
        check_tokenizer_fits(base_model, tokenizer)
        self.config = config
        self.tokenizer = tokenizer
        object.__setattr__(self, "base_model", base_model)  # not a submodule: never saved
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.hypernet = HyperNetwork(base_model, config)
        self.steerer = Steerer(base_model, config.steering_layer, backend=backend)

    @classmethod
    def from_base(cls, base_model: nn.Module, tokenizer, config: HyperSteerConfig,
                  backend: str = "pyvene") -> "HyperSteer":
        return cls(base_model, tokenizer, config, backend=backend)

    @property
    def device(self) -> torch.device:
        return next(self.hypernet.parameters()).device

    # ----- text -> tensors -------------------------------------------------------------------
    def hypernet_text(self, steering_prompt: str, base_prompt: str | None = None) -> str:
        """The hypernetwork's input: the steering prompt, plus the raw base prompt (in-context)."""
        if self.config.variant != "incontext":
            return steering_prompt
        if base_prompt is None:
            raise ValueError("the in-context variant needs the base prompt")
        return self.config.in_context_template.format(
            steering_prompt=steering_prompt, base_prompt=base_prompt
        )

    def format_prompts(self, prompts: Sequence[str]) -> list[str]:
        """Raw instructions -> chat-formatted user turns with the generation prompt, BOS stripped
        (the tokenizer adds it), exactly as training formats them."""
        return [format_prompt(self.tokenizer, p) for p in prompts]

    def encode_hypernet(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypernetwork tokens [B, S], left padded, with BOS: the same encoding as training."""
        ids, mask = SteeringCollator(self.tokenizer).encode_hypernet(texts)
        return ids.to(self.device), mask.to(self.device)

    # ----- steering vectors ------------------------------------------------------------------
    def _delta_fn(self, hyper_ids: torch.Tensor, hyper_mask: torch.Tensor,
                  context_mask: torch.Tensor) -> DeltaFn:
        """Vectors from the layer output about to be steered: one base pass serves both."""
        def fn(hidden: torch.Tensor) -> torch.Tensor:  # hidden [B, T, d], pre-steering
            mask = context_mask[:, : hidden.shape[1]].to(hidden.device)
            width = context_width(mask)
            return self.hypernet(hyper_ids, hyper_mask, context=hidden[:, :width],
                                 context_mask=mask[:, :width])
        return fn

    def _uses_context_layer_directly(self) -> bool:
        return self.config.resolved_context_layer == self.config.steering_layer

    def _source(self, factors: torch.Tensor, hyper_ids: torch.Tensor, hyper_mask: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: torch.Tensor,
                context_mask: torch.Tensor | None) -> SteeringSource:
        if self.config.variant != "xattn":
            return SteeringSource(factors, delta=self.hypernet(hyper_ids, hyper_mask))
        context_mask = attention_mask.bool() if context_mask is None else context_mask.bool()
        if self._uses_context_layer_directly():
            return SteeringSource(factors, delta_fn=self._delta_fn(hyper_ids, hyper_mask,
                                                                   context_mask))
        # An earlier context layer: a partial base pass (blocks 0..context_layer) first.
        context = residual_after(self.base_model, self.config.resolved_context_layer,
                                 input_ids, attention_mask, position_ids(attention_mask))
        delta = self.hypernet(hyper_ids, hyper_mask, context=context, context_mask=context_mask)
        return SteeringSource(factors, delta=delta)

    def compute_vectors(self, hyper_ids: torch.Tensor, hyper_mask: torch.Tensor,
                        input_ids: torch.Tensor | None = None,
                        attention_mask: torch.Tensor | None = None,
                        context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Steering vectors [B, d] without steering anything. The cross-attention variant runs the
        base model's blocks 0..context_layer over ``input_ids`` (and nothing after)."""
        if self.config.variant != "xattn":
            return self.hypernet(hyper_ids, hyper_mask)
        if input_ids is None or attention_mask is None:
            raise ValueError("the cross-attention variant needs the base prompt tokens")
        context = residual_after(self.base_model, self.config.resolved_context_layer,
                                 input_ids, attention_mask, position_ids(attention_mask))
        mask = attention_mask.bool() if context_mask is None else context_mask.bool()
        return self.hypernet(hyper_ids, hyper_mask, context=context, context_mask=mask)

    def steering_vectors(self, steering_prompts: Sequence[str],
                         base_prompts: Sequence[str] | None = None) -> torch.Tensor:
        """[B, d_model] vectors for raw steering prompts (and raw base prompts where the variant
        reads them). Detached unless the hypernetwork is in training mode (inference callers
        would otherwise keep every activation of the hypernetwork alive for a backward pass)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.hypernet.training):
            return self._steering_vectors(steering_prompts, base_prompts)

    def _steering_vectors(self, steering_prompts: Sequence[str],
                          base_prompts: Sequence[str] | None) -> torch.Tensor:
        if self.config.variant != "nocontext" and base_prompts is None:
            raise ValueError(f"variant {self.config.variant!r} needs base_prompts")
        if base_prompts is not None and len(base_prompts) != len(steering_prompts):
            raise ValueError("steering_prompts and base_prompts differ in length")
        texts = [self.hypernet_text(s, None if base_prompts is None else base_prompts[i])
                 for i, s in enumerate(steering_prompts)]
        hyper_ids, hyper_mask = self.encode_hypernet(texts)
        ids = mask = None
        if self.config.variant == "xattn":
            ids, mask = encode_left(self.tokenizer, self.format_prompts(base_prompts), self.device)
        return self.compute_vectors(hyper_ids, hyper_mask, ids, mask)

    # ----- steered forward / generate --------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                hyper_input_ids: torch.Tensor, hyper_attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                factors: torch.Tensor | None = None, return_logits: bool = True) -> SteeredOutput:
        """One steered pass of the frozen base model (training and scoring).

        input_ids, attention_mask, labels: [B, T]; context_mask: [B, T] bool, the base positions
        the cross-attention reads (default: all non-pad); factors: [B] (default 1.0 = the scale
        the hypernetwork is trained at). With labels and ``return_logits=False`` (training), the
        LM head runs on the labelled positions only (``answer_loss``): same loss, no
        ``[B, T, vocab]`` logits.
        """
        if factors is None:
            factors = torch.ones(input_ids.shape[0], device=input_ids.device)
        source = self._source(factors, hyper_input_ids, hyper_attention_mask,
                              input_ids, attention_mask, context_mask)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids(attention_mask), use_cache=False)
        if labels is not None and not return_logits and has_plain_head(self.base_model):
            out = self.steerer.forward(source, decoder_only=True, **kwargs)
            loss = answer_loss(self.base_model, out.last_hidden_state, labels)
            return SteeredOutput(loss, None, source.delta)
        if labels is not None:
            kwargs["labels"] = labels
        out = self.steerer.forward(source, **kwargs)
        return SteeredOutput(getattr(out, "loss", None), out.logits, source.delta)

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     hyper_input_ids: torch.Tensor | None, hyper_attention_mask: torch.Tensor | None,
                     factors: torch.Tensor, return_vectors: bool = False,
                     vectors: torch.Tensor | None = None,
                     **gen_kwargs) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Steered generation from left-padded prompt tokens; returns only the new tokens (and
        the [B, d] steering vectors used, if asked). Without ``vectors`` they are computed once
        at prefill; given ``vectors`` [B, d] (e.g. shared by the rows of a factor sweep), the
        hypernetwork does not run and the hypernetwork inputs may be None."""
        factors = factors.to(self.device)
        if vectors is not None:
            source = SteeringSource(factors, delta=vectors.to(self.device))
        else:
            source = self._source(factors, hyper_input_ids, hyper_attention_mask,
                                  input_ids, attention_mask, None)
        gen_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        out = self.steerer.generate(source, input_ids, attention_mask, **gen_kwargs)
        new = out[:, input_ids.shape[1]:]
        return (new, source.delta) if return_vectors else new

    @torch.no_grad()
    def generate(self, base_prompts: Sequence[str], steering_prompts: Sequence[str],
                 factors: Sequence[float] | torch.Tensor, max_new_tokens: int = 64,
                 chat_template: bool = True, **gen_kwargs) -> list[str]:
        """Steer raw base prompts with raw steering prompts, one factor per row; greedy unless
        ``do_sample=True`` is passed. Returns the decoded continuations."""
        n = len(base_prompts)
        if len(steering_prompts) != n or len(factors) != n:
            raise ValueError("base_prompts, steering_prompts and factors must have equal length")
        texts = [self.hypernet_text(s, b) for s, b in zip(steering_prompts, base_prompts)]
        hyper_ids, hyper_mask = self.encode_hypernet(texts)
        prompts = self.format_prompts(base_prompts) if chat_template else list(base_prompts)
        ids, mask = encode_left(self.tokenizer, prompts, self.device)
        gen_kwargs.setdefault("do_sample", False)
        new = self.generate_ids(ids, mask, hyper_ids, hyper_mask,
                                torch.as_tensor(factors, dtype=torch.float32),
                                max_new_tokens=max_new_tokens, **gen_kwargs)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    # ----- persistence -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """safetensors weights + a JSON config holding everything needed to rebuild.
        ``state_dict``: the hypernetwork's full weights when this process holds only a shard
        of them (FSDP gathers them first)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.hypernet.state_dict() if state_dict is None else state_dict
        save_tensors(directory / WEIGHTS_NAME, state, metadata={"format": "pt"})
        atomic_write_json(directory / CONFIG_NAME, {
            "hypersteer": self.config.to_dict(),
            "base_model": base_model_signature(self.base_model),
            "hypernet_architecture": ARCHITECTURE_VERSION,
            "package_version": __version__,
        })
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, base_model: nn.Module, tokenizer,
                        backend: str = "pyvene") -> "HyperSteer":
        directory = Path(directory)
        if not (directory / CONFIG_NAME).exists() or not (directory / WEIGHTS_NAME).exists():
            raise MissingFileError(
                f"{directory}: no trained HyperSteer checkpoint here "
                f"(expected {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
        saved = read_json(directory / CONFIG_NAME)
        check_base_matches(saved.get("base_model", {}), base_model, directory)
        config = HyperSteerConfig.from_dict(saved["hypersteer"], where=str(directory / CONFIG_NAME))
        state = load_tensors(directory / WEIGHTS_NAME)
        check_architecture(state, str(directory / WEIGHTS_NAME))
        model = cls(base_model, tokenizer, config, backend=backend)
        missing, unexpected = model.hypernet.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CorruptFileError(f"{directory / WEIGHTS_NAME}: weights do not fit the config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.to(next(base_model.parameters()).device)


def check_tokenizer_fits(base_model: nn.Module, tokenizer) -> None:
    """A tokenizer with more ids than the embedding has rows fails later as an index error
    deep inside torch; say so up front."""
    if tokenizer is None:  # tensor-level use (benchmarks): nothing to check
        return
    rows = base_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but the base model's embedding has only "
            f"{rows} rows: tokenizer and model do not belong together")


def check_base_matches(saved: dict, base_model: nn.Module, where: Path) -> None:
    current = base_model_signature(base_model)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if key in saved and saved[key] != current[key]:
            raise ConfigError(
                f"{where}: checkpoint was trained for a base model with {key}={saved[key]!r}, "
                f"but the given base model has {key}={current[key]!r}"
            )
    if saved.get("name_or_path") and current["name_or_path"] and \
            saved["name_or_path"] != current["name_or_path"]:
        logger.warning("%s: trained on base %s, loading onto %s (same architecture)",
                       where, saved["name_or_path"], current["name_or_path"])


def context_width(context_mask: torch.Tensor) -> int:
    """Base positions the cross-attention projects: up to the last readable column of any row.
    In training the answer tokens (right of every prompt) would be projected and then masked."""
    if not bool(context_mask.any()):
        return context_mask.shape[1]
    return int(context_mask.any(0).nonzero().max()) + 1

