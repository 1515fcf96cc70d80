"""The demo's report: the paper's Table 1 layout (held-in and held-out rows) plus the unsteered
factor-0 rows, and the score-vs-factor curves of every criterion.

One inference/evaluate run covers both concept sets (one sweep, one judge pass), so the rows are
cut out of the same evaluate files by concept id; the factor is chosen per concept on
``steering`` and read on ``steering_test`` exactly as :mod:`report` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..model.fileio import atomic_write, atomic_write_text
from ..stages.report import (CRITERIA, JUDGE, SELECTION_FILE, TEST_FILE, _judge_ratings, _mean_std,
                     _values, load_records, score_at_factors, select_best_factors)

COLUMNS = (("Overall", "overall"), ("Concept", "concept"), ("Instruction", "instruction"),
           ("Fluency", "fluency"))
PER_CONCEPT_FILE = "per_concept.csv"
# Resamples of the concept-level bootstrap; seeded so that the same scores give the same interval.
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL = 10_000, 0, 0.95


def bootstrap_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean over concepts, concepts resampled with replacement.

    Why over concepts: the claim is about concepts the hypernetwork never saw, so the concepts,
    not the prompts, are the sample whose luck the interval must show (issue 21)."""
    kept = np.asarray(values, dtype=float)
    kept = kept[~np.isnan(kept)]
    if kept.size < 2:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, kept.size, size=(resamples, kept.size))
    means = kept[picks].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _only(records: dict, concept_ids: set[int]) -> dict:
    return {cid: r for cid, r in records.items() if cid in concept_ids}


def per_concept_scores(dump_dir: str | Path, method: str,
                       concept_sets: Mapping[str, set[int]]) -> pd.DataFrame:
    """One row per (concept set, steered | factor 0, concept): each criterion on
    ``steering_test``; steered rows at the factor chosen on ``steering``."""
    evaluate = Path(dump_dir) / "evaluate"
    selection = load_records(evaluate / SELECTION_FILE)
    test = load_records(evaluate / TEST_FILE)
    frames = []
    for label, ids in concept_sets.items():
        best = select_best_factors(_only(selection, ids), method, source=str(evaluate / SELECTION_FILE))
        for name, factors in ((f"{method}", best), ("unsteered (factor 0)", dict.fromkeys(best, 0.0))):
            scores = score_at_factors(_only(test, ids), method, factors, source=str(evaluate / TEST_FILE))
            frames.append(scores.assign(method=name, concepts=label))
    return pd.concat(frames, ignore_index=True)


