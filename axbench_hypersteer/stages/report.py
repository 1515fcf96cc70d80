"""Turn AxBench evaluate dumps into the steering results table.

AxBench's ``evaluate.py`` scores every steering factor on two disjoint prompt halves (``steering`` and
``steering_test``) but never combines them; the combination lived in an analysis notebook. Picking the
factor and reporting the score on the same prompts inflates results, so here the factor is chosen per
concept on ``steering`` (argmax of the per-factor mean ``lm_judge_rating``, first index on ties) and
the score is read from ``steering_test`` at that factor. Failed judgements (stored as null and
scored 0, as AxBench does) are counted per method and split in the report, which says how to
re-judge them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from axbench_hypersteer.model.errors import HyperSteerError
from axbench_hypersteer.model.fileio import atomic_write, atomic_write_text
from axbench_hypersteer.judge.aggregate import JUDGE_EVALUATOR as JUDGE
from axbench_hypersteer.judge.aggregate import PPL_EVALUATOR as PERPLEXITY
from axbench_hypersteer.judge.aggregate import failed_judgements
from axbench_hypersteer.judge.records import parse_record

SELECTION_FILE = "steering.jsonl"
TEST_FILE = "steering_test.jsonl"
LOSS_FILE = "steering_loss.jsonl"
# AxBench's notebook averages these over factors instead of taking an argmax: they ignore the factor,
# so an argmax would only select on judge noise.
FACTOR_FREE_METHODS = frozenset({"PromptSteering", "LoReFT", "LoRA", "SFT"})
CRITERIA = {"overall": "lm_judge_rating", "concept": "relevance_concept_ratings",
            "instruction": "relevance_instruction_ratings", "fluency": "fluency_ratings"}
METRICS = (*CRITERIA, "perplexity")

Records = dict[int, dict]


class ReportError(HyperSteerError, ValueError):
    """A dump file is missing, empty or not shaped like AxBench's evaluate output (message names it)."""


def load_records(path: str | Path) -> Records:
    """Read an evaluate jsonl into ``{concept_id: results}``.

    The last line of a concept wins because AxBench appends on re-runs.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: file not found (run the evaluate stage for this split first)")
    records: Records = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                cid, row = parse_record(line)
            except ValueError as err:
                raise ReportError(f"{path}:{lineno}: {err}") from None
            records[cid] = row["results"]
    if not records:
        raise ReportError(f"{path}: no records (the file is empty)")
    return records


def rubrics_used(dump_dir: str | Path) -> list[str]:
    """The judge rubrics named by the evaluate records of a dump (``unrecorded`` for records
    written before evaluate recorded it), in first-seen order."""
    names: dict[str, None] = {}
    for name in (SELECTION_FILE, TEST_FILE):
        path = Path(dump_dir) / "evaluate" / name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                _, row = parse_record(line)
            except ValueError:  # blank or torn lines: load_records reports what matters
                continue
            names[str((row.get("rubric") or {}).get("name", "unrecorded"))] = None
    return list(names)


def rubric_note(rubrics: Sequence[str]) -> str:
    """One line for the report: only AxBench's own rubric is comparable with its tables."""
    if rubrics and all(r == "axbench" for r in rubrics):
        return "Judge rubric: AxBench's own templates (comparable with AxBench's published tables)."
    return (f"Judge rubric: {', '.join(rubrics) or 'unrecorded'}. Only AxBench's own rubric "
            "(`hypersteer evaluate --rubric axbench`, automatic when AxBench is installed) gives "
            "scores comparable with AxBench's and the paper's tables.")


def _as_records(records: Records | str | Path, source: str | None, default: str) -> tuple[Records, str]:
    """Accept a path or loaded records; ``source`` is the file name that error messages cite."""
    if isinstance(records, (str, Path)):
        return load_records(records), source or str(records)
    return records, source or default


