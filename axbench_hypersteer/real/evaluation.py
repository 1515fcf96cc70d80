"""Scoring every method of the real experiment on the same prompts.

Two metrics, as the paper reports them:

- **Steering loss** (judge-free; the paper's Figure 3): the loss of each concept's reference
  answers given their prompts, none of which trained the hypernetwork. A concept's examples are
  halved: the first half picks a method's factor where it has a free one (DiffMean), the second
  half is reported. HyperSteer is scored at factor 1, the scale it was trained at.
- **Judge**: greedy generations on generic instructions (AxBench's shared negative pool, unused in
  training) at factor 0 and every factor of the sweep, each method in its own AxBench column
  ``<Method>_steered_generation``, for :func:`~..stages.evaluate.evaluate` to judge.

DiffMean is a supervised per-concept method: on held-out concepts it is fitted on that concept's
own rows (an oracle the hypernetwork does not get), which the report says.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..model.fileio import atomic_write, atomic_write_text, load_tensors, save_tensors
from ..model.steering import Steerer
from ..model.tokens import format_prompt
from ..stages.common import PromptSplit, load_method, record_split
from .baselines import diffmean_vectors, prompted
from .config import VARIANT_METHODS, RealConfig
from .data import RealData, concept_prompts, judged_concepts
from .layer_sweep import negative_sample
from .scoring import answer_losses, generate, shared_prefix

UNSTEERED, PROMPTING, DIFFMEAN = "Unsteered", "PromptSteering", "DiffMean"
LOSS_FILE = "steering_loss_real.jsonl"
DIFFMEAN_FILE = "baselines/diffmean.safetensors"


def diffmean_table(cfg: RealConfig, data: RealData, base, layer: int, dump_dir: Path
                   ) -> dict[int, torch.Tensor]:
    """DiffMean vectors of every concept (cached in the dump)."""
    path = dump_dir / DIFFMEAN_FILE
    if path.exists():
        return {int(k): v for k, v in load_tensors(path).items()}
    positives = {}
    for cid in data.heldin_ids + data.heldout_ids:
        rows = data.fit_rows(cid)
        positives[cid] = (rows["input"].tolist(), rows["output"].tolist())
    vectors = diffmean_vectors(*base, [layer], positives, negative_sample(data),
                               cfg.batch_size, cfg.answer_tokens)[layer]
    save_tensors(path, {str(k): v.contiguous() for k, v in vectors.items()})
    return vectors


def hypersteer_vectors(hs, concepts: list[str], prompts: list[str], batch_size: int
                       ) -> torch.Tensor:
    """[N, d] vectors for (steering prompt, raw base prompt) pairs."""
    hs.hypernet.eval()
    out = [hs.steering_vectors(concepts[i:i + batch_size], prompts[i:i + batch_size])
           for i in range(0, len(concepts), batch_size)]
    return torch.cat(out).float()


def _halves(frame: pd.DataFrame) -> pd.Series:
    """'steering' for each concept's first half of examples, 'steering_test' for the rest."""
    rank = frame.groupby("concept_id").cumcount()
    size = frame.groupby("concept_id")["concept_id"].transform("size")
    return pd.Series(np.where(rank < size // 2, "steering", "steering_test"), index=frame.index)


def run_steering_losses(cfg: RealConfig, data: RealData, base, layer: int, dump_dir: Path,
                        progress: bool = True) -> Path:
    """Per method, concept, factor and half: the mean answer loss (``evaluate/LOSS_FILE``).
    Methods already in the file are not scored again."""
    out = dump_dir / "evaluate" / LOSS_FILE
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {r["method"] for r in records}
    model, tokenizer = base
    steerer = Steerer(model, layer, backend="hook")
    frame = data.eval.reset_index(drop=True)
    split = _halves(frame)
    concept_of = frame["concept_id"].tolist()
    concept_text = [data.concept(c) for c in concept_of]
    answers = frame["output"].tolist()
    inputs = frame["input"].tolist()
    # Unsteered, DiffMean and HyperSteer read the same raw prompts: blocks 0..l run once for all.
    prefix = shared_prefix(steerer, tokenizer, inputs, answers, cfg.answer_tokens)

    def score(method, prompts, vectors=None, factors=(None,), replay=None):
        for factor in factors:
            losses = answer_losses(steerer, tokenizer, prompts, answers, vectors,
                                   None if factor is None else [factor] * len(prompts),
                                   cfg.batch_size, cfg.answer_tokens,
                                   replay)
            per = pd.DataFrame({"concept_id": concept_of, "split": split, "loss": losses})
            for (cid, half), group in per.groupby(["concept_id", "split"]):
                records.append({"concept_id": int(cid), "method": method, "split": half,
                                "factor": 0.0 if factor is None else float(factor),
                                "loss": float(group["loss"].mean())})
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))

    methods = [UNSTEERED, PROMPTING, DIFFMEAN] + [VARIANT_METHODS[v] for v in cfg.variants]
    for method in tqdm([m for m in methods if m not in done], desc="steering loss",
                       unit="method", disable=not progress):
        if method == UNSTEERED:
            score(method, inputs, replay=prefix)
        elif method == PROMPTING:
            score(method, [prompted(x, c) for x, c in zip(inputs, concept_text)])
        elif method == DIFFMEAN:
            table = diffmean_table(cfg, data, base, layer, dump_dir)
            score(method, inputs, torch.stack([table[c] for c in concept_of]),
                  cfg.diffmean_factors, prefix)
        else:
            hs = load_method(dump_dir, method, base)
            score(method, inputs, hypersteer_vectors(hs, concept_text, inputs, cfg.batch_size),
                  (1.0,), prefix)
            del hs
    prefix.close()
    return out


