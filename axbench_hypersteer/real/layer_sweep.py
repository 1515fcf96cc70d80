"""Choosing the steering layer by measurement.

The paper steers Gemma-2 at layer 20 (of 26/42); nothing says where a 30-layer 135M model is
steerable, and training a hypernetwork per layer costs a training run each. A per-concept DiffMean
vector costs one forward pass per layer, and its best steering loss says how far a single added
vector at that layer can move the model toward a concept. So each candidate layer is scored by the
held-in concepts' DiffMean steering loss on their evaluation answers (best factor of the grid,
mean over ``sweep_concepts`` concepts), and the lowest wins. Held-out concepts are never read.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model.steering import Steerer
from .baselines import diffmean_vectors
from .config import RealConfig
from .data import RealData
from .scoring import answer_losses, shared_prefix

NEGATIVES = 48  # shared-pool rows for the negative mean (the same rows for every concept)


def sweep_concepts(data: RealData, n: int) -> list[int]:
    step = max(1, len(data.heldin_ids) // max(1, n))
    return data.heldin_ids[::step][:n]


def negative_sample(data: RealData) -> tuple[list[str], list[str]]:
    rows = data.negatives.head(NEGATIVES)
    return rows["input"].tolist(), rows["output"].tolist()


def run_layer_sweep(cfg: RealConfig, data: RealData, base, progress: bool = True) -> dict:
    """``{"chosen_layer", "layers": [{layer, unsteered, diffmean, factor}]}``: mean losses over
    the sweep's concepts, at each layer's best DiffMean factor."""
    model, tokenizer = base
    concepts = sweep_concepts(data, cfg.sweep_concepts)
    positives = {}
    for cid in concepts:
        rows = data.train[data.train["concept_id"] == cid]
        positives[cid] = (rows["input"].tolist(), rows["output"].tolist())
    vectors = diffmean_vectors(model, tokenizer, cfg.candidate_layers, positives,
                               negative_sample(data), cfg.batch_size, cfg.answer_tokens)
    evaluation = data.eval[data.eval["concept_id"].isin(concepts)]
    prompts, answers = evaluation["input"].tolist(), evaluation["output"].tolist()
    ids = evaluation["concept_id"].tolist()
    unsteered = None
    results = []
    for layer in tqdm(cfg.candidate_layers, desc="layer sweep", unit="layer", disable=not progress):
        steerer = Steerer(model, layer, backend="hook")
        prefix = shared_prefix(steerer, tokenizer, prompts, answers, cfg.answer_tokens)
        if unsteered is None:  # the unsteered model does not depend on the layer
            unsteered = float(np.mean(answer_losses(steerer, tokenizer, prompts, answers,
                                                    batch_size=cfg.batch_size,
                                                    answer_tokens=cfg.answer_tokens,
                                                    prefix=prefix)))
        stacked = torch.stack([vectors[layer][cid] for cid in ids])
        by_factor = {}
        for factor in cfg.diffmean_factors:
            losses = answer_losses(steerer, tokenizer, prompts, answers, stacked,
                                   [factor] * len(ids), cfg.batch_size, cfg.answer_tokens,
                                   prefix)
            by_factor[factor] = float(np.mean(losses))
        prefix.close()
        best = min(by_factor, key=by_factor.get)
        results.append({"layer": layer, "unsteered": unsteered, "diffmean": by_factor[best],
                        "factor": best, "by_factor": by_factor,
                        "vector_norm": float(np.mean([vectors[layer][c].norm() for c in concepts]))})
    chosen = min(results, key=lambda r: r["diffmean"])["layer"]
    return {"chosen_layer": chosen, "concepts": concepts, "criterion":
            "lowest mean DiffMean steering loss (best factor) on the sweep concepts' evaluation "
            "answers", "layers": results}
