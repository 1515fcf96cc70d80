"""``scaling``: steering on never-seen concepts against the number of training concepts (Fig. 2).

    python -m axbench_hypersteer.experiments scaling --config CONFIG --data_dir POOL \\
        --heldout_data_dir HELDOUT --sizes 10,100,1000,all --out_dir OUT [--judge api]

Every HyperSteer method of ``CONFIG`` (or ``--method``) is trained on nested concept subsets of the
training data (one seeded permutation; subset k is its first n_k concepts, so each subset contains
every smaller one; ``all`` = every training concept), with the config's own hyperparameters
(``max_concepts`` is ignored: the subset decides the concepts). Each trained hypernetwork is scored
on the held-out concepts (see :mod:`.common` for the protocol):

* held-out steering loss, always: the steered base model's loss on the held-out concepts'
  reference answers at factor 1.0 (and the unsteered model's loss on the same tokens, for scale);
* the LLM-judge score, when ``--judge`` is given: AxBench's factor sweep on the held-out concepts
  (``--judge_concepts`` caps how many), factor chosen per concept on ``steering``, read on
  ``steering_test``.

Writes ``scaling.csv``, ``scaling.md`` and ``scaling.png`` (log-x curves, one per method) to
``--out_dir``; runs live in ``--out_dir/runs/n<size>/`` (AxBench dumps: ``generate/``, ``train/``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..model.config import ConfigError
from ..stages.common import add_progress_flags
from ..stages.plots import new_figure, save_figure
from ..stages.data import load_metadata
from ..stages.run_config import MethodSpec, RunConfig, load_run_config
from .common import (EvalSplits, autocast_for, judge_scores, judge_session, limit_metadata,
                     load_base_for, mean_pm, nested_subsets, parse_sizes, prepare_splits,
                     release_memory, scored_losses, train_or_load, with_overrides,
                     write_concept_subset, write_table)

logger = logging.getLogger(__name__)

DEFAULT_SIZES = "10,100,1000,all"


@dataclass
class ScalingResult:
    table: pd.DataFrame
    figure: object  # matplotlib Figure
    paths: dict[str, Path] = field(default_factory=dict)


def _subset_dir(pool_dir: Path, ids: list[int], run_dir: Path) -> Path:
    meta_path = run_dir / "generate" / "metadata.jsonl"
    if meta_path.exists():
        have = sorted(int(m["concept_id"]) for m in load_metadata(meta_path))
        if have != sorted(ids):
            raise ConfigError(f"{run_dir}: holds another concept subset; use a fresh --out_dir")
        return run_dir
    return write_concept_subset(pool_dir, ids, run_dir)


def run_scaling(config_path: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                methods: Sequence[str] | None = None, sizes: str | Sequence = DEFAULT_SIZES,
                heldout_data_dir: str | Path | None = None, heldout_concepts: int | None = None,
                eval_examples: int = 8, judge: str = "none", judge_concepts: int | None = None,
                seed: int | None = None, base=None, progress: bool = False) -> ScalingResult:
    run = load_run_config(config_path)
    specs = [run.method(m) for m in methods] if methods else list(run.methods.values())
    if not specs:
        raise ConfigError(f"{config_path}: train.models lists no HyperSteer method")
    if heldout_data_dir is None and not heldout_concepts:
        raise ConfigError("scaling needs held-out concepts: --heldout_data_dir or "
                          "--heldout_concepts")
    seed = run.seed if seed is None else seed
    out_dir = Path(out_dir)
    splits = prepare_splits(data_dir, out_dir, heldout_data_dir=heldout_data_dir,
                            heldout_concepts=heldout_concepts, eval_examples=eval_examples,
                            seed=seed)
    pool = splits.pool_concepts()
    subsets = nested_subsets(pool, parse_sizes(sizes), seed)
    base = load_base_for(run, base)
    autocast = autocast_for(run, base[0])
    judge_meta = limit_metadata(splits.heldout_metadata, judge_concepts,
                                out_dir / "splits" / "judge_heldout_metadata.jsonl")
    rows, unsteered = [], {}
    with judge_session(judge, run) as judge_config:
        for n, ids in subsets:
            run_dir = out_dir / "runs" / f"n{n:05d}"
            data = splits.pool_dir if n == len(pool) else _subset_dir(splits.pool_dir, ids,
                                                                        run_dir)
            for spec in specs:
                rows.append(_train_and_score(run, spec, n, data, run_dir, splits, base,
                                             autocast, unsteered, progress))
            if judge_config is not None:
                if judge_meta is None:
                    raise ConfigError("judge: the held-out concepts have no metadata")
                scores = judge_scores(config_path, run, run_dir, "heldout", judge_meta,
                                      [s.name for s in specs], base, judge_config, progress)
                for row in rows:
                    if row["n_concepts"] == n and row["method"] in scores:
                        s = scores[row["method"]]
                        row.update(judge_mean=s["mean"], judge_std=s["std"],
                                   judge_concepts=s["n_concepts"])
    table = pd.DataFrame(rows)
    figure = scaling_figure(table)
    paths = {"png": save_figure(figure, out_dir / "scaling.png")}
    paths["csv"], paths["md"] = _write_scaling_table(table, out_dir, splits, data_dir,
                                                     heldout_data_dir, judge, seed)
    return ScalingResult(table, figure, paths)


def _train_and_score(run: RunConfig, spec: MethodSpec, n: int, data: Path, run_dir: Path,
                     splits: EvalSplits, base, autocast, unsteered: dict[str, dict],
                     progress: bool) -> dict:
    """One table row: ``spec`` trained on the ``n``-concept subset, scored on held-out loss."""
    if spec.train.max_concepts is not None:
        logger.info("%s: ignoring max_concepts=%s (the subset sets the concepts)",
                    spec.name, spec.train.max_concepts)
    spec_n = with_overrides(spec, train={"max_concepts": None})
    logger.info("scaling: %s on %d concepts", spec.name, n)
    hs, summary = train_or_load(run, spec_n, data, run_dir, base, progress)
    held = scored_losses(hs, splits.heldout, spec_n.train, autocast,
                         run_dir / f"heldout_losses_{spec.name}.csv", unsteered, spec.name)
    del hs
    release_memory()
    return {
        "method": spec.name, "n_concepts": n,
        "train_examples": summary.get("train_examples"),
        "steps": summary.get("steps"), "train_loss": summary.get("last_loss"),
        "heldout_loss_mean": held["mean"], "heldout_loss_std": held["std"],
        "heldout_concepts": held["n_concepts"],
        "heldout_examples": held["n_examples"],
        "unsteered_loss_mean": unsteered[spec.name]["mean"],
        "judge_mean": np.nan, "judge_std": np.nan, "judge_concepts": 0,
    }


def _write_scaling_table(table: pd.DataFrame, out_dir: Path, splits: EvalSplits,
                         data_dir: str | Path, heldout_data_dir: str | Path | None, judge: str,
                         seed: int) -> tuple[Path, Path]:
    """``scaling.csv`` and ``scaling.md``, whose notes say what the numbers were measured on."""
    md = table[["method", "n_concepts", "train_examples", "steps"]].copy()
    md["held-out loss @1.0"] = [mean_pm(m, s) for m, s in
                                zip(table.heldout_loss_mean, table.heldout_loss_std)]
    md["unsteered loss"] = table["unsteered_loss_mean"]
    if table["judge_mean"].notna().any():
        md["held-out judge score"] = [mean_pm(m, s) for m, s in
                                      zip(table.judge_mean, table.judge_std)]
    notes = [
        f"Training data: `{data_dir}` minus the held-out concepts "
        f"({splits.summary.get('train_concepts')} training concepts); nested subsets from one "
        f"permutation (seed {seed}).",
        f"Held-out: {splits.summary.get('heldout_concepts')} concepts, "
        f"{splits.summary.get('heldout_examples')} examples"
        + (f" from `{heldout_data_dir}`" if heldout_data_dir else
           f" drawn from `{data_dir}` (--heldout_concepts)") + ".",
        "Loss = steered base model's cross-entropy on the reference answer tokens at factor 1.0; "
        "mean ± std over concepts of the per-concept mean. 'unsteered' = same tokens, factor 0.",
    ]
    if judge != "none":
        notes.append(f"Judge ({judge}): best factor per concept on `steering`, scored on "
                     "`steering_test`; 0-2 harmonic mean of concept / instruction / fluency."
                     + (" OFFLINE STAND-IN JUDGE: not an LLM." if judge == "offline" else ""))
    return write_table(table, out_dir, "scaling", "HyperSteer scaling: held-out concepts", notes,
                       md, ["", "![scaling](scaling.png)"])


def scaling_figure(table: pd.DataFrame):
    """Held-out loss (and judge score when present) against #training concepts, log x; one line
    per method plus a dashed 'unsteered' reference. Returns the Figure."""
    has_judge = "judge_mean" in table and table["judge_mean"].notna().any()
    fig = new_figure(11.0 if has_judge else 6.5, 4.5)
    axes = fig.subplots(1, 2 if has_judge else 1, squeeze=False)[0]
    ax = axes[0]
    for method, df in table.groupby("method", sort=False):
        df = df.sort_values("n_concepts")
        ax.plot(df["n_concepts"], df["heldout_loss_mean"], marker="o", label=method)
    if len(table):
        ax.axhline(float(table["unsteered_loss_mean"].mean()), linestyle="--", color="grey",
                   linewidth=1.0, label="unsteered")
    _log_x(ax, table)
    ax.set_ylabel("held-out steering loss @ factor 1.0")
    ax.set_title("Held-out loss vs training concepts")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if has_judge:
        jax = axes[1]
        for method, df in table.groupby("method", sort=False):
            df = df.sort_values("n_concepts")
            jax.plot(df["n_concepts"], df["judge_mean"], marker="o", label=method)
        _log_x(jax, table)
        jax.set_ylabel("held-out judge score (0-2)")
        jax.set_title("Held-out judge score vs training concepts")
        jax.grid(True, which="both", alpha=0.3)
        jax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_x(ax, table: pd.DataFrame) -> None:
    """Log x axis ticked at the subset sizes themselves (plain numbers, no 2×10⁰)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    sizes = sorted({int(n) for n in table["n_concepts"]}) if len(table) else []
    if sizes:
        ax.set_xticks(sizes, labels=[str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training concepts (log scale)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axbench_hypersteer.experiments scaling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="AxBench-format YAML (train settings)")
    parser.add_argument("--data_dir", required=True, help="AxBench dump with the training data")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--method", action="append", default=None,
                        help="HyperSteer method(s) to scale (default: all in train.models)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"nested training-concept counts, 'all' = every one "
                             f"(default {DEFAULT_SIZES})")
    parser.add_argument("--heldout_data_dir", default=None,
                        help="AxBench dump of the held-out concepts (e.g. Concept500)")
    parser.add_argument("--heldout_concepts", type=int, default=None,
                        help="or: hold out this many concepts of --data_dir (seeded)")
    parser.add_argument("--eval_examples", type=int, default=8,
                        help="held-out examples per concept for the loss (default 8)")
    parser.add_argument("--judge", default="none", choices=["none", "api", "offline"],
                        help="LLM-judge score too: api = the config's judge (OPENAI_API_KEY), "
                             "offline = the rule-based stand-in (plumbing only)")
    parser.add_argument("--judge_concepts", type=int, default=None,
                        help="judge only the first N held-out concepts (cost)")
    parser.add_argument("--seed", type=int, default=None, help="default: train.seed")
    add_progress_flags(parser)
    args = parser.parse_args(argv)
    result = run_scaling(args.config, args.data_dir, args.out_dir, methods=args.method,
                         sizes=args.sizes, heldout_data_dir=args.heldout_data_dir,
                         heldout_concepts=args.heldout_concepts,
                         eval_examples=args.eval_examples, judge=args.judge,
                         judge_concepts=args.judge_concepts, seed=args.seed,
                         progress=args.progress)
    print(result.paths["md"].read_text())
    print(f"wrote {result.paths['md']}, {result.paths['csv']}, {result.paths['png']}")
    return 0
