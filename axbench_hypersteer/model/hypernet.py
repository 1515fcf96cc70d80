"""The HyperSteer hypernetwork: a truncated copy of the base LM that reads a steering prompt and
emits one steering vector per row.

All three variants share this module. They differ only in what they feed it:
  * no-context: the steering prompt;
  * in-context: the steering prompt and the base prompt as one text;
  * cross-attention: the steering prompt, while every block also cross-attends to the base model's
    residual stream over the base prompt (``context``).

The decoder blocks are the base model's own HF classes, run by the base model's own ``forward``
(so masks, RoPE and caches follow whatever transformers version is installed). Cross-attention is
spliced in with hooks, between self-attention and the MLP as in the official design (AxBench fork,
commit c01a22a): after the self-attention residual add,
``h <- h + PostNorm(CrossAttn(PreNorm(h), context))`` with the raw base residual as ``context``.
The readout is a linear map of the last token's raw residual (no final norm), as in the official
hypernetwork. docs/fidelity.md lists what still differs and what each difference was measured to do.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn
import torch.nn.functional as F

from .config import ConfigError, HyperSteerConfig
from .tokens import position_ids

# Raised when saved weights stop meaning what they meant (recorded in every checkpoint's config).
# 2: issue 17, the official block: raw-residual readout, post-cross-attention norm, raw context.
ARCHITECTURE_VERSION = 2


def check_architecture(state_keys: Iterable[str], where: str) -> None:
    """Weights saved before ARCHITECTURE_VERSION 2 have a final norm before the readout and a
    context norm in each cross-attention, and no post-cross-attention norm: loading them would
    either fail deep in ``load_state_dict`` or silently compute other vectors. Say so instead."""
    legacy = [k for k in state_keys if k == "body.norm.weight" or ".context_norm." in k]
    if legacy:
        raise ConfigError(
            f"{where}: saved by hypernetwork architecture 1 (final norm before the readout, "
            f"normalised cross-attention context; key {legacy[0]!r}); architecture "
            f"{ARCHITECTURE_VERSION} follows the official HyperSteer block and cannot reuse "
            "these weights: train the hypernetwork again")


class RMSNorm(nn.Module):
    """Plain RMSNorm (weight starts at 1). Kept separate from the base model's norm classes so the
    cross-attention does not inherit architecture quirks such as Gemma's ``1 + weight``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: bf16 sums of squares over thousands of dims lose the scale.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class QueryRotary(nn.Module):
    """RoPE for the cross-attention queries alone (the official block rotates its queries by the
    hypernetwork token positions and leaves the base keys unrotated)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """q [B, H, T, hd], position_ids [B, T] -> q rotated, same shape/dtype."""
        freqs = position_ids[:, :, None].float() * self.inv_freq.float()[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, hd]
        q32 = q.float()
        return (q32 * emb.cos() + rotate_half(q32) * emb.sin()).to(q.dtype)


class CrossAttention(nn.Module):
    """Queries from the hypernetwork stream, keys/values from the base model's residual stream.

    Follows the official HyperSteer block (AxBench fork, c01a22a): the query side is
    RMS-normalised, the keys/values read the RAW base residual, queries get RoPE at the
    hypernetwork positions, attention logits are soft-capped as in the base model's own attention
    (Gemma-2), and the output is RMS-normalised before it joins the residual. Normalising the
    output (not the context) is what lets this module move the hypernetwork residual at the
    residual's own scale from the first step: see docs/fidelity.md.
    """

    def __init__(self, hidden_size: int, context_size: int, num_heads: int,
                 initializer_range: float = 0.02, eps: float = 1e-6,
                 softcap: float | None = None, rope_theta: float | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"cross_attention_heads={num_heads} does not divide {hidden_size}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.softcap = softcap
        self.rotary = QueryRotary(self.head_dim, rope_theta) if rope_theta else None
        self.query_norm = RMSNorm(hidden_size, eps)
        self.post_norm = RMSNorm(hidden_size, eps)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(context_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(context_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.normal_(proj.weight, std=initializer_range)
        self.last_attention: torch.Tensor | None = None  # [B, H, T, S] when record_attention
        self.record_attention = False

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, T, d], context [B, S, d_ctx], context_mask [B, S] bool,
        position_ids [B, T] (queries' RoPE positions) -> [B, T, d]."""
        bsz, q_len, _ = hidden.shape
        k_len = context.shape[1]
        x = self.query_norm(hidden)
        ctx = context.to(hidden.dtype)
        q = self.q_proj(x).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(ctx).view(bsz, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(ctx).view(bsz, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        if self.rotary is not None and position_ids is not None:
            q = self.rotary(q, position_ids)
        mask = context_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, S]
        if self.record_attention or self.softcap:
            scores = (q @ k.transpose(-1, -2)).float() / self.head_dim**0.5  # [B, H, T, S]
            if self.softcap:
                scores = torch.tanh(scores / self.softcap) * self.softcap
            probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(q.dtype)
            if self.record_attention:
                self.last_attention = probs.detach()
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(bsz, q_len, -1)  # [B, T, d]
        return self.post_norm(self.o_proj(out))


def _rope_theta(base_config: Any) -> float:
    """RoPE base of the base model (transformers 5 moved it into ``rope_parameters``)."""
    theta = getattr(base_config, "rope_theta", None)
    if theta is None:
        theta = (getattr(base_config, "rope_parameters", None) or {}).get("rope_theta")
    return float(theta or 10000.0)


class _CrossAttentionSite:
    """Splices one CrossAttention into one HF decoder layer, after its self-attention residual add.

    A forward pre-hook on the layer's ``input_layernorm`` remembers the block input (the residual
    before self-attention). A forward hook on the module whose output is added to that residual
    (Gemma-2's ``post_attention_layernorm``, Llama-style ``self_attn``) then returns
    ``out + xattn(residual + out)``, so the layer computes
    ``h_mid = residual + out;  h_mid <- h_mid + xattn(h_mid);  h = h_mid + MLP(h_mid)``.

    Both hooks sit on submodules, i.e. inside the layer's ``forward``: transformers 5 checkpoints
    ``forward`` rather than ``__call__``, so a hook on the layer itself would not re-run when
    gradient checkpointing recomputes the block, and the recompute would add the original
    (not the detached, recomputed) block input, backpropagating twice through the block before.
    """

    def __init__(self, layer: nn.Module, xattn: CrossAttention, owner: "HyperNetwork"):
        self.xattn = xattn
        self.owner = owner
        self.block_input: torch.Tensor | None = None
        if not hasattr(layer, "input_layernorm"):
            raise ValueError(f"{type(layer).__name__} has no input_layernorm: cannot read the "
                             "block input to place cross-attention in this architecture")
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma-2/3 sandwich norms
            site, self.tuple_out = layer.post_attention_layernorm, False
        elif hasattr(layer, "self_attn"):  # Llama, Mistral, Qwen2, ...
            site, self.tuple_out = layer.self_attn, True
        else:
            raise ValueError(
                f"{type(layer).__name__} has neither post_attention_layernorm+pre_feedforward_"
                "layernorm nor self_attn: cannot place cross-attention in this architecture"
            )
        layer.input_layernorm.register_forward_pre_hook(self._remember_input, with_kwargs=True)
        site.register_forward_hook(self._add_cross_attention)

    def _remember_input(self, module, args, kwargs):
        self.block_input = args[0] if args else next(iter(kwargs.values()))

    def _add_cross_attention(self, module, args, output):
        context = self.owner._context
        if context is None:  # no-context / in-context: the layer runs unchanged
            return None
        out = output[0] if self.tuple_out else output
        h_mid = self.block_input + out
        out = out + self.xattn(h_mid, *context)
        return (out,) + tuple(output[1:]) if self.tuple_out else out


def _pretrained_body(base_inner: nn.Module, hyper_config: Any, num_blocks: int,
                     dtype: torch.dtype) -> nn.Module:
    """The base model's embeddings, first ``num_blocks`` blocks and final norm, copied once in
    ``dtype``. The module is built on the meta device and the copies are assigned to it, so a
    9B-width body is never held twice (a random init, then the pretrained weights loaded over it,
    then a dtype conversion)."""
    device = torch.empty(0).device  # where the module would have been built
    with torch.device("meta"):
        body = type(base_inner)(hyper_config)
    state = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
        for k, v in base_inner.state_dict().items()
        if not k.startswith("layers.") or int(k.split(".")[1]) < num_blocks
    }
    body.load_state_dict(state, strict=True, assign=True)
    # What no state dict holds (RoPE's inv_freq, a non-persistent buffer, and its copy kept as a
    # plain attribute) is still on meta: take it from the same module of the base.
    for name, module in body.named_modules():
        source = base_inner.get_submodule(name)
        for key, buf in module._buffers.items():
            if buf is not None and buf.is_meta:
                module._buffers[key] = source._buffers[key].to(device, copy=True)
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, key, getattr(source, key).to(device, copy=True))
    left = [n for n, t in [*body.named_parameters(), *body.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"pretrained init left {left[:3]} unset: the base model's state dict "
                         "does not cover its own architecture")
    return body


class HyperNetwork(nn.Module):
    """Steering prompt (+ optional base context) -> steering vector ``[B, d_base]``."""

    def __init__(self, base_model: nn.Module, config: HyperSteerConfig):
        super().__init__()
        base_config = base_model.config
        config.validate_for(base_config)
        self.config = config
        num_blocks = config.resolved_num_blocks(base_config)

        hyper_config = copy.deepcopy(base_config)
        hyper_config.num_hidden_layers = num_blocks
        if getattr(hyper_config, "layer_types", None) is not None:
            hyper_config.layer_types = list(hyper_config.layer_types[:num_blocks])
        hyper_config.use_cache = False
        base_inner = base_model.base_model  # e.g. Gemma2Model: embeddings, layers, final norm
        # Seeded from config.seed on a forked RNG: the same config gives the same weights, and
        # the caller's global RNG stream (data order, dropout) is left exactly as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.init == "pretrained":
                self.body = _pretrained_body(base_inner, hyper_config, num_blocks,
                                             getattr(torch, config.dtype))
            else:
                self.body = type(base_inner)(hyper_config)

            # The readout reads the raw residual of the last token, as the official
            # hypernetwork does (its final norm is never applied): the normalised state is
            # several times smaller, so the vectors would start smaller and Adam would grow
            # them as many times slower.
            self.body.norm = nn.Identity()

            width = hyper_config.hidden_size
            init_range = getattr(base_config, "initializer_range", 0.02)
            self.cross_attentions = nn.ModuleList()
            self._sites: list[_CrossAttentionSite] = []
            if config.variant == "xattn":
                eps = getattr(base_config, "rms_norm_eps", 1e-6)
                softcap = getattr(base_config, "attn_logit_softcapping", None)
                for layer in self.body.layers:
                    xattn = CrossAttention(width, base_config.hidden_size,
                                           config.cross_attention_heads, init_range, eps,
                                           softcap=softcap, rope_theta=_rope_theta(base_config))
                    self.cross_attentions.append(xattn)
                    self._sites.append(_CrossAttentionSite(layer, xattn, self))
            self.readout = nn.Linear(width, base_config.hidden_size, bias=True)
            nn.init.normal_(self.readout.weight, std=init_range)
            nn.init.zeros_(self.readout.bias)
        self._context: tuple[torch.Tensor, ...] | None = None  # (context, mask, query positions)
        self.to(getattr(torch, config.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Steering vectors for a batch.

        input_ids, attention_mask: [B, S] hypernetwork tokens (any padding side).
        context: [B, T, d_base] base residual stream; context_mask: [B, T] bool, True on the base
        prompt positions the cross-attention may read. Required by (and only used by) xattn.
        Returns [B, d_base].
        """
        if self.config.variant == "xattn":
            if context is None or context_mask is None:
                raise ValueError("the cross-attention variant needs context and context_mask")
            if not bool(context_mask.any(-1).all()):
                raise ValueError("context_mask: every row needs at least one base prompt token")
        # Positions from the mask, so left-padded rows see the same RoPE phases as unpadded ones.
        positions = position_ids(attention_mask)
        if self.config.variant == "xattn":
            self._context = (context, context_mask.to(torch.bool), positions)
        restore = self._bind_context_for_recompute()
        try:
            hidden = self.body(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=positions, use_cache=False,
            ).last_hidden_state  # [B, S, d], the raw residual (body.norm is the identity)
        finally:
            self._context = None
            for module, ckpt in restore:
                module._gradient_checkpointing_func = ckpt
        return self.readout(self._pool(hidden, attention_mask))

    def freeze_token_embeddings(self) -> None:
        """Stop training the token embedding table (``TrainConfig.freeze_embeddings``)."""
        self.body.get_input_embeddings().weight.requires_grad_(False)

    def enable_gradient_checkpointing(self, use_reentrant: bool = False) -> None:
        """Checkpoint the hypernetwork's blocks (recomputed in backward, cross-attention included).

        transformers 5 renamed ``gradient_checkpointing_enable`` to
        ``activation_checkpointing_enable`` (the old name warns, and goes in v6); 4.x has only the
        old name. Same arguments to ``torch.utils.checkpoint`` either way."""
        kwargs = {"use_reentrant": use_reentrant}
        enable = getattr(self.body, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.body.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _bind_context_for_recompute(self) -> list[tuple[nn.Module, Any]]:
        """Gradient checkpointing re-runs the blocks during backward, after ``forward`` has
        cleared ``_context``: the re-run would skip the cross-attention (torch then fails with a
        saved-tensor count mismatch). Wrap each checkpointing function so its re-run sees the
        context of its own forward. Returns (module, original function) pairs to restore."""
        context = self._context
        if context is None:
            return []
        patched = []
        for module in self.body.modules():
            ckpt = module.__dict__.get("_gradient_checkpointing_func")
            if ckpt is None or not getattr(module, "gradient_checkpointing", False):
                continue

            def bound(fn, *args, _ckpt=ckpt, **kwargs):
                def run(*a, **k):
                    previous, self._context = self._context, context
                    try:
                        return fn(*a, **k)
                    finally:
                        self._context = previous
                return _ckpt(run, *args, **kwargs)

            module._gradient_checkpointing_func = bound
            patched.append((module, ckpt))
        return patched

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, S, d] -> [B, d]: the last non-pad token, or the masked mean."""
        mask = attention_mask.to(torch.bool)
        if self.config.readout == "mean":
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, -1).max(-1).values  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def cross_attention_maps(self) -> list[torch.Tensor | None]:
        """Attention probabilities [B, H, T, S] of each block from the last forward (when recorded)."""
        return [x.last_attention for x in self.cross_attentions]

    def record_cross_attention(self, enabled: bool = True) -> None:
        for x in self.cross_attentions:
            x.record_attention = enabled
            x.last_attention = None
