"""``geometry``: structure of generated steering vectors (paper App. A.7.1, Fig. 4-6).

    python -m axbench_hypersteer.experiments geometry --config CONFIG --out_dir OUT \\
        --dump HyperSteerXAttn=DUMP_A --dump HyperSteerNoContext=DUMP_B \\
        --concepts concept10/metadata.jsonl --prompts_per_concept 250
    python -m axbench_hypersteer.experiments geometry --config CONFIG --data_dir D --out_dir OUT

One steering vector per (concept, base prompt) pair, for each method (default: the config's
cross-attention and no-context methods): concepts from ``--concepts`` (a metadata.jsonl; default
the data's), base prompts from the config's ``hypersteer.prompts_path`` (AlpacaEval; default the
built-in demo prompts), ``--prompts_per_concept`` of them per concept, seeded. A method is loaded
from its ``--dump`` (or ``--out_dir``) when trained there, else trained on ``--data_dir`` into
``--out_dir``.

Writes ``pca.png`` and ``tsne.png`` (one panel per method, points coloured by concept),
``cosine.png`` (pairwise cosine similarity averaged within / between concepts, one heatmap per
method, shared colour scale) and ``geometry.{csv,md}`` (mean within-concept vs between-concept
cosine per method); the vectors are kept in ``vectors/<method>.safetensors`` + ``vectors/index.csv``.
The no-context variant ignores the base prompt, so its vectors of one concept coincide (a single
point per concept; within-concept cosine 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..model.config import ConfigError
from ..model.errors import DataError
from ..model.fileio import save_tensors
from ..stages.common import add_progress_flags
from ..stages.plots import new_figure, save_figure
from ..stages.data import generate_dir, load_metadata
from ..stages.inference_stage import load_prompts
from ..stages.run_config import RunConfig, canonical_method, load_run_config
from ..stages.common import is_trained
from .common import (autocast_for, concept_colors, load_base_for, load_trained,
                     short, train_or_load, write_table)
from .projection import block_means, cosine_matrix, pca_2d, tsne_2d

logger = logging.getLogger(__name__)


@dataclass
class GeometryResult:
    vectors: dict[str, np.ndarray]          # method -> [n, d]
    index: pd.DataFrame                      # concept_id, concept, prompt (row order of vectors)
    table: pd.DataFrame                      # per method: within / between cosine, norms
    cosine: dict[str, np.ndarray]            # method -> [k, k] block-averaged cosine
    figures: dict[str, object] = field(default_factory=dict)   # pca / tsne / cosine
    paths: dict[str, Path] = field(default_factory=dict)


def default_methods(run) -> list[str]:
    preferred = [m for m in ("HyperSteerXAttn", "HyperSteerNoContext") if m in run.methods]
    return preferred or list(run.methods)


def _concepts(concepts_path, data_dir, dumps: Sequence[Path], max_concepts: int | None):
    if concepts_path is not None:
        meta = load_metadata(concepts_path)
    elif data_dir is not None:
        meta = load_metadata(generate_dir(data_dir) / "metadata.jsonl")
    else:
        found = [d / "train" / "metadata.jsonl" for d in dumps
                 if (d / "train" / "metadata.jsonl").exists()]
        if not found:
            raise ConfigError("geometry: no concepts: give --concepts or --data_dir")
        meta = load_metadata(found[0])
    return meta[:max_concepts] if max_concepts else meta


def pairs(concepts: list[dict], prompts: list[str], per_concept: int, seed: int) -> pd.DataFrame:
    """(concept, prompt) pairs: ``per_concept`` distinct prompts per concept, seeded by concept."""
    k = min(per_concept, len(prompts))
    if k < per_concept:
        logger.warning("only %d base prompts available; using %d per concept", len(prompts), k)
    rows = []
    for c in concepts:
        chosen = random.Random(seed * 1_000_003 + int(c["concept_id"])).sample(prompts, k)
        rows += [{"concept_id": int(c["concept_id"]), "concept": c["concept"], "prompt": p}
                 for p in chosen]
    return pd.DataFrame(rows)


@torch.no_grad()
def steering_vectors(hs, index: pd.DataFrame, batch_size: int = 32, autocast=None) -> np.ndarray:
    out = []
    for start in range(0, len(index), batch_size):
        chunk = index.iloc[start:start + batch_size]
        base_prompts = None if hs.config.variant == "nocontext" else list(chunk["prompt"])
        with autocast if autocast is not None else contextlib.nullcontext():
            vecs = hs.steering_vectors(list(chunk["concept"]), base_prompts)
        out.append(vecs.float().cpu().numpy())
    return np.concatenate(out, 0)


def run_geometry(config_path: str | Path, out_dir: str | Path, *,
                 data_dir: str | Path | None = None,
                 dumps: Mapping[str, str | Path] | None = None,
                 methods: Sequence[str] | None = None, concepts_path: str | Path | None = None,
                 max_concepts: int | None = 10, prompts_per_concept: int = 250,
                 perplexity: float = 30.0, tsne_iters: int = 1000, seed: int | None = None,
                 batch_size: int = 32, base=None, progress: bool = False) -> GeometryResult:
    run = load_run_config(config_path)
    dumps = {canonical_method(k): Path(v) for k, v in (dumps or {}).items()}
    # A method trained in a dump needs no entry in the config (its checkpoint holds its settings).
    if methods:
        methods = list(dict.fromkeys(canonical_method(m) for m in methods))
    else:
        methods = list(dumps) or default_methods(run)
    seed = run.seed if seed is None else seed
    out_dir = Path(out_dir)
    base = load_base_for(run, base)
    autocast = autocast_for(run, base[0])
    concepts = _concepts(concepts_path, data_dir, list(dumps.values()) + [out_dir], max_concepts)
    if len(concepts) < 2:
        raise DataError("geometry: need at least two concepts")
    _, prompts = load_prompts(run.inference.prompts_path)
    index = pairs(concepts, prompts, prompts_per_concept, seed)
    if len(index) < 3:
        raise DataError(f"geometry: {len(index)} (concept, prompt) pairs; t-SNE needs at least 3 "
                        "(raise --prompts_per_concept or --max_concepts)")

    vectors: dict[str, np.ndarray] = {}
    for method in methods:
        hs = _trained_method(run, method, dumps.get(method, out_dir), out_dir, data_dir, base,
                             progress)
        vectors[method] = steering_vectors(hs, index, batch_size, autocast)
        save_tensors(out_dir / "vectors" / f"{method}.safetensors",
                     {"vectors": torch.from_numpy(vectors[method]).contiguous()})
        del hs
    (out_dir / "vectors").mkdir(parents=True, exist_ok=True)
    index.to_csv(out_dir / "vectors" / "index.csv", index=False)

    labels = index["concept_id"].to_numpy()
    table, cosine, pca, tsne = _vector_geometry(vectors, labels, perplexity, tsne_iters, seed)
    figures, paths = _write_geometry(out_dir, run, index, table, cosine, pca, tsne, perplexity,
                                     seed)
    return GeometryResult(vectors, index, table, cosine, figures, paths)


def _trained_method(run: RunConfig, method: str, dump: Path, out_dir: Path,
                    data_dir: str | Path | None, base, progress: bool):
    """A trained hypernetwork is reused as it is; training one is the fallback, only when data
    was given for it."""
    if is_trained(dump, method):
        hs, _ = load_trained(dump, method, base)
    elif data_dir is not None:
        hs, _ = train_or_load(run, run.method(method), data_dir, out_dir, base, progress)
    else:
        raise ConfigError(f"geometry: {method} is not trained in {dump} and no --data_dir "
                          "was given to train it")
    return hs


def _vector_geometry(vectors: Mapping[str, np.ndarray], labels: np.ndarray, perplexity: float,
                     tsne_iters: int, seed: int) -> tuple[pd.DataFrame, dict, dict, dict]:
    """(summary table, per-concept cosine blocks, PCA points, t-SNE points), per method."""
    rows, cosine, pca, tsne = [], {}, {}, {}
    for method, vecs in vectors.items():
        sim = cosine_matrix(vecs)
        blocks, order = block_means(sim, labels)
        cosine[method] = blocks
        diag = np.diag(blocks)
        off = blocks[~np.eye(len(order), dtype=bool)]
        pca[method], ratio = pca_2d(vecs)
        tsne[method] = tsne_2d(vecs, perplexity, tsne_iters, seed)
        rows.append({"method": method, "n_vectors": len(vecs), "n_concepts": len(order),
                     "within_concept_cosine": float(np.nanmean(diag)),
                     "between_concept_cosine": float(np.nanmean(off)),
                     "gap": float(np.nanmean(diag) - np.nanmean(off)),
                     "mean_norm": float(np.linalg.norm(vecs, axis=1).mean()),
                     "pca_explained_variance": float(ratio.sum())})
    return pd.DataFrame(rows), cosine, pca, tsne


def _write_geometry(out_dir: Path, run: RunConfig, index: pd.DataFrame, table: pd.DataFrame,
                    cosine: dict, pca: dict, tsne: dict, perplexity: float,
                    seed: int) -> tuple[dict, dict[str, Path]]:
    """The three figures and the table, with the notes a reader needs to interpret them."""
    labels = index["concept_id"].to_numpy()
    names = dict(zip(index["concept_id"], index["concept"]))
    order = list(dict.fromkeys(labels.tolist()))
    concept_names = [names[c] for c in order]
    figures = {
        "pca": projection_figure(pca, labels, names, "PCA (2 components)"),
        "tsne": projection_figure(tsne, labels, names, f"t-SNE (perplexity "
                                  f"{min(perplexity, max((len(index) - 1) / 3, 1)):.3g})"),
        "cosine": cosine_figure(cosine, concept_names),
    }
    paths = {name: save_figure(fig, out_dir / f"{name}.png") for name, fig in figures.items()}
    notes = [f"{len(order)} concepts × {len(index) // len(order)} base prompts per concept "
             f"(seed {seed}); prompts: `{run.inference.prompts_path or 'built-in demo prompts'}`.",
             "within = mean cosine over pairs of distinct vectors of the same concept; between = "
             "over pairs of different concepts (block averages of the pairwise matrix)."]
    paths["csv"], paths["md"] = write_table(
        table, out_dir, "geometry", "Geometry of HyperSteer steering vectors", notes,
        extra_md=["", "![PCA](pca.png)", "", "![t-SNE](tsne.png)", "", "![cosine](cosine.png)"])
    return figures, paths


def projection_figure(points: Mapping[str, np.ndarray], labels: np.ndarray,
                      names: Mapping[int, str], title: str):
    """One panel per method; one scatter (PathCollection) per concept. Returns the Figure."""
    methods = list(points)
    order = list(dict.fromkeys(np.asarray(labels).tolist()))
    colors = concept_colors(len(order))
    fig = new_figure(5.0 * len(methods) + 2.5, 4.8)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        xy = points[method]
        for color, cid in zip(colors, order):
            sel = np.asarray(labels) == cid
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=color, alpha=0.8,
                       label=short(names[cid], 32))
        ax.set_title(f"{method}: {title}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, legend_labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.0 * len(methods) + 2.5), 1))
    return fig


def cosine_figure(blocks: Mapping[str, np.ndarray], concept_names: Sequence[str]):
    """One heatmap per method (shared colour scale): concept × concept mean cosine similarity,
    the diagonal over distinct vectors of one concept. Returns the Figure."""
    methods = list(blocks)
    k = len(concept_names)
    finite = np.concatenate([b[np.isfinite(b)] for b in blocks.values()] or [np.zeros(1)])
    vmin, vmax = float(min(finite.min(), 0.0)), float(max(finite.max(), 1e-6))
    fig = new_figure(4.8 * len(methods) + 1.2, 4.6 + 0.05 * k)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    image = None
    for ax, method in zip(axes, methods):
        image = ax.imshow(blocks[method], vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(f"{method}\nmean pairwise cosine", fontsize=10)
        ticks = np.arange(k)
        ax.set_xticks(ticks, labels=[str(i) for i in range(k)], fontsize=7)
        ax.set_yticks(ticks, labels=[f"{i}: {short(n, 22)}" for i, n in
                                     enumerate(concept_names)], fontsize=6)
        ax.set_xlabel("concept")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    return fig


def _parse_dumps(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--dump {item!r}: expected METHOD=DUMP_DIR")
        method, path = item.split("=", 1)
        out[canonical_method(method.strip())] = path.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axbench_hypersteer.experiments geometry",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--data_dir", default=None,
                        help="AxBench data: concepts (default) and training of untrained methods")
    parser.add_argument("--dump", action="append", default=None,
                        help="METHOD=DUMP_DIR holding a trained METHOD (repeatable)")
    parser.add_argument("--method", action="append", default=None,
                        help="methods to compare (default: xattn and nocontext of the config)")
    parser.add_argument("--concepts", default=None, help="metadata.jsonl of the concepts")
    parser.add_argument("--max_concepts", type=int, default=10)
    parser.add_argument("--prompts_per_concept", type=int, default=250)
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--tsne_iters", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=None)
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    result = run_geometry(args.config, args.out_dir, data_dir=args.data_dir,
                          dumps=_parse_dumps(args.dump), methods=args.method,
                          concepts_path=args.concepts, max_concepts=args.max_concepts,
                          prompts_per_concept=args.prompts_per_concept,
                          perplexity=args.perplexity, tsne_iters=args.tsne_iters,
                          seed=args.seed, batch_size=args.batch_size, progress=args.progress)
    print(result.paths["md"].read_text())
    return 0
