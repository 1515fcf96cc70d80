"""Analytic FLOPs of HyperSteer training and inference, and of the per-concept baseline it replaces.

Counting rules (nanoGPT / PaLM style, multiply-add = 2 FLOPs, everything per sequence):

* a linear layer ``d_in -> d_out`` over ``n`` tokens costs ``2·n·d_in·d_out`` forward;
* the attention core (``QKᵀ`` and ``P·V``) costs ``4·T_q·T_k·w`` forward, ``w = heads·head_dim``,
  counted over the full ``T_q×T_k`` rectangle (no causal discount, no sliding-window cut: Gemma-2's
  4096 window never binds at these lengths);
* one Gemma-2 decoder block over ``T`` tokens:
  ``2·T·d·(w_q + 2·w_kv) + 2·T·w_q·d`` (q, k, v, o) ``+ 4·T²·w_q`` (core) ``+ 6·T·d·I`` (GeGLU MLP);
* the (tied) LM head: ``2·T·d·V``; embedding lookups, norms, soft-capping, RoPE, activations and
  the softmax are not counted (lower order).

Backward, per operation, in multiples of its forward:

* linear: +1 if its input needs a gradient (``dX = dY·Wᵀ``), +1 if its weight is trained
  (``dW = Xᵀ·dY``). A FROZEN base block that gradients flow through therefore costs 1× forward
  for its linears, not 2×;
* attention core: 2× (dP, dV, dQ, dK: all four operands are activations).

With ``convention="nanogpt"`` every operation on the backward path counts 2× instead (the familiar
``6·N·T`` training rule, which is what the HyperSteer paper's per-vector number, 666 TFLOPs for one
ReFT-r1 vector, appears to use: 6 · 2.61e9 params · 3 epochs · 72 examples · ~197 tokens).

Where the gradient goes:

* HyperSteer steers the output of block ``l``; the loss is the base LM's cross-entropy. Gradients
  flow back through blocks ``l+1 .. L-1`` and the LM head (activation gradients only), reach the
  steering vector, and continue into the hypernetwork (weights trained). Blocks ``0..l`` of the
  base never see a gradient: the cross-attention context is a frozen activation read raw, so
  its k/v projections pay ``dW`` but no ``dX``.
* A per-concept steering vector (AxBench's SteeringVector / ReFT-r1, ``n_epochs × 72`` examples,
  one concept at a time) needs the same backward through blocks ``l+1..L-1``; its own gradient is
  an O(T·d) sum, not counted.
* The published two-pass HyperSteer code runs the full base model (all blocks and the LM head)
  once more, unsteered, just to read the layer-l residual; this package reads it inside the steered
  pass, so the extra pass is gone.

Everything is an exact integer function of a transformers config, so tests can check it by hand;
tests/test_flops.py also checks it against torch's FlopCounterMode on real training steps (equal
to the FLOP, RoPE's outer product aside).

    >>> from benchmarks.flops import *
    >>> g = gemma2_2b_shapes()
    >>> step = training_step_flops(g, HypernetShapes(22), steering_layer=20, batch_size=12,
    ...                            tokens=160, steering_tokens=16)
    >>> format_flops(step.total)
    '17.9 TFLOP'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

CONVENTIONS = ("exact", "nanogpt")


@dataclass(frozen=True)
class LMShapes:
    """The sizes of a decoder-only LM that FLOPs depend on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any) -> "LMShapes":
        """From a transformers config (Gemma-2, Llama, ...): no weights needed."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
        )

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def block_params(self) -> int:
        """Matmul parameters of one decoder block (norm weights excluded)."""
        d = self.hidden_size
        return d * (self.q_width + 2 * self.kv_width) + self.q_width * d \
            + 3 * d * self.intermediate_size

    def params(self) -> int:
        """Matmul parameters of the whole LM, counting the tied embedding once (as the LM head)."""
        return self.num_layers * self.block_params() + self.vocab_size * self.hidden_size


@dataclass(frozen=True)
class HypernetShapes:
    """The hypernetwork as built by :class:`~.hypernet.HyperNetwork`: the first
    ``num_blocks`` blocks of the base model (same widths, no LM head), plus, for the
    cross-attention variant, one full-width cross-attention per block (q, k, v, o all d×d; k and v
    read the base residual), and a ``d×d`` readout on one token per row."""

    num_blocks: int
    cross_attention: bool = True

    def params(self, base: LMShapes) -> int:
        d = base.hidden_size
        xattn = 4 * d * d if self.cross_attention else 0
        return self.num_blocks * (base.block_params() + xattn) + base.vocab_size * d + d * d


@dataclass(frozen=True)
class Cost:
    """FLOPs split into forward and backward."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, k: int) -> "Cost":
        return Cost(self.forward * k, self.backward * k)

    __rmul__ = __mul__


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def linear(tokens: int, d_in: int, d_out: int, input_grad: bool = False,
           weight_grad: bool = False, convention: str = "exact") -> Cost:
    """``2·tokens·d_in·d_out`` forward; backward as in the module docstring."""
    fwd = 2 * tokens * d_in * d_out
    if convention == "nanogpt":
        k = 2 if (input_grad or weight_grad) else 0
    else:
        k = int(input_grad) + int(weight_grad)
    return Cost(fwd, k * fwd)