def diffmean_scale(dump_dir: Path) -> dict[int, float]:
    """Per concept, the DiffMean factor with the lowest loss on the selection half: DiffMean's
    factor 1 in the generation sweep (its raw vector has no natural scale)."""
    records = pd.read_json(dump_dir / "evaluate" / LOSS_FILE, lines=True)
    chosen = records[(records["method"] == DIFFMEAN) & (records["split"] == "steering")]
    best = chosen.loc[chosen.groupby("concept_id")["loss"].idxmin()]
    return dict(zip(best["concept_id"].astype(int), best["factor"].astype(float)))


def generation_rows(cfg: RealConfig, data: RealData, tokenizer) -> pd.DataFrame:
    """AxBench's steering_data columns for every (judged concept, prompt, factor)."""
    records = []
    for cid in judged_concepts(data, cfg):
        for input_id, prompt in enumerate(concept_prompts(data, cid, cfg.eval_prompts)):
            formatted = format_prompt(tokenizer, prompt)
            for factor in (0.0, *cfg.factors):
                records.append({"dataset_name": "AxBenchNegatives", "concept_id": cid,
                                "input_concept": data.concept(cid), "input_id": input_id,
                                "factor": float(factor), "original_prompt": prompt,
                                "steered_input": formatted, "input": formatted})
    return pd.DataFrame.from_records(records)


class _Generator:
    """Greedy generations for the rows of :func:`generation_rows`, one list of texts per method,
    in row order."""

    def __init__(self, steerer: Steerer, tokenizer, rows: pd.DataFrame, max_new_tokens: int):
        self.steerer, self.tokenizer, self.rows = steerer, tokenizer, rows
        self.gen = dict(batch_size=16, max_new_tokens=max_new_tokens)
        self.plain: list[str] | None = None  # the unsteered texts, once made

    def once_per_prompt(self, texts_for) -> list[str]:
        """Generate once per (concept, prompt) and repeat the text on every factor row: methods
        without a vector do not depend on the factor."""
        rows = self.rows
        firsts = rows.drop_duplicates(["concept_id", "input_id"])
        texts = generate(self.steerer, self.tokenizer, texts_for(firsts), **self.gen)
        lookup = dict(zip(zip(firsts["concept_id"], firsts["input_id"]), texts))
        return [lookup[k] for k in zip(rows["concept_id"], rows["input_id"])]

    def unsteered(self) -> list[str]:
        return self.once_per_prompt(lambda firsts: firsts["original_prompt"].tolist())

    def prompting(self) -> list[str]:
        return self.once_per_prompt(lambda firsts: [
            prompted(p, c) for p, c in zip(firsts["original_prompt"], firsts["input_concept"])])

    def with_vectors(self, vectors: torch.Tensor) -> list[str]:
        """``vectors`` [rows, d] at each row's factor; factor-0 rows are the unsteered text
        (factor 0 adds exactly nothing)."""
        texts = list(self.plain)
        idx = np.flatnonzero((self.rows["factor"] > 0).to_numpy())
        prompts = self.rows["original_prompt"].tolist()
        made = generate(self.steerer, self.tokenizer, [prompts[i] for i in idx], vectors[idx],
                        self.rows["factor"].to_numpy()[idx].tolist(), **self.gen)
        for i, text in zip(idx, made):
            texts[i] = text
        return texts


def run_generations(cfg: RealConfig, data: RealData, base, layer: int, dump_dir: Path,
                    progress: bool = True) -> Path:
    """Every method's generations in ``inference/steering_data.parquet``; each finished method
    is saved in ``inference/parts/`` so that a killed run resumes with the missing ones."""
    out = dump_dir / "inference" / "steering_data.parquet"
    if out.exists():
        return out
    model, tokenizer = base
    rows = generation_rows(cfg, data, tokenizer)
    record_split(dump_dir, PromptSplit(cfg.eval_prompts, 0.5))
    parts = dump_dir / "inference" / "parts" / "real"
    gen = _Generator(Steerer(model, layer, backend="hook"), tokenizer, rows, cfg.max_new_tokens)

    def cached(name, make):
        path = parts / f"{name}.json"
        if not path.exists():
            atomic_write_text(path, json.dumps(make()))
        return json.loads(path.read_text())

    gen.plain = cached(UNSTEERED, gen.unsteered)

    def diffmean_texts():
        table = diffmean_table(cfg, data, base, layer, dump_dir)
        scale = diffmean_scale(dump_dir)
        return gen.with_vectors(torch.stack([table[c] * scale[c] for c in rows["concept_id"]]))

    def hypersteer_texts(method):
        hs = load_method(dump_dir, method, base)
        return gen.with_vectors(hypersteer_vectors(hs, rows["input_concept"].tolist(),
                                                   rows["original_prompt"].tolist(),
                                                   cfg.batch_size))

    columns = {PROMPTING: gen.prompting, DIFFMEAN: diffmean_texts}
    columns.update({VARIANT_METHODS[v]: partial(hypersteer_texts, VARIANT_METHODS[v])
                    for v in cfg.variants})
    for method, make in tqdm(columns.items(), desc="generation", unit="method",
                             disable=not progress):
        rows[f"{method}_steered_generation"] = cached(method, make)
    atomic_write(out, lambda tmp: rows.to_parquet(tmp, index=False))
    return out
