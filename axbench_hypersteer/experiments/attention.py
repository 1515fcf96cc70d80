"""``attention``: cross-attention maps of the cross-attention variant (paper App. A.7.2, Fig. 9-12).

    python -m axbench_hypersteer.experiments attention --config CONFIG --dump_dir DUMP \\
        --steering_prompt "references to legal terminology" \\
        --base_prompt "Write a poem about rain." --out_dir OUT [--layers 0,5,19] [--heads 0,1]

For one steering prompt s and one base prompt x, every hypernetwork block's cross-attention
probabilities (queries: the hypernetwork's tokens of s; keys: the base model's tokens of the
chat-formatted x, read at the context layer) are drawn as one PNG grid, a row per block and a
column per head, with the tokens as tick labels (queries on the first column, keys on the bottom
row). Defaults: the first concept of the dump's training metadata and the first base prompt of
the config's prompt file; every block when there are at most 8, else 4 evenly spaced blocks
(first and last included). The model is loaded from ``--dump_dir`` (default ``--out_dir``) when
trained there, else trained on ``--data_dir`` into ``--out_dir``.

Writes ``attention.png``, ``attention.safetensors`` (``block_<i>``: [heads, queries, keys]) and
``attention.json`` (prompts and token labels).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..model.tokens import format_prompt
from ..model.config import ConfigError
from ..model.fileio import atomic_write_json, save_tensors
from ..stages.common import add_progress_flags
from ..stages.plots import new_figure, save_figure
from ..stages.data import load_metadata
from ..stages.inference_stage import load_prompts
from ..stages.run_config import canonical_method, load_run_config
from ..stages.common import is_trained
from .common import load_base_for, load_trained, train_or_load

logger = logging.getLogger(__name__)


@dataclass
class AttentionResult:
    maps: list[np.ndarray]          # per block [heads, queries, keys]
    query_tokens: list[str]
    key_tokens: list[str]
    layers: list[int]
    heads: list[int]
    figure: object = None
    paths: dict[str, Path] = field(default_factory=dict)


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Readable per-token labels: the decoded text of each id (spaces shown as ␣, newlines as
    \\n), or the raw token when it decodes to nothing."""
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False)
        if not text.strip():
            text = text.replace(" ", "␣") or tokenizer.convert_ids_to_tokens(int(i))
        labels.append(text.replace("\n", "\\n").replace("$", r"\$"))
    return labels


def default_layers(num_blocks: int, max_rows: int = 8) -> list[int]:
    if num_blocks <= max_rows:
        return list(range(num_blocks))
    return sorted({int(round(x)) for x in np.linspace(0, num_blocks - 1, 4)})


def _parse_ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{name}: expected comma-separated integers, got {text!r}") from None


@torch.no_grad()
def cross_attention(hs, steering_prompt: str, base_prompt: str):
    """(maps per block [H, T, S] as numpy, query token ids, key token ids)."""
    if hs.config.variant != "xattn":
        raise ConfigError(f"attention maps need the cross-attention variant, got "
                          f"{hs.config.variant!r}")
    hyper_ids, _ = hs.encode_hypernet([hs.hypernet_text(steering_prompt)])
    key_ids = hs.tokenizer(format_prompt(hs.tokenizer, base_prompt),
                           add_special_tokens=True)["input_ids"]
    hs.hypernet.record_cross_attention(True)
    try:
        hs.steering_vectors([steering_prompt], [base_prompt])
        maps = hs.hypernet.cross_attention_maps()
    finally:
        hs.hypernet.record_cross_attention(False)
    if any(m is None for m in maps):
        raise RuntimeError("cross-attention maps were not recorded")
    out = [m[0].float().cpu().numpy() for m in maps]  # [H, T, S]
    t, s = out[0].shape[1:]
    if t != hyper_ids.shape[1] or s != len(key_ids):
        raise RuntimeError(f"attention map shape {out[0].shape} does not match the "
                           f"{hyper_ids.shape[1]} query / {len(key_ids)} key tokens")
    return out, hyper_ids[0].tolist(), key_ids