def attention_core(q_tokens: int, k_tokens: int, width: int, backward: bool = False) -> Cost:
    """``QKᵀ`` and ``P·V`` over the full rectangle: ``4·T_q·T_k·width``; backward 2×."""
    fwd = 4 * q_tokens * k_tokens * width
    return Cost(fwd, 2 * fwd if backward else 0)


def block(shapes: LMShapes, tokens: int, input_grad: bool = False, weight_grad: bool = False,
          convention: str = "exact") -> Cost:
    """One decoder block (self-attention + GeGLU MLP) over one sequence of ``tokens``."""
    d, q, kv, ff = shapes.hidden_size, shapes.q_width, shapes.kv_width, shapes.intermediate_size
    kw = dict(input_grad=input_grad, weight_grad=weight_grad, convention=convention)
    grad = input_grad or weight_grad
    return (linear(tokens, d, q + 2 * kv, **kw) + linear(tokens, q, d, **kw)
            + attention_core(tokens, tokens, q, backward=grad)
            + linear(tokens, d, 2 * ff, **kw) + linear(tokens, ff, d, **kw))


def lm_head(shapes: LMShapes, tokens: int, input_grad: bool = False,
            convention: str = "exact") -> Cost:
    return linear(tokens, shapes.hidden_size, shapes.vocab_size, input_grad=input_grad,
                  convention=convention)


def base_forward(shapes: LMShapes, tokens: int, blocks: int | None = None,
                 head: bool = True) -> int:
    """Forward FLOPs of the first ``blocks`` blocks (default: all) and optionally the LM head."""
    n = shapes.num_layers if blocks is None else blocks
    return n * block(shapes, tokens).forward + (lm_head(shapes, tokens).forward if head else 0)


