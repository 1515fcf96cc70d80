"""The demo's base LM: a tiny Gemma-2 trained on the spot to answer everyday instructions.

A random tiny model never answers the instruction, so every judged generation scored 0 on
instruction relevance and the harmonic mean hid all steering. This one is trained, seeded, in
about a minute of CPU on :func:`demo_data.lm_corpus`, so that at factor 0 it answers in simple
sentences and knows every concept's vocabulary; the demo caches it in its dump.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..model.tokens import format_prompt
from ..model.fileio import atomic_write_json
from ..testing.tiny import build_tiny_gemma2, build_tiny_tokenizer, save_tiny
from .data import lm_corpus, tokenizer_texts

SUMMARY_FILE = "demo_lm_summary.json"


@dataclass(frozen=True)
class DemoLMConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0


def encode_corpus(tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
    """Chat-formatted ``instruction -> answer <eos>`` token ids (BOS included), the layout the
    pipeline's prompts use, so that generation continues from exactly what training saw."""
    texts = [format_prompt(tokenizer, q) + a + tokenizer.eos_token for q, a in pairs]
    return tokenizer(texts, add_special_tokens=True)["input_ids"]


def _batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, :len(seq)] = torch.tensor(seq)
    return ids, labels


def train_demo_lm(config: DemoLMConfig = DemoLMConfig(), progress: bool = True):
    """Returns ``(model, tokenizer, final_loss)``; the same seed gives the same weights."""
    torch.manual_seed(config.seed)
    tokenizer = build_tiny_tokenizer(extra_texts=tokenizer_texts() * 300)
    model = build_tiny_gemma2(tokenizer, hidden_size=config.hidden_size,
                              num_layers=config.num_layers, num_heads=config.num_heads,
                              seed=config.seed)
    seqs = encode_corpus(tokenizer, lm_corpus(config.steps * config.batch_size, config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10 %
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    loss_value, started = float("nan"), time.perf_counter()
    for step in range(config.steps):
        chunk = seqs[step * config.batch_size:(step + 1) * config.batch_size]
        ids, labels = _batch(chunk, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        if progress and (step % 50 == 0 or step == config.steps - 1):
            print(f"[demo] base LM step {step + 1}/{config.steps} loss {loss_value:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval(), tokenizer, loss_value


def ensure_demo_lm(out_dir: str | Path, config: DemoLMConfig = DemoLMConfig(),
                   progress: bool = True) -> Path:
    """Train and save the base LM in ``out_dir`` unless a finished one is already there."""
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    if summary_path.exists() and json.loads(summary_path.read_text()).get("config") == asdict(config):
        return out_dir
    started = time.perf_counter()
    model, tokenizer, loss = train_demo_lm(config, progress)
    save_tiny(model, tokenizer, out_dir)
    atomic_write_json(summary_path, {"config": asdict(config), "final_loss": loss,
                                     "seconds": round(time.perf_counter() - started, 1)})
    return out_dir
