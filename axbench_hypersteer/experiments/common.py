"""Pieces shared by the experiments: evaluation splits, training/loading runs, the steering loss,
the optional LLM-judge path, tables and figures.

Evaluation protocol (used by ``scaling`` and ``ablations``):

* **held-out concepts** never reach training: either a second AxBench dump (``--heldout_data_dir``,
  e.g. Concept500 or Concept10; concepts of the training data with the same normalised text are
  removed from training) or ``--heldout_concepts K`` concepts drawn (seeded) from the training data.
* **held-in examples** are examples of training concepts held back from training: the concept was
  seen, the (prompt, answer) pair was not (the paper's held-in setting).
* the **steering loss** of an example is the steered base model's mean cross-entropy on its answer
  tokens (labels from :class:`~..model.collate.SteeringCollator`, factor 1.0, the scale the
  hypernetwork is trained at); a set's loss is the mean over concepts of the per-concept mean, with
  the std over concepts. The same examples at factor 0.0 give the unsteered base model's loss.

The training pool (everything that is neither held-out nor held back) is written once, in AxBench's
``generate/`` layout, to ``<out_dir>/splits/pool``; every training run of an experiment reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..model.config import ConfigError, JudgeConfig, TrainConfig
from ..model.errors import DataError
from ..model.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json
from ..model.hypersteer import HyperSteer
from ..stages.data import (NEGATIVE_ID, generate_dir, load_metadata, normalise_concept,
                             read_parquet, train_parquet_files, write_parquet_like)
from ..stages.run_config import MethodSpec, RunConfig
from ..stages.splits import overlapping_concepts, positive_mask
from ..stages.steering_loss import EVAL_COLUMNS, example_losses  # noqa: F401
from ..stages.steering_loss import prompt_fits as _prompt_fits  # noqa: F401
from ..stages.common import (PromptSplit, autocast_for, is_trained,  # noqa: F401
                               load_method, load_stage_base, method_dir)
from ..stages.train_stage import train_method

logger = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JUDGE_MODES = ("none", "api", "offline")


# ------------------------------------------------------------------------------ base model


def load_base_for(run: RunConfig, base=None):
    """``base`` if given, else the run's base model as every stage loads it."""
    return base if base is not None else load_stage_base(run)


# ------------------------------------------------------------------------------ AxBench files


def read_generate(data_dir: str | Path) -> tuple[pd.DataFrame, list[dict], pa.Schema]:
    """Every row of an AxBench dump's training parquet(s), its metadata and the Arrow schema."""
    gen = generate_dir(data_dir)
    files = train_parquet_files(gen)
    frame = pd.concat([read_parquet(p) for p in files], ignore_index=True)
    return frame, load_metadata(gen / "metadata.jsonl"), pq.read_schema(files[0])


def write_generate(out_dir: str | Path, frame: pd.DataFrame, metadata: list[dict],
                   schema: pa.Schema | None = None) -> Path:
    """Write ``out_dir/generate/{train_data.parquet, metadata.jsonl}`` (the source's schema)."""
    gen = Path(out_dir) / "generate"
    write_parquet_like(gen / "train_data.parquet", frame, schema)
    atomic_write_text(gen / "metadata.jsonl", "".join(json.dumps(m) + "\n" for m in metadata))
    return Path(out_dir)


def _eval_frame(rows: pd.DataFrame, concepts: dict[int, str]) -> pd.DataFrame:
    out = pd.DataFrame({"concept_id": rows["concept_id"].astype("int64"),
                        "concept": rows["concept_id"].map(concepts),
                        "input": rows["input"], "output": rows["output"]})
    return out.reset_index(drop=True)