def _values(entry: Mapping, field: str, where: str, length: int | None = None) -> np.ndarray:
    """Per-factor floats with null -> NaN: a failed judgement is missing, not a zero."""
    raw = entry.get(field)
    if raw is None:
        raise ReportError(f"{where}: missing field '{field}'")
    raw = raw if isinstance(raw, list) else [raw]
    try:
        values = np.array([np.nan if v is None else float(v) for v in raw], dtype=float)
    except (TypeError, ValueError):
        raise ReportError(f"{where}: field '{field}' must hold numbers or null, got {raw!r:.80}") from None
    if length is not None and len(values) != length:
        raise ReportError(f"{where}: field '{field}' has {len(values)} values but 'factor' has {length}")
    return values


def _factors(entry: Mapping, where: str) -> np.ndarray | None:
    if entry.get("factor") is None:
        return None
    factors = _values(entry, "factor", where)
    if np.isnan(factors).any():
        raise ReportError(f"{where}: field 'factor' contains null: {entry['factor']!r:.80}")
    return factors


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _entry(results: Mapping | None, evaluator: str, method: str, where: str) -> Mapping | None:
    block = (results or {}).get(evaluator) or {}
    entry = block.get(method) if isinstance(block, Mapping) else None
    if entry is not None and not isinstance(entry, Mapping):
        raise ReportError(f"{where}: {evaluator}.{method} must be an object, got {type(entry).__name__}")
    return entry


def _judge_ratings(records: Records, method: str, source: str):
    """Yield ``(concept_id, where, factors | None, lm_judge_rating values)`` per concept that
    has an entry for ``method``."""
    for cid in sorted(records):
        where = f"{source}: concept {cid}, {JUDGE}.{method}"
        entry = _entry(records[cid], JUDGE, method, where)
        if entry is None:
            continue
        factors = _factors(entry, where)
        ratings = _values(entry, "lm_judge_rating", where, None if factors is None else len(factors))
        yield cid, where, factors, ratings


def select_best_factors(selection_records: Records | str | Path, method: str,
                        source: str | None = None) -> dict[int, float | None]:
    """Per concept, the factor with the highest mean judge score on the selection split.

    ``None`` means "no factor to choose" (factor-free method, or no ``factor`` list): the reported
    score is then the mean over whatever factors the test split has. Concepts whose ratings are all
    null cannot be ranked and are left out with a warning.
    """
    records, source = _as_records(selection_records, source, SELECTION_FILE)
    best: dict[int, float | None] = {}
    for cid, where, factors, ratings in _judge_ratings(records, method, source):
        if factors is None or (method in FACTOR_FREE_METHODS and len(factors) > 1):
            best[cid] = None
        elif np.isnan(ratings).all():
            warnings.warn(f"{where}: every lm_judge_rating is null; concept left out", stacklevel=2)
        else:  # NaN -> -inf so that a failed judgement never wins; argmax takes the first of ties
            best[cid] = float(factors[int(np.argmax(np.where(np.isnan(ratings), -np.inf, ratings)))])
    return best


def _index(entry: Mapping, factor: float | None, where: str) -> int | None:
    """Position of ``factor`` in the entry's factor list; None means "average over factors"."""
    if factor is None:
        return None
    factors = _factors(entry, where)
    if factors is None:
        raise ReportError(f"{where}: no 'factor' list to look up factor {factor} chosen on {SELECTION_FILE}")
    hits = np.flatnonzero(np.isclose(factors, factor, rtol=1e-9, atol=1e-12))
    if not hits.size:
        raise ReportError(f"{where}: factor {factor} chosen on {SELECTION_FILE} is not among "
                          f"this split's factors {factors.tolist()}")
    return int(hits[0])


def _metric(entry: Mapping, field: str, factor: float | None, where: str) -> float:
    factors = _factors(entry, where)
    values = _values(entry, field, where, None if factors is None else len(factors))
    idx = _index(entry, factor, where)
    return _nanmean(values) if idx is None else float(values[idx])


