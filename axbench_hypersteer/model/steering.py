"""The steering intervention: ``h_l <- h_l + factor[i] * delta[i]`` at every position of row i.

Implemented the AxBench way, as a pyvene intervention on ``model.layers[l].output``, which pyvene
0.1.8 applies to the prompt forward and to every cached decode step when called with
``unit_locations=None, intervene_on_prompt=True`` (measured: per-row vectors work in ``forward``
and ``generate``, identical to a plain forward hook). A plain forward hook with the same
arithmetic is kept as the test oracle and for code that must not depend on pyvene.

Where the vectors come from is a :class:`SteeringSource`. It either holds fixed vectors or
computes them lazily from the layer-l output it is about to steer: that is how the
cross-attention variant needs only ONE base pass (the hypernetwork reads the pre-steering
residual of the very forward it steers), and how ``generate`` computes the vector once at
prefill and reuses it for every decoded token.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterator

import torch
from torch import nn

from .tokens import hidden_of, with_hidden

DeltaFn = Callable[[torch.Tensor], torch.Tensor]


class SteeringSource:
    """Per-call steering state: factors ``[B]`` and vectors ``[B, d]`` (given, or computed from the
    first layer output seen, i.e. the prompt at prefill, then reused)."""

    def __init__(self, factors: torch.Tensor, delta: torch.Tensor | None = None,
                 delta_fn: DeltaFn | None = None):
        if (delta is None) == (delta_fn is None):
            raise ValueError("give exactly one of delta and delta_fn")
        self.factors = factors
        self.delta = delta
        self.delta_fn = delta_fn

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, d] (S = 1 at cached decode steps) -> steered hidden, same shape/dtype."""
        if self.delta is None:
            self.delta = self.delta_fn(hidden)
        if self.delta.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"steering vectors have batch {self.delta.shape[0]} but the layer output has "
                f"batch {hidden.shape[0]} (num_return_sequences/beam search expand the batch: "
                "repeat the vectors per returned sequence)"
            )
        if tuple(self.factors.shape) != (self.delta.shape[0],):
            raise ValueError(
                f"factors have shape {tuple(self.factors.shape)} but the steering vectors have "
                f"batch {self.delta.shape[0]}: give one factor per row"
            )
        shift = self.factors.to(self.delta.dtype)[:, None] * self.delta  # [B, d]
        return hidden + shift.to(hidden.dtype)[:, None, :]


def _import_pyvene():
    # pyvene prints an nnsight notice to stdout on import; keep CLI output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        import pyvene
    return pyvene


def _intervention_class():
    pv = _import_pyvene()

    class HyperSteerIntervention(pv.SourcelessIntervention, pv.TrainableIntervention,
                                 pv.DistributedRepresentationIntervention):
        """Adds per-row vectors supplied through ``subspaces=[{"steer": SteeringSource}]``."""

        def __init__(self, **kwargs):
            # keep_last_dim: otherwise pyvene flattens the layer output to [B, S*d].
            super().__init__(**kwargs, keep_last_dim=True)

        def forward(self, base, source=None, subspaces=None):
            if not subspaces or "steer" not in subspaces:
                raise ValueError("HyperSteerIntervention needs subspaces={'steer': SteeringSource}")
            return subspaces["steer"](base)

    return HyperSteerIntervention


def _intervenable_model_class():
    pv = _import_pyvene()

    class OwnHooksIntervenableModel(pv.IntervenableModel):
        """pyvene 0.1.8 pops EVERY forward (pre-)hook on the wrapped model before and after each
        call (``_remove_forward_hooks``), not just the ones it registered. That deletes other
        code's hooks and, on transformers 5, the persistent hooks through which the model itself
        records ``output_hidden_states``/``output_attentions`` (installed once, on first use):
        those outputs would come back empty, or stay broken after the call.

        This subclass keeps the handles of the hooks pyvene registers (its getters and setters)
        and removes exactly those, so every other hook stays in place and fires during the call.
        """

        def _own(self, handlers):
            self.__dict__.setdefault("_own_hook_handles", []).extend(handlers.handlers)
            return handlers

        def _intervention_getter(self, *args, **kwargs):
            return self._own(super()._intervention_getter(*args, **kwargs))

        def _intervention_setter(self, *args, **kwargs):
            return self._own(super()._intervention_setter(*args, **kwargs))

        def _remove_forward_hooks(self):
            handles = self.__dict__.setdefault("_own_hook_handles", [])
            for handle in handles:
                handle.remove()
            handles.clear()

    return OwnHooksIntervenableModel


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (``model.<prefix>.layers``)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: expected decoder blocks at model.layers")
    return layers