def run_attention(config_path: str | Path, out_dir: str | Path, *,
                  steering_prompt: str | None = None, base_prompt: str | None = None,
                  dump_dir: str | Path | None = None, data_dir: str | Path | None = None,
                  method: str | None = None, layers: Sequence[int] | None = None,
                  heads: Sequence[int] | None = None, base=None,
                  progress: bool = False) -> AttentionResult:
    run = load_run_config(config_path)
    if method is None:
        xattn = [m for m, s in run.methods.items() if s.model.variant == "xattn"]
        method = xattn[0] if xattn else "HyperSteerXAttn"
    method = canonical_method(method)
    out_dir = Path(out_dir)
    dump = Path(dump_dir) if dump_dir is not None else out_dir
    base = load_base_for(run, base)
    if is_trained(dump, method):  # the checkpoint holds its settings: no config entry needed
        hs, _ = load_trained(dump, method, base)
    elif data_dir is not None:
        hs, _ = train_or_load(run, run.method(method), data_dir, out_dir, base, progress)
        dump = out_dir
    else:
        raise ConfigError(f"attention: {method} is not trained in {dump}; give --data_dir to "
                          "train it")
    if steering_prompt is None:
        meta_path = dump / "train" / "metadata.jsonl"
        if not meta_path.exists():
            raise ConfigError("attention: give --steering_prompt (no training metadata found)")
        steering_prompt = load_metadata(meta_path)[0]["concept"]
    if base_prompt is None:
        base_prompt = load_prompts(run.inference.prompts_path)[1][0]
    maps, q_ids, k_ids = cross_attention(hs, steering_prompt, base_prompt)
    n_blocks, n_heads = len(maps), maps[0].shape[0]
    layers = list(layers) if layers else default_layers(n_blocks)
    heads = list(heads) if heads else list(range(n_heads))
    bad = [l for l in layers if not 0 <= l < n_blocks] + [h for h in heads
                                                          if not 0 <= h < n_heads]
    if bad:
        raise ConfigError(f"attention: layers must lie in 0..{n_blocks - 1} and heads in "
                          f"0..{n_heads - 1}; got {bad}")
    q_tokens = token_labels(hs.tokenizer, q_ids)
    k_tokens = token_labels(hs.tokenizer, k_ids)
    figure = attention_figure(maps, q_tokens, k_tokens, layers, heads,
                              f"{method}: \"{steering_prompt}\" × \"{base_prompt}\"")
    paths = {"png": save_figure(figure, out_dir / "attention.png")}
    paths["maps"] = out_dir / "attention.safetensors"
    save_tensors(paths["maps"], {f"block_{i}": torch.from_numpy(m).contiguous()
                                 for i, m in enumerate(maps)})
    paths["json"] = atomic_write_json(out_dir / "attention.json", {
        "method": method, "steering_prompt": steering_prompt, "base_prompt": base_prompt,
        "query_tokens": q_tokens, "key_tokens": k_tokens, "layers": layers, "heads": heads,
        "num_blocks": n_blocks, "num_heads": n_heads})
    return AttentionResult(maps, q_tokens, k_tokens, layers, heads, figure, paths)


def attention_figure(maps: Sequence[np.ndarray], query_tokens: Sequence[str],
                     key_tokens: Sequence[str], layers: Sequence[int], heads: Sequence[int],
                     title: str = ""):
    """Grid of heatmaps, one row per block in ``layers`` and one column per head; queries on y,
    keys on x, shared colour scale 0..max. Returns the Figure (one image per panel)."""
    t, s = len(query_tokens), len(key_tokens)
    cell_w, cell_h = max(2.5, 0.16 * s + 1.0), max(1.6, 0.16 * t + 0.9)
    fig = new_figure(cell_w * len(heads) + 1.5, cell_h * len(layers) + 1.6, dpi=90)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    vmax = max(float(maps[l][h].max()) for l in layers for h in heads) or 1.0
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(maps[layer][head], vmin=0.0, vmax=vmax, cmap="magma",
                              aspect="auto", interpolation="nearest")
            ax.set_title(f"block {layer} · head {head}", fontsize=8)
            if c == 0:
                ax.set_yticks(np.arange(t), labels=list(query_tokens), fontsize=6)
            else:
                ax.set_yticks([])
            if r == len(layers) - 1:
                ax.set_xticks(np.arange(s), labels=list(key_tokens), fontsize=6, rotation=90)
            else:
                ax.set_xticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    if image is not None:
        cax = fig.add_axes((0.945, 0.15, 0.015, 0.7))
        fig.colorbar(image, cax=cax)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axbench_hypersteer.experiments attention",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--dump_dir", default=None, help="dump holding the trained method")
    parser.add_argument("--data_dir", default=None, help="train here if not trained yet")
    parser.add_argument("--method", default=None, help="default: the config's xattn method")
    parser.add_argument("--steering_prompt", default=None)
    parser.add_argument("--base_prompt", default=None)
    parser.add_argument("--layers", default=None, help="comma-separated blocks (default: all "
                        "up to 8, else 4 evenly spaced)")
    parser.add_argument("--heads", default=None, help="comma-separated heads (default: all)")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    result = run_attention(args.config, args.out_dir, steering_prompt=args.steering_prompt,
                           base_prompt=args.base_prompt, dump_dir=args.dump_dir,
                           data_dir=args.data_dir, method=args.method,
                           layers=_parse_ints(args.layers, "layers"),
                           heads=_parse_ints(args.heads, "heads"), progress=args.progress)
    print(f"wrote {result.paths['png']} ({len(result.layers)} blocks × {len(result.heads)} heads, "
          f"{len(result.query_tokens)} query × {len(result.key_tokens)} key tokens)")
    return 0