def hypernet_cost(base: LMShapes, arch: HypernetShapes, steering_tokens: int,
                  context_tokens: int = 0, train: bool = False,
                  convention: str = "exact") -> Cost:
    """The hypernetwork over one steering prompt of ``steering_tokens`` (cross-attending to
    ``context_tokens`` base positions), with its backward when ``train``."""
    d, S, T = base.hidden_size, steering_tokens, context_tokens
    cost = arch.num_blocks * block(base, S, input_grad=train, weight_grad=train,
                                   convention=convention)
    if arch.cross_attention:
        if T < 1:
            raise ValueError("the cross-attention hypernetwork needs context_tokens >= 1")
        per_block = (linear(S, d, d, train, train, convention)          # q
                     + linear(S, d, d, train, train, convention)        # o
                     # k, v of the context: the raw base residual is frozen (no norm on
                     # it, as in the official block), so no dX
                     + linear(T, d, 2 * d, False, train, convention)
                     + attention_core(S, T, d, backward=train))
        cost = cost + arch.num_blocks * per_block
    return cost + linear(1, d, d, train, train, convention)  # readout on the pooled token


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, by part (summed over the batch)."""

    base_forward: int
    base_backward: int
    hypernet_forward: int
    hypernet_backward: int
    context_forward: int = 0      # blocks 0..c when the context layer c precedes the steering layer
    extra_base_forward: int = 0   # the published code's second, full, unsteered base pass

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


def training_step_flops(base: LMShapes, arch: HypernetShapes, steering_layer: int,
                        batch_size: int, tokens: int, steering_tokens: int,
                        context_layer: int | None = None, context_tokens: int | None = None,
                        two_pass: bool = False, convention: str = "exact",
                        head_tokens: int | None = None) -> StepFlops:
    """One HyperSteer training step on ``batch_size`` rows of ``tokens`` base tokens (prompt +
    answer) and ``steering_tokens`` hypernetwork tokens.

    ``head_tokens`` is how many positions per row the steered pass projects onto the vocabulary
    (default ``tokens``, HF's ``labels=`` loss; the trainer's answer-only loss projects the
    labelled positions alone, see ``answer_loss``).

    ``context_tokens`` is how many base positions the cross-attention projects (default
    ``tokens``: this implementation projects the whole sequence and masks the answer).
    ``two_pass=True`` is the published implementation: one extra full base forward (all blocks and
    the LM head) whose hidden states feed the hypernetwork.
    """
    _check_convention(convention)
    L = base.num_layers
    if not 0 <= steering_layer < L:
        raise ValueError(f"steering_layer {steering_layer} out of range for {L} layers")
    c = steering_layer if context_layer is None else context_layer
    if not 0 <= c <= steering_layer:
        raise ValueError(f"context_layer {c} must lie in [0, {steering_layer}]")
    T, B = tokens, batch_size
    ctx = T if context_tokens is None else context_tokens
    above = L - 1 - steering_layer  # blocks the gradient flows back through
    bwd_blocks = above * block(base, T, input_grad=True, convention=convention)
    H = T if head_tokens is None else head_tokens
    if not 0 < H <= T:
        raise ValueError(f"head_tokens {H} must lie in [1, tokens={T}]")
    bwd_head = lm_head(base, H, input_grad=True, convention=convention)
    hyper = hypernet_cost(base, arch, steering_tokens, ctx if arch.cross_attention else 0,
                          train=True, convention=convention)
    context_fwd = extra = 0
    if two_pass:
        extra = base_forward(base, T)
    elif arch.cross_attention and c < steering_layer:
        context_fwd = base_forward(base, T, blocks=c + 1, head=False)
    return StepFlops(
        base_forward=B * (base_forward(base, T, head=False) + lm_head(base, H).forward),
        base_backward=B * (bwd_blocks.backward + bwd_head.backward),
        hypernet_forward=B * hyper.forward,
        hypernet_backward=B * hyper.backward,
        context_forward=B * context_fwd,
        extra_base_forward=B * extra,
    )


@dataclass(frozen=True)
class PerConceptAssumptions:
    """AxBench's per-concept steering-vector training (SteeringVector / ReFT-r1 on one concept):
    ``n_epochs × examples`` sequences of ``prompt_tokens + output_tokens`` through the whole LM.
    Defaults: AxBench's production sweep (3 epochs, 72 positives per concept, ``output_length``
    128) and Concept10's prompts (~67 characters of instruction + Gemma's chat template + BOS ≈ 32
    tokens). LsReFT with ``train_on_negative`` would see 144 examples."""

    n_epochs: int = 3
    examples: int = 72
    prompt_tokens: int = 32
    output_tokens: int = 128
    convention: str = "exact"

    def __post_init__(self) -> None:
        _check_convention(self.convention)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def per_concept_vector_flops(base: LMShapes, steering_layer: int,
                             assumptions: PerConceptAssumptions = PerConceptAssumptions()) -> int:
    """FLOPs to train ONE concept's steering vector at block ``steering_layer``: per example a full
    forward plus the backward from the loss down to block ``steering_layer``'s output
    (``convention="nanogpt"``: the plain ``3 × forward`` of the whole LM)."""
    a, T = assumptions, assumptions.tokens
    fwd = base_forward(base, T)
    if a.convention == "nanogpt":
        per_example = 3 * fwd
    else:
        above = base.num_layers - 1 - steering_layer
        bwd = (above * block(base, T, input_grad=True)).backward \
            + lm_head(base, T, input_grad=True).backward
        per_example = fwd + bwd
    return a.n_epochs * a.examples * per_example


@dataclass(frozen=True)
class NewConceptFlops:
    """FLOPs to produce one steering vector for an unseen concept (one base prompt)."""

    hypernet: int         # the hypernetwork over the steering prompt, cross-attention included
    base_prefix: int      # base blocks 0..context_layer over the base prompt (the context)

    @property
    def total(self) -> int:
        return self.hypernet + self.base_prefix


def new_concept_vector_flops(base: LMShapes, arch: HypernetShapes, steering_tokens: int,
                             prompt_tokens: int, context_layer: int) -> NewConceptFlops:
    """One hypernetwork forward. ``base_prefix`` is the part shared with generation: the steered
    generate call runs those blocks over the prompt anyway and the hypernetwork reads them there."""
    hyper = hypernet_cost(base, arch, steering_tokens,
                          prompt_tokens if arch.cross_attention else 0).forward
    prefix = base_forward(base, prompt_tokens, blocks=context_layer + 1, head=False) \
        if arch.cross_attention else 0
    return NewConceptFlops(hyper, prefix)


@dataclass(frozen=True)
class ScalingRow:
    concepts: int
    steps: int
    train_total: int               # FLOPs to train the hypernetwork on this many concepts
    train_per_concept: int         # train_total / concepts
    vector: int                    # one new vector (hypernet forward + shared base prefix)
    amortised_per_concept: int     # (train_total + served · vector) / served
    baseline_per_concept: int      # one per-concept steering vector
    ratio: float                   # amortised / baseline


def flops_per_concept_table(base: LMShapes, arch: HypernetShapes, steering_layer: int,
                            concept_counts: Sequence[int],
                            assumptions: PerConceptAssumptions = PerConceptAssumptions(),
                            batch_size: int = 12, steering_tokens: int = 16,
                            budget_steps: int | None = None,
                            unseen_concepts: int = 0) -> list[ScalingRow]:
    """Training FLOPs per concept as the number of training concepts grows.

    Schedule: ``n_epochs`` over ``examples`` per concept (the paper's 3 epochs; per-concept cost is
    then constant), or a fixed ``budget_steps`` (train until a target loss, as in the paper's
    A.3.2: per-concept cost then falls as 1/concepts). ``amortised_per_concept`` spreads training
    over every concept served, the ``concepts`` trained on plus ``unseen_concepts``, each paying one
    vector (hypernet forward + the base prefix, over one base prompt).
    """
    a = assumptions
    # the trainer's step: cross-attention over the prompt, LM head on the answer tokens
    step = training_step_flops(base, arch, steering_layer, batch_size, a.tokens, steering_tokens,
                               context_tokens=a.prompt_tokens, head_tokens=a.output_tokens,
                               convention=a.convention).total
    vector = new_concept_vector_flops(base, arch, steering_tokens, a.prompt_tokens,
                                      steering_layer).total
    baseline = per_concept_vector_flops(base, steering_layer, a)
    rows = []
    for c in concept_counts:
        if c < 1:
            raise ValueError(f"concept counts must be >= 1, got {c}")
        steps = budget_steps if budget_steps is not None else \
            a.n_epochs * math.ceil(c * a.examples / batch_size)
        total = steps * step
        served = c + unseen_concepts
        amortised = (total + served * vector) // served
        rows.append(ScalingRow(c, steps, total, total // c, vector, amortised, baseline,
                               amortised / baseline))
    return rows


def gemma2_2b_shapes() -> LMShapes:
    """Gemma-2-2B's sizes (transformers' Gemma2Config defaults are the 2B model's)."""
    from transformers import Gemma2Config

    return LMShapes.from_config(Gemma2Config())


def format_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP"
