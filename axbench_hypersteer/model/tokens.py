"""Text to token tensors, and the small tensor conventions every caller must share.

Steering is only reproducible if training, the factor sweep, AxBench's ``predict_steer``, the
server and the benchmarks all build the same tokens: the same chat formatting, the same padding
side, the same position ids for padded rows. Each of those is written once, here.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

IGNORE_INDEX = -100  # torch cross-entropy's default ignore_index: label of an unscored token


def format_prompt(tokenizer, instruction: str) -> str:
    """The base model's chat template around one user turn, ending with the generation prompt.

    The leading BOS text is removed because the tokenizer adds BOS itself when tokenising
    (AxBench's convention); keeping it would give two BOS tokens. A tokenizer without a chat
    template (a base LM) gets the instruction unchanged, as in AxBench.
    """
    return format_chat(tokenizer, [{"role": "user", "content": instruction}])


def format_chat(tokenizer, messages: Sequence[dict]) -> str:
    """:func:`format_prompt` for a whole conversation (the server's ``messages``). Without a
    chat template the turns' contents are joined by newlines. The template's own checks (roles
    must alternate, no system turn for Gemma) raise whatever the template raises."""
    if not getattr(tokenizer, "chat_template", None):
        return "\n".join(m["content"] for m in messages)
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] from a mask [B, T], so a left-padded row sees the RoPE phases of its
    unpadded self (pad positions get 0; they are masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def encode_left(tokenizer, texts: Sequence[str], device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [B, T], LEFT padded (generation appends on the right),
    special tokens added. The tokenizer's own ``padding_side`` is restored afterwards: it is
    shared with code that pads on the right."""
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=True)
    finally:
        tokenizer.padding_side = old
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ``(ids, mask)`` [B, max_len], left padded with ``pad_id``."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq):] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states of a decoder layer's output: a tuple on transformers 4.x, a Tensor on
    5.x."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced, in the same form (tuple or Tensor)."""
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