def score_at_factors(test_records: Records | str | Path, method: str,
                     factors: Mapping[int, float | None], source: str | None = None) -> pd.DataFrame:
    """Per concept: overall (mean of per-row harmonic means), concept, instruction, fluency and
    perplexity (NaN when absent) on the test split at the factor chosen on the selection split."""
    records, source = _as_records(test_records, source, TEST_FILE)
    rows, missing = [], []
    for cid, factor in sorted(factors.items()):
        where = f"{source}: concept {cid}, {JUDGE}.{method}"
        entry = _entry(records.get(cid), JUDGE, method, where)
        if entry is None:
            missing.append(cid)
            continue
        row = {"concept_id": cid, "factor": np.nan if factor is None else float(factor)}
        row.update({name: _metric(entry, field, factor, where) for name, field in CRITERIA.items()})
        ppl_where = f"{source}: concept {cid}, {PERPLEXITY}.{method}"
        ppl = _entry(records.get(cid), PERPLEXITY, method, ppl_where)
        has_ppl = ppl is not None and ppl.get("perplexity") is not None  # our evaluate may log only strength
        row["perplexity"] = _metric(ppl, "perplexity", factor, ppl_where) if has_ppl else np.nan
        rows.append(row)
    if missing:
        warnings.warn(f"{source}: no {JUDGE}.{method} result for concepts {missing}; left out", stacklevel=2)
    return pd.DataFrame(rows, columns=["concept_id", "factor", *METRICS])