class Steerer:
    """Steers a frozen causal LM at decoder block ``layer`` through pyvene.

    Builds the pyvene wrapper once; pyvene registers its hooks per call and removes them after.
    Hooks it did not register stay on the model and run during the call (see
    ``_intervenable_model_class``).
    """

    def __init__(self, model: nn.Module, layer: int, backend: str = "pyvene"):
        num_layers = len(decoder_layers(model))
        if not 0 <= layer < num_layers:
            raise ValueError(f"steering layer {layer} out of range (model has {num_layers} layers)")
        if backend not in ("pyvene", "hook"):
            raise ValueError(f"backend must be 'pyvene' or 'hook', got {backend!r}")
        self.model = model
        self.layer = layer
        self.backend = backend
        self._pv = None
        self._pv_decoder = None

    @property
    def intervenable(self):
        """pyvene wrapper of the causal LM (decoder + LM head)."""
        if self._pv is None:
            self._pv = self._wrap(self.model, f"{self.model.base_model_prefix}.layers[{self.layer}]")
        return self._pv

    @property
    def decoder_intervenable(self):
        """pyvene wrapper of the decoder stack alone (no LM head), for callers that apply the
        head themselves to a subset of positions."""
        if self._pv_decoder is None:
            self._pv_decoder = self._wrap(self.model.base_model, f"layers[{self.layer}]")
        return self._pv_decoder

    def _wrap(self, module: nn.Module, block_path: str):
        pv = _import_pyvene()
        iv = _intervention_class()(embed_dim=self.model.config.hidden_size, low_rank_dimension=1)
        cfg = pv.IntervenableConfig(representations=[{
            "layer": self.layer, "component": f"{block_path}.output",
            "low_rank_dimension": 1, "intervention": iv,
        }])
        # pyvene freezes the wrapped model (requires_grad=False, eval()) at construction.
        return _intervenable_model_class()(cfg, module)

    def forward(self, source: SteeringSource, decoder_only: bool = False, **model_kwargs):
        """A steered forward pass; returns the HF model output (with ``loss`` when labels given).

        ``decoder_only=True`` runs the decoder stack without the LM head and returns its output
        (``last_hidden_state``, final norm applied): a training step that needs the loss only at
        the answer tokens then projects just those positions onto the vocabulary.
        """
        target = self.model.base_model if decoder_only else self.model
        if self.backend == "hook":
            with steering_hook(self.model, self.layer, source):
                return target(**model_kwargs)
        wrapper = self.decoder_intervenable if decoder_only else self.intervenable
        _, out = wrapper(base=model_kwargs, unit_locations=None, subspaces=[{"steer": source}])
        return out

    def generate(self, source: SteeringSource, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, **gen_kwargs) -> torch.Tensor:
        """Steered ``generate``: the prompt and every generated token are steered."""
        if self.backend == "hook":
            with steering_hook(self.model, self.layer, source):
                return self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                           **gen_kwargs)
        _, out = self.intervenable.generate(
            {"input_ids": input_ids, "attention_mask": attention_mask},
            unit_locations=None, intervene_on_prompt=True,
            subspaces=[{"steer": source}], **gen_kwargs,
        )
        return out


@contextlib.contextmanager
def steering_hook(model: nn.Module, layer: int, source: SteeringSource) -> Iterator[None]:
    """Plain forward-hook steering with the same arithmetic (the oracle for the pyvene path).

    The hook is prepended, so that every other forward hook on the block sees the steered output,
    as the next block does: transformers 5 records ``output_hidden_states`` through persistent
    hooks registered before ours, which would otherwise record the pre-steering output.
    """

    def hook(module, args, output):
        return with_hidden(output, source(hidden_of(output)))

    handle = decoder_layers(model)[layer].register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    pass


def residual_after(model: nn.Module, layer: int, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Output of decoder block ``layer`` (pre-steering), running only blocks 0..layer.

    Returns [B, T, d]. The forward is cut short with an exception from a hook, so the later
    blocks and the LM head never run.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["h"] = hidden_of(output)
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["h"]