def demo_rows(dump_dir: str | Path, method: str,
              concept_sets: Mapping[str, set[int]], per_concept: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """One row per (concept set, steered | factor 0): mean ± std over concepts of each
    criterion, and the bootstrap interval of the mean concept score."""
    if per_concept is None:
        per_concept = per_concept_scores(dump_dir, method, concept_sets)
    rows = []
    for (label, name), scores in per_concept.groupby(["concepts", "method"], sort=False):
        row = {"method": name, "concepts": label, "n_concepts": len(scores)}
        for key in (*CRITERIA, "factor"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(scores[key])
        row["concept_ci_low"], row["concept_ci_high"] = bootstrap_ci(scores["concept"])
        rows.append(row)
    return pd.DataFrame(rows)


def concept_rise(per_concept: pd.DataFrame, method: str, label: str) -> tuple[float, float, float]:
    """Mean over ``label``'s concepts of (steered - factor 0) concept score and its bootstrap
    interval; paired by concept, so the concepts' own difficulty cancels out."""
    part = per_concept[per_concept["concepts"] == label]
    steered = part[part["method"] == method].set_index("concept_id")["concept"]
    unsteered = part[part["method"] != method].set_index("concept_id")["concept"]
    rise = (steered - unsteered.reindex(steered.index)).to_numpy(dtype=float)
    return (float(np.nanmean(rise)), *bootstrap_ci(rise))


def render_rows(rows: pd.DataFrame) -> str:
    header = ["Method", "Concepts", *(title for title, _ in COLUMNS), "Concept 95% CI", "Factor",
              "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in rows.iterrows():
        cells = [row["method"], row["concepts"]]
        cells += [f"{row[f'{key}_mean']:.3f} ± {row[f'{key}_std']:.3f}" for _, key in COLUMNS]
        cells += [f"[{row['concept_ci_low']:.2f}, {row['concept_ci_high']:.2f}]"]
        cells += [f"{row['factor_mean']:.2f}", str(row["n_concepts"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def criterion_curves(dump_dir: str | Path, method: str, concept_ids: set[int]
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per criterion: mean score over the concepts and all their prompts (both splits) at each
    factor."""
    points: dict[str, list[tuple[float, float]]] = {key: [] for key in CRITERIA}
    for name in (SELECTION_FILE, TEST_FILE):
        path = Path(dump_dir) / "evaluate" / name
        records = _only(load_records(path), concept_ids)
        for cid, where, factors, _ in _judge_ratings(records, method, str(path)):
            entry = records[cid][JUDGE][method]
            for key, field in CRITERIA.items():
                points[key] += zip(factors, _values(entry, field, where, len(factors)))
    curves = {}
    for key, pts in points.items():
        mean = pd.DataFrame(pts, columns=["factor", "score"]).groupby("factor")["score"].mean()
        curves[key] = (mean.index.to_numpy(dtype=float), mean.to_numpy(dtype=float))
    return curves


def write_demo_report(dump_dir: str | Path, method: str, concept_sets: Mapping[str, set[int]],
                      judge_label: str, out_dir: str | Path | None = None) -> Path:
    """``report.md`` (table + curve), ``results.csv`` and ``score_vs_factor.png``; prints the
    table and returns the report path."""
    from ..stages.plots import criteria_vs_factor_figure, save_figure

    out = Path(out_dir or Path(dump_dir) / "report")
    per_concept = per_concept_scores(dump_dir, method, concept_sets)
    rows = demo_rows(dump_dir, method, concept_sets, per_concept)
    rises = []
    for label in concept_sets:
        mean, low, high = concept_rise(per_concept, method, label)
        rises.append(f"{label} concept score over factor 0: {mean:+.3f}, 95% CI "
                     f"[{low:+.2f}, {high:+.2f}]")
    table = render_rows(rows) + "\n" + "\n".join(rises) + "\n"
    atomic_write(out / "results.csv", lambda tmp: rows.to_csv(tmp, index=False))
    atomic_write(out / PER_CONCEPT_FILE, lambda tmp: per_concept.to_csv(tmp, index=False))
    curves = {label: criterion_curves(dump_dir, method, ids) for label, ids in concept_sets.items()}
    fig = criteria_vs_factor_figure(curves, f"{method}, judge: {judge_label.split(' (')[0]}")
    save_figure(fig, out / "score_vs_factor.png")
    md = ["# Demo steering results", "", f"Judge: {judge_label}.", "",
          f"Factor chosen per concept on `{SELECTION_FILE}` (argmax of the mean harmonic-mean "
          f"score), scores read on `{TEST_FILE}` at that factor; mean ± sample std over concepts, "
          f"scale 0-2; the interval is a {CI_LEVEL:.0%} bootstrap over concepts "
          f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); per-concept scores in "
          f"`{PER_CONCEPT_FILE}`. Held-out concepts were never seen by the hypernetwork in "
          "training.", "",
          table, "![score vs factor](score_vs_factor.png)", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(md))
    print(table, end="")
    return report


def runs_table(results: list[str | Path]) -> str:
    """The README's table from several runs' ``results.csv`` (seeds, thread counts): per cell the
    mean over runs and, in brackets, the lowest and highest run; a cell equal in every run is
    printed once.

    Why: one run's digits depend on the seed and the CPU's rounding (issue 21); the mean and the
    range over runs are what another machine can expect to land in."""
    frames = [pd.read_csv(path) for path in results]
    keys = ["concepts", "method"]
    columns = [*(key for _, key in COLUMNS), "factor"]
    stacked = pd.concat(frames, ignore_index=True)
    header = ["Method", "Concepts", *(title for title, _ in COLUMNS), "Factor", "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (label, name), group in stacked.groupby(keys, sort=False):
        cells = [name, label]
        for key in columns:
            values = group[f"{key}_mean"]
            digits = 2 if key == "factor" else 3
            if values.min() == values.max():  # the same in every run: the base LM's rows
                cells.append(f"{values.iloc[0]:.{digits}f}")
            else:
                cells.append(f"{values.mean():.{digits}f} [{values.min():.{digits}f}, "
                             f"{values.max():.{digits}f}]")
        cells.append(str(int(group["n_concepts"].iloc[0])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m axbench_hypersteer.demo.report DUMP/report/results.csv ...
    import sys

    print(runs_table(sys.argv[1:]), end="")