def _mean_std(values: pd.Series | np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over concepts, skipping NaN; std is NaN below two concepts."""
    kept = np.asarray(values, dtype=float)
    kept = kept[~np.isnan(kept)]
    if not kept.size:
        return float("nan"), float("nan")
    std = float(kept.std(ddof=1)) if kept.size > 1 else float("nan")
    return float(kept.mean()), std


def _methods(records: Records) -> list[str]:
    seen: dict[str, None] = {}
    for cid in sorted(records):
        block = records[cid].get(JUDGE) or {}
        seen.update(dict.fromkeys(block if isinstance(block, Mapping) else ()))
    return list(seen)


def _loss_rows(path: Path) -> pd.DataFrame:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                cid, method, split, loss = row["concept_id"], row["method"], row["split"], row["loss"]
                if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(method, str) \
                        or split not in ("steering", "steering_test"):
                    raise ValueError("wrong type or split")
                rows.append({"concept_id": cid, "method": method, "split": split,
                             "factor": float(row["factor"]),
                             "loss": np.nan if loss is None else float(loss)})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ReportError(f"{path}:{lineno}: expected {{concept_id:int, method:str, factor:float, "
                                  f"split:'steering'|'steering_test', loss:float}} ({type(err).__name__}: "
                                  f"{err}); got {line.strip()!r:.120}") from None
    if not rows:
        raise ReportError(f"{path}: no records (the file is empty)")
    return pd.DataFrame(rows).drop_duplicates(["concept_id", "method", "split", "factor"], keep="last")


def summarize_loss(path: str | Path) -> pd.DataFrame:
    """Judge-free view: held-out steering loss at factor 1.0, and at the per-concept min-loss factor
    chosen on ``steering`` and read on ``steering_test`` (same protocol as the judge score)."""
    df = _loss_rows(Path(path))
    out = []
    for method, mdf in df.groupby("method", sort=False):
        sel, test = mdf[mdf.split == "steering"], mdf[mdf.split == "steering_test"]
        at_one = test[np.isclose(test.factor, 1.0)].loss
        best = []
        for cid, cdf in sel.dropna(subset=["loss"]).groupby("concept_id"):
            cdf = cdf.sort_values("factor", kind="stable")  # argmin then takes the smallest factor on ties
            factor = cdf.factor.iloc[int(np.argmin(cdf.loss.to_numpy()))]
            hit = test[(test.concept_id == cid) & np.isclose(test.factor, factor)].loss
            best.append(hit.iloc[0] if len(hit) else np.nan)
        row = {"method": method}
        for key, vals in (("loss_at_1", at_one), ("loss_best", best)):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(np.asarray(vals, dtype=float))
        out.append(row)
    return pd.DataFrame(out)


def summarize(dump_dir: str | Path) -> pd.DataFrame:
    """One row per method: mean and std over concepts of each metric at the selected factor, n concepts."""
    evaluate = Path(dump_dir) / "evaluate"
    selection, test = evaluate / SELECTION_FILE, evaluate / TEST_FILE
    sel_records, test_records = load_records(selection), load_records(test)
    methods = _methods(sel_records)
    if not methods:
        raise ReportError(f"{selection}: no {JUDGE} results for any method")
    rows = []
    for method in methods:
        best = select_best_factors(sel_records, method, source=str(selection))
        scores = score_at_factors(test_records, method, best, source=str(test))
        row: dict = {"method": method, "n_concepts": int(scores["overall"].notna().sum())}
        for name in METRICS:
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(scores[name])
        rows.append(row)
    summary = pd.DataFrame(rows)
    if (evaluate / LOSS_FILE).is_file():
        loss = summarize_loss(evaluate / LOSS_FILE)
        order = list(dict.fromkeys([*summary["method"], *loss["method"]]))  # judge order, then loss-only
        summary = summary.set_index("method").join(loss.set_index("method"), how="outer").reindex(order)
        summary = summary.reset_index().rename(columns={"index": "method"})
        summary["n_concepts"] = summary["n_concepts"].fillna(0).astype(int)
    return summary


def count_failed_judgements(dump_dir: str | Path) -> pd.DataFrame:
    """Failed judgements per method (rows) and split (columns) of one dump's evaluate files."""
    evaluate = Path(dump_dir) / "evaluate"
    counts: dict[str, dict[str, int]] = {}
    for split, name in (("steering", SELECTION_FILE), ("steering_test", TEST_FILE)):
        records = load_records(evaluate / name)
        for method in _methods(records):
            counts.setdefault(method, {"steering": 0, "steering_test": 0})[split] += sum(
                failed_judgements((records[c].get(JUDGE) or {}).get(method)) for c in records)
    return pd.DataFrame.from_dict(counts, orient="index", columns=["steering", "steering_test"])


def render_failures(failures: Mapping[str, pd.DataFrame]) -> list[str]:
    """Report lines on failed judgements, empty when there were none."""
    if not any(df.to_numpy().sum() for df in failures.values()):
        return []
    lines = ["## Failed judgements", "",
             "The judge failed on these (an HTTP error after every retry, or an answer with no "
             "readable rating). They are stored as null and scored 0, as AxBench does, so they "
             "lower the scores above. Re-running `hypersteer evaluate` for the split re-judges "
             "exactly them (answers already received come from the judge cache).", "",
             "| Dump | Method | steering | steering_test |", "|---|---|---|---|"]
    for label, df in failures.items():
        lines += [f"| {label} | {method} | {int(row.steering)} | {int(row.steering_test)} |"
                  for method, row in df.iterrows() if row.sum()]
    return lines + [""]


def _cell(row: pd.Series | None, key: str) -> str:
    if key == "n_concepts":
        return "—" if row is None else str(int(row[key]))
    if row is None or f"{key}_mean" not in row or pd.isna(row[f"{key}_mean"]):
        return "—"
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def render_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """One row per method; with several labels each metric's columns sit side by side (held-in | held-out)."""
    labels = list(tables)
    columns = [("Overall", "overall"), ("Concept", "concept"), ("Instruction", "instruction"),
               ("Fluency", "fluency")]
    optional = [("Perplexity", "perplexity"), ("Loss @1.0", "loss_at_1"), ("Loss @best", "loss_best")]
    columns += [(t, k) for t, k in optional
                if any(f"{k}_mean" in df and df[f"{k}_mean"].notna().any() for df in tables.values())]
    columns.append(("n", "n_concepts"))
    methods = list(dict.fromkeys(m for df in tables.values() for m in df["method"]))
    header = ["Method"] + [f"{title} ({label})" if len(labels) > 1 else title
                           for title, _ in columns for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        by_label = {label: next((r for _, r in df.iterrows() if r["method"] == method), None)
                    for label, df in tables.items()}
        cells = [method] + [_cell(by_label[label], key) for _, key in columns for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_curves(dump_dir: str | Path) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Per method, mean ``lm_judge_rating`` over concepts at each factor of the selection split."""
    path = Path(dump_dir) / "evaluate" / SELECTION_FILE
    records = load_records(path)
    curves: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
    for method in _methods(records):
        points, flat = [], []
        for _, _, factors, ratings in _judge_ratings(records, method, str(path)):
            if factors is None:
                flat.extend(ratings)
            else:
                points.extend(zip(factors, ratings))
        if points:
            df = pd.DataFrame(points, columns=["factor", "rating"]).groupby("factor")["rating"].mean()
            curves[method] = (df.index.to_numpy(dtype=float), df.to_numpy(dtype=float))
        else:
            curves[method] = (None, np.asarray(flat, dtype=float))
    return curves


def plot_score_vs_factor(dump_dir: str | Path, out_png: str | Path):
    """Save and return the Figure: one line per method, judge score vs factor on ``steering``."""
    from axbench_hypersteer.stages.plots import save_figure, score_vs_factor_figure

    fig = score_vs_factor_figure(selection_curves(dump_dir), f"{Path(dump_dir).name}: {SELECTION_FILE}")
    save_figure(fig, out_png)
    return fig


def plot_criteria(dump_dir: str | Path, out_png: str | Path, summary: pd.DataFrame | None = None):
    """Save and return the Figure: grouped criteria bars per method at the selected factor."""
    from axbench_hypersteer.stages.plots import criteria_figure, save_figure

    summary = summarize(dump_dir) if summary is None else summary
    fig = criteria_figure(summary, f"{Path(dump_dir).name}: {TEST_FILE} at factor chosen on {SELECTION_FILE}")
    save_figure(fig, out_png)
    return fig


def write_report(dump_dirs: Mapping[str, str | Path], out_dir: str | Path) -> Path:
    """Write report.md, results.csv and the PNGs for each labelled dump; print the table; return report.md."""
    if not dump_dirs:
        raise ReportError("write_report: no dump directories given")
    out = Path(out_dir)
    tables = {label: summarize(path) for label, path in dump_dirs.items()}  # fails before writing
    out.mkdir(parents=True, exist_ok=True)
    table = render_markdown(tables)
    results = pd.concat([df.assign(label=label, dump_dir=str(dump_dirs[label])) for label, df in tables.items()],
                        ignore_index=True).set_index(["label", "method"])
    atomic_write(out / "results.csv", lambda tmp: results.to_csv(tmp))
    md = ["# Steering results", "",
          f"Factor chosen per concept on `{SELECTION_FILE}` (argmax of mean LM-judge score, first on ties); "
          f"scores read from `{TEST_FILE}` at that factor. Mean ± sample std over concepts; scale 0-2.",
          "", table, "",
          rubric_note(list(dict.fromkeys(r for p in dump_dirs.values() for r in rubrics_used(p))))]
    md += render_failures({label: count_failed_judgements(p) for label, p in dump_dirs.items()})
    for label, path in dump_dirs.items():
        suffix = "" if len(dump_dirs) == 1 else "_" + re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        score_png, criteria_png = out / f"score_vs_factor{suffix}.png", out / f"criteria{suffix}.png"
        plot_score_vs_factor(path, score_png)
        plot_criteria(path, criteria_png, summary=tables[label])
        md += [f"## {label} (`{path}`)", "", f"![score vs factor]({score_png.name})", "",
               f"![criteria]({criteria_png.name})", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(md))
    print(table, end="")
    return report


def main(argv: list[str] | None = None) -> int:
    """``hypersteer report --dump_dir DIR [--heldout_dump_dir DIR2] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="hypersteer report",
        description="Summarise AxBench steering evaluations into a table and plots.")
    parser.add_argument("--dump_dir", type=Path, required=True,
                        help="dump dir holding evaluate/steering*.jsonl")
    parser.add_argument("--heldout_dump_dir", type=Path, default=None,
                        help="optional held-out-concept dump dir, reported side by side as 'held-out'")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: DUMP_DIR/report)")
    args = parser.parse_args(argv)
    dumps = ({"held-in": args.dump_dir, "held-out": args.heldout_dump_dir} if args.heldout_dump_dir
             else {"results": args.dump_dir})
    path = write_report(dumps, args.out or args.dump_dir / "report")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