def _sample_rows(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows per concept (all when fewer), chosen by ``seed``, in a stable order."""
    picked = []
    for cid, group in rows.groupby("concept_id", sort=True):
        k = min(n, len(group))
        idx = sorted(random.Random(seed * 1_000_003 + int(cid)).sample(list(group.index), k))
        picked.append(rows.loc[idx])
    return pd.concat(picked) if picked else rows.iloc[:0]


# ------------------------------------------------------------------------------ splits


@dataclass
class EvalSplits:
    """Training pool + evaluation sets of one experiment (see the module docstring)."""

    pool_dir: Path
    heldout: pd.DataFrame            # concept_id, concept, input, output
    heldin: pd.DataFrame
    heldout_metadata: Path | None    # metadata.jsonl of the held-out concepts (judge path)
    heldin_metadata: Path | None
    summary: dict = field(default_factory=dict)

    def pool_concepts(self) -> list[int]:
        meta = load_metadata(Path(self.pool_dir) / "generate" / "metadata.jsonl")
        return [int(m["concept_id"]) for m in meta]


@dataclass
class _EvalSet:
    """One evaluation set while splits are made: its rows, metadata, and the concept ids (for
    held-out) or row labels (for held-in) it takes away from training."""

    frame: pd.DataFrame
    metadata: list[dict]
    taken: set[int] | list[int]


def _no_eval_set() -> _EvalSet:
    return _EvalSet(pd.DataFrame(columns=EVAL_COLUMNS), [], set())


def prepare_splits(data_dir: str | Path, out_dir: str | Path, *,
                   heldout_data_dir: str | Path | None = None,
                   heldout_concepts: int | None = None, heldin_concepts: int = 0,
                   eval_examples: int = 8, seed: int = 42) -> EvalSplits:
    """Write ``out_dir/splits/`` (pool + evaluation sets) or reuse it when made with the same
    arguments. See the module docstring for the protocol."""
    if heldout_data_dir is not None and heldout_concepts:
        raise ConfigError("give either --heldout_data_dir or --heldout_concepts, not both")
    if eval_examples < 1:
        raise ConfigError(f"eval_examples: must be >= 1, got {eval_examples}")
    split_dir = Path(out_dir) / "splits"
    params = {"data_dir": str(Path(data_dir).resolve()),
              "heldout_data_dir": None if heldout_data_dir is None
              else str(Path(heldout_data_dir).resolve()),
              "heldout_concepts": heldout_concepts or 0, "heldin_concepts": heldin_concepts,
              "eval_examples": eval_examples, "seed": seed}
    summary_path = split_dir / "split_summary.json"
    if summary_path.exists():
        summary = read_json(summary_path)
        if summary.get("params") != params:
            raise ConfigError(f"{split_dir}: made with other settings {summary.get('params')}; "
                              f"use a fresh --out_dir (asked for {params})")
        return _load_splits(split_dir, summary)
    summary = {"params": params, **_make_splits(split_dir, data_dir, heldout_data_dir,
                                                heldout_concepts, heldin_concepts,
                                                eval_examples, seed)}
    atomic_write_json(summary_path, summary)
    return _load_splits(split_dir, summary)


def _make_splits(split_dir: Path, data_dir: str | Path, heldout_data_dir: str | Path | None,
                 heldout_concepts: int | None, heldin_concepts: int, eval_examples: int,
                 seed: int) -> dict[str, Any]:
    """Write the pool and the evaluation sets; returns the summary (without ``params``)."""
    frame, metadata, schema = read_generate(data_dir)
    positive = positive_mask(frame)
    with_rows = sorted(set(frame.loc[positive, "concept_id"].astype(int)))
    summary: dict[str, Any] = {"removed_overlap": []}
    if heldout_data_dir is not None:
        heldout = _heldout_from_dump(heldout_data_dir, metadata, with_rows, eval_examples, seed)
        summary["removed_overlap"] = sorted(heldout.taken)
    elif heldout_concepts:
        if heldout_concepts >= len(with_rows):
            raise ConfigError(f"heldout_concepts={heldout_concepts} leaves no training concept "
                              f"({len(with_rows)} concepts in {data_dir})")
        heldout = _drawn_eval_set(frame[positive], metadata,
                                  random.Random(seed).sample(with_rows, heldout_concepts),
                                  eval_examples, seed)
    else:
        heldout = _no_eval_set()

    train_ids = [cid for cid in with_rows if cid not in heldout.taken]
    if not train_ids:
        raise DataError(f"{data_dir}: no training concept left after removing held-out concepts")
    heldin = _no_eval_set()
    if heldin_concepts:
        chosen = sorted(random.Random(seed + 1).sample(train_ids, min(heldin_concepts,
                                                                      len(train_ids))))
        heldin = _heldin_set(frame[positive], metadata, chosen, eval_examples, seed + 1)

    keep = ~frame["concept_id"].isin(heldout.taken) & ~frame.index.isin(heldin.taken)
    pool_meta = [m for m in metadata if int(m["concept_id"]) not in heldout.taken]
    write_generate(split_dir / "pool", frame[keep], pool_meta, schema)
    for name, part in (("heldout", heldout), ("heldin", heldin)):
        part.frame.to_parquet(split_dir / f"{name}.parquet", index=False)
        atomic_write_text(split_dir / f"{name}_metadata.jsonl",
                          "".join(json.dumps(m) + "\n" for m in part.metadata))
    return {**summary, "train_concepts": len(train_ids), "train_rows": int(keep.sum()),
            "heldout_concepts": int(heldout.frame["concept_id"].nunique()),
            "heldout_examples": len(heldout.frame),
            "heldin_concepts": int(heldin.frame["concept_id"].nunique()),
            "heldin_examples": len(heldin.frame)}


def _heldout_from_dump(heldout_data_dir: str | Path, metadata: list[dict], with_rows: list[int],
                       eval_examples: int, seed: int) -> _EvalSet:
    """Held-out examples from another dump; training concepts with the same text are taken out
    of training (the same match as :func:`~..stages.splits.make_split`)."""
    ho_frame, ho_meta, _ = read_generate(heldout_data_dir)
    ho_concepts = {int(m["concept_id"]): m["concept"] for m in ho_meta}
    ho_pos = ho_frame[positive_mask(ho_frame)]
    if ho_pos.empty:
        raise DataError(f"{heldout_data_dir}: no positive rows to evaluate on")
    heldout = _eval_frame(_sample_rows(ho_pos, eval_examples, seed), ho_concepts)
    heldout_meta = [m for m in ho_meta if int(m["concept_id"]) in set(heldout["concept_id"])]
    texts = {normalise_concept(m["concept"]) for m in heldout_meta}
    overlap = {int(e["concept_id"]) for e in overlapping_concepts(metadata, texts)}
    removed = [cid for cid in with_rows if cid in overlap]
    if removed:
        logger.warning("%d training concept(s) are held-out concepts too (same text); "
                       "removed from training", len(removed))
    return _EvalSet(heldout, heldout_meta, set(removed))


def _drawn_eval_set(positives: pd.DataFrame, metadata: list[dict], concept_ids: Sequence[int],
                    eval_examples: int, seed: int) -> _EvalSet:
    """Examples of ``concept_ids`` from the training data itself; ``taken``: the concept ids."""
    ids = set(concept_ids)
    rows = positives[positives["concept_id"].isin(ids)]
    concepts = {int(m["concept_id"]): m["concept"] for m in metadata}
    picked = _sample_rows(rows, eval_examples, seed)
    return _EvalSet(_eval_frame(picked, concepts),
                    [m for m in metadata if int(m["concept_id"]) in ids], ids)


def _heldin_set(positives: pd.DataFrame, metadata: list[dict], chosen: list[int],
                eval_examples: int, seed: int) -> _EvalSet:
    """Held-back examples of training concepts; ``taken``: their row labels."""
    rows = positives[positives["concept_id"].isin(chosen)]
    picked = _sample_rows(rows, eval_examples, seed)
    # Keep at least one training example per held-in concept, else it is not held-in.
    too_few = [int(c) for c, g in rows.groupby("concept_id")
               if len(g) <= int((picked["concept_id"] == c).sum())]
    if too_few:
        raise DataError(f"held-in concepts {too_few} have <= eval_examples={eval_examples} "
                        "examples: nothing would be left to train on; lower --eval_examples")
    concepts = {int(m["concept_id"]): m["concept"] for m in metadata}
    return _EvalSet(_eval_frame(picked, concepts),
                    [m for m in metadata if int(m["concept_id"]) in set(chosen)],
                    list(picked.index))


def _load_splits(split_dir: Path, summary: dict) -> EvalSplits:
    def meta(name: str) -> Path | None:
        path = split_dir / f"{name}_metadata.jsonl"
        return path if path.exists() and path.read_text().strip() else None

    def frame(name: str) -> pd.DataFrame:
        df = pd.read_parquet(split_dir / f"{name}.parquet")
        return df if len(df) else pd.DataFrame(columns=EVAL_COLUMNS)

    return EvalSplits(split_dir / "pool", frame("heldout"), frame("heldin"), meta("heldout"),
                      meta("heldin"), summary)


def write_concept_subset(pool_dir: str | Path, concept_ids: Sequence[int],
                         out_dir: str | Path) -> Path:
    """An AxBench dump holding only ``concept_ids`` (plus the shared negatives) of ``pool_dir``."""
    frame, metadata, schema = read_generate(pool_dir)
    wanted = {int(c) for c in concept_ids}
    keep = frame["concept_id"].isin(wanted) | (frame["concept_id"] == NEGATIVE_ID)
    return write_generate(out_dir, frame[keep],
                          [m for m in metadata if int(m["concept_id"]) in wanted], schema)


def parse_sizes(text: str | Sequence[str | int]) -> list[int | str]:
    """``"10,100,all"`` -> ``[10, 100, "all"]``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    sizes: list[int | str] = []
    for item in items:
        item = str(item).strip()
        if item == "all":
            sizes.append("all")
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise ConfigError(f"sizes: {item!r} is neither a positive integer nor 'all'")
    if not sizes:
        raise ConfigError("sizes: give at least one size")
    return sizes


def nested_subsets(concept_ids: Sequence[int], sizes: Sequence[int | str],
                   seed: int) -> list[tuple[int, list[int]]]:
    """Nested concept subsets: one seeded permutation, subset k = its first n_k concepts, so
    every subset contains every smaller one. Sizes above the pool (and ``all``) become the whole
    pool; duplicates collapse. Returns ``[(n, sorted ids)]`` in increasing n."""
    order = sorted(int(c) for c in concept_ids)
    if not order:
        raise DataError("nested_subsets: no concepts")
    random.Random(seed).shuffle(order)
    resolved = set()
    for size in sizes:
        n = len(order) if size == "all" else int(size)
        if n > len(order):
            logger.warning("size %d is more than the %d training concepts: using all", n,
                           len(order))
        resolved.add(min(n, len(order)))
    return [(n, sorted(order[:n])) for n in sorted(resolved)]


# ------------------------------------------------------------------------------ runs


def train_or_load(run: RunConfig, spec: MethodSpec, data_dir: str | Path,
                  dump_dir: str | Path, base, progress: bool = False) -> tuple[HyperSteer, dict]:
    """Train ``spec`` on ``data_dir`` into ``dump_dir`` unless it is already trained there (with
    the same settings: a different run in the same place is refused), then load it.

    Returns the model (eval mode) and its ``train_summary.json`` (``{}`` if absent)."""
    out = method_dir(dump_dir, spec.name)
    record = {"method": spec.name, "model": spec.model.to_dict(), "train": spec.train.to_dict(),
              "data_dir": str(Path(data_dir).resolve())}
    record_path = out / "experiment_run.json"
    if is_trained(dump_dir, spec.name):
        if record_path.exists() and read_json(record_path) != record:
            raise ConfigError(f"{out}: holds a run with other settings ({record_path}); "
                              "use a fresh --out_dir")
    else:
        train_method(run, spec, data_dir, dump_dir, base=base, progress=progress)
        atomic_write_json(record_path, record)
    return load_trained(dump_dir, spec.name, base)


def load_trained(dump_dir: str | Path, method: str, base) -> tuple[HyperSteer, dict]:
    hs = load_method(dump_dir, method, base)
    summary_path = method_dir(dump_dir, method) / "train_summary.json"
    return hs, (read_json(summary_path) if summary_path.exists() else {})


def with_overrides(spec: MethodSpec, model: dict | None = None,
                   train: dict | None = None) -> MethodSpec:
    """A copy of ``spec`` with some HyperSteerConfig / TrainConfig fields replaced (validated)."""
    return MethodSpec(spec.name,
                      dataclasses.replace(spec.model, **(model or {})),
                      dataclasses.replace(spec.train, **(train or {})))


# ------------------------------------------------------------------------------ steering loss


def loss_summary(losses: pd.DataFrame) -> dict[str, float]:
    """Mean and std over concepts of the per-concept mean example loss."""
    if losses is None or len(losses) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n_concepts": 0, "n_examples": 0}
    per_concept = losses.groupby("concept_id")["loss"].mean()
    std = float(per_concept.std(ddof=1)) if len(per_concept) > 1 else float("nan")
    return {"mean": float(per_concept.mean()), "std": std, "n_concepts": int(len(per_concept)),
            "n_examples": int(len(losses))}


def scored_losses(hs: HyperSteer, frame: pd.DataFrame, train: TrainConfig, autocast,
                  csv_path: Path, unsteered: dict[str, dict], key: str) -> dict[str, float]:
    """:func:`loss_summary` of ``frame`` at factor 1.0, its example losses saved to
    ``csv_path``. The unsteered loss (factor 0.0) does not depend on the hypernetwork, so it is
    computed once per ``key`` into ``unsteered``."""
    losses = example_losses(hs, frame, train.batch_size, train.max_length, 1.0, autocast)
    losses.to_csv(csv_path, index=False)
    if key not in unsteered:
        unsteered[key] = loss_summary(example_losses(
            hs, frame, train.batch_size, train.max_length, 0.0, autocast))
    return loss_summary(losses)


def release_memory() -> None:
    """Call after dropping a hypernetwork: the next run's must not share the device with it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ judge


@contextlib.contextmanager
def judge_session(mode: str, run: RunConfig) -> Iterator[JudgeConfig | None]:
    """``none``: no judge; ``api``: the config's OpenAI-compatible judge (``OPENAI_API_KEY`` from
    the environment); ``offline``: the package's rule-based STAND-IN served on 127.0.0.1 (not an
    LLM: it shows the pipeline works, its scores mean nothing)."""
    if mode not in JUDGE_MODES:
        raise ConfigError(f"judge: {mode!r} is not one of {list(JUDGE_MODES)}")
    if mode == "none":
        yield None
        return
    if mode == "api":
        if not os.environ.get("OPENAI_API_KEY") and not (run.judge.base_url
                                                         or os.environ.get("OPENAI_BASE_URL")):
            raise ConfigError("judge api: set OPENAI_API_KEY (and optionally OPENAI_BASE_URL or "
                              "hypersteer.judge.base_url)")
        yield run.judge
        return
    from ..judge.offline_server import start_offline_judge, stop_offline_judge

    server, url = start_offline_judge()
    logger.warning("judging with the OFFLINE RULE-BASED STAND-IN at %s (not an LLM)", url)
    try:
        yield JudgeConfig(**{**run.judge.to_dict(), "base_url": url,
                                      # the stand-in reads only the package's marked rubric
                                      "rubric": "package"})
    finally:
        stop_offline_judge(server)


def judge_scores(config_path: str | Path, run: RunConfig, dump_dir: str | Path, name: str,
                 concepts_path: Path, methods: Sequence[str], base, judge_config: JudgeConfig,
                 progress: bool = False) -> dict[str, dict[str, float]]:
    """AxBench's protocol on ``concepts_path``: factor sweep on both prompt halves, judge, factor
    chosen per concept on ``steering``, score read on ``steering_test``. Works in
    ``dump_dir/judge_<name>/`` (its ``train`` links to the dump's). Returns per method
    ``{"mean", "std", "n_concepts"}`` of the overall (harmonic-mean) score."""
    from ..stages.evaluate import MODES, run_evaluate
    from ..stages.inference_stage import run_inference
    from ..stages.report import summarize

    eval_dump = Path(dump_dir) / f"judge_{name}"
    eval_dump.mkdir(parents=True, exist_ok=True)
    link = eval_dump / "train"
    if not link.exists():
        link.symlink_to(Path("..") / "train", target_is_directory=True)
    for mode in MODES:
        run_inference(config_path, eval_dump, mode, list(methods), str(concepts_path),
                      base=base, progress=progress)
    for mode in MODES:
        run_evaluate(eval_dump, judge_config, mode, list(methods),
                     split=PromptSplit.from_config(run.inference), progress=progress)
    summary = summarize(eval_dump)
    out = {}
    for row in summary.itertuples(index=False):
        out[row.method] = {"mean": float(row.overall_mean), "std": float(row.overall_std),
                           "n_concepts": int(row.n_concepts)}
    return out


def limit_metadata(path: Path | None, n: int | None, out_path: Path) -> Path | None:
    """The first ``n`` concepts of a metadata file (all when ``n`` is None)."""
    if path is None or n is None:
        return path
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()][:n]
    atomic_write_text(out_path, "".join(line + "\n" for line in lines))
    return out_path


# ------------------------------------------------------------------------------ tables, figures


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    columns = list(columns or frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def mean_pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def write_table(frame: pd.DataFrame, out_dir: str | Path, stem: str, title: str,
                notes: Sequence[str] = (), md_frame: pd.DataFrame | None = None,
                extra_md: Sequence[str] = ()) -> tuple[Path, Path]:
    """``stem.csv`` (the numbers) and ``stem.md`` (title, notes, the table, extra lines)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    atomic_write(csv_path, lambda p: frame.to_csv(p, index=False))
    text = [f"# {title}", ""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    text += [markdown_table(md_frame if md_frame is not None else frame)] + list(extra_md)
    atomic_write_text(md_path, "\n".join(text) + "\n")
    return csv_path, md_path


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG, read from its header; raises ValueError if it is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def concept_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i % cmap.N) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def short(text: str, width: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
