"""A tiny random Gemma-2 and a locally trained tokenizer: the model of tests and of the demo.

Nothing here downloads. The tokenizer is a byte-level BPE trained in about a second on text that
every Python install carries (the language reference in ``pydoc_data`` plus stdlib docstrings),
wrapped with Gemma's special tokens and chat template so AxBench's chat-template code paths run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import torch

PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN = (
    "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"
)
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN]  # ids 0..5, Gemma's order

# Gemma-2's chat template, reduced to what AxBench uses (user/model turns, generation prompt).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def _stdlib_corpus(max_chars: int = 1_500_000) -> list[str]:
    """English-ish text present on every machine: the language reference and stdlib docstrings."""
    from pydoc_data.topics import topics

    texts = list(topics.values())
    total = sum(map(len, texts))
    stdlib = Path(sys.modules["ast"].__file__).parent
    for path in sorted(stdlib.glob("*.py")):
        if total >= max_chars:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
                    total += len(doc)
    return texts


def build_tiny_tokenizer(vocab_size: int = 2048, extra_texts: list[str] | None = None):
    """Train a byte-level BPE tokenizer with Gemma's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_stdlib_corpus() + list(extra_texts or []), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[START_OF_TURN, END_OF_TURN],
        padding_side="left",
        # Without this, transformers 4.x returns token_type_ids and generate() rejects them.
        model_input_names=["input_ids", "attention_mask"],
    )
    hf.chat_template = GEMMA_CHAT_TEMPLATE
    return hf


def tiny_gemma2_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 4,
                       num_heads: int = 4, intermediate_size: int | None = None,
                       initializer_range: float = 0.02):
    """A Gemma-2 config small enough for CPU tests, with eager attention (soft-capping).

    ``initializer_range`` is the std of the random weights; the default (Gemma's 0.02) gives
    near-uniform next-token logits at hidden size 64, a larger one (e.g. 0.2) gives a random model
    whose logits a steering vector can move far enough for a training loss to fall visibly."""
    from transformers import Gemma2Config

    head_dim = hidden_size // num_heads
    cfg = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=32,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=initializer_range,
    )
    cfg._attn_implementation = "eager"
    return cfg


def build_tiny_gemma2(tokenizer, hidden_size: int = 64, num_layers: int = 4, num_heads: int = 4,
                      seed: int = 0, intermediate_size: int | None = None,
                      initializer_range: float = 0.02):
    """A randomly initialised Gemma-2 causal LM sized to ``tokenizer`` (fp32, eval mode)."""
    from transformers import Gemma2ForCausalLM

    cfg = tiny_gemma2_config(len(tokenizer), hidden_size, num_layers, num_heads, intermediate_size,
                             initializer_range)
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def redraw_matrices_(model, std: float, seed: int = 0):
    """Redraw every >=2-D weight of ``model`` at ``std`` (in place; returns it).

    Unlike a larger ``initializer_range`` this leaves the config at Gemma's 0.02, which the
    hypernetwork's new layers (readout, cross-attention) are initialised with. At std 0.2 a random
    tiny model's logits move visibly with one steering vector: the setup of the learning-speed
    test and of benchmarks/fidelity_vs_official.py (issue 17)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std)
    return model


def save_tiny(model, tokenizer, out_dir: str | Path) -> Path:
    """Write model and tokenizer where ``from_pretrained`` (and AxBench) can load them."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    try:  # transformers >= 4.5x writes chat_template.jinja, which 4.45 does not read
        tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    except TypeError:
        tokenizer.save_pretrained(out_dir)
    return out_dir
