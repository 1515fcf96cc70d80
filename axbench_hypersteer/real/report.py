"""The real experiment's report: Table 1's layout (one row per method and concept split) with the
baselines in the same table, the judge-free steering loss beside the judge's scores, the layer
sweep, training and timings.

Factors are chosen the AxBench way for the judge (per concept on the ``steering`` prompts, scores
read on ``steering_test``) and, for the steering loss, per concept on the first half of its
evaluation answers (DiffMean only; HyperSteer at its trained scale 1.0) and read on the second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..model.fileio import atomic_write, atomic_write_text, read_json
from ..stages.report import (SELECTION_FILE, TEST_FILE, _mean_std, load_records,
                             score_at_factors, select_best_factors)
from .config import VARIANT_METHODS, RealConfig
from .data import RealData, judged_concepts
from .evaluation import DIFFMEAN, LOSS_FILE, PROMPTING, UNSTEERED
from .run import SWEEP_FILE, TIMINGS_FILE

JUDGE_COLUMNS = ("overall", "concept", "instruction", "fluency")


def loss_table(dump_dir: Path, concept_ids: list[int]) -> pd.DataFrame:
    """Per method and concept: the reported-half loss at the factor the selection half chose."""
    records = pd.read_json(dump_dir / "evaluate" / LOSS_FILE, lines=True)
    records = records[records["concept_id"].isin(concept_ids)]
    rows = []
    for (method, cid), group in records.groupby(["method", "concept_id"]):
        select = group[group["split"] == "steering"]
        factor = float(select.loc[select["loss"].idxmin(), "factor"])
        test = group[(group["split"] == "steering_test") & np.isclose(group["factor"], factor)]
        rows.append({"method": method, "concept_id": int(cid), "factor": factor,
                     "loss": float(test["loss"].mean())})
    return pd.DataFrame(rows)


def judge_scores(dump_dir: Path, method: str, concept_ids: set[int],
                 unsteered: bool = False) -> pd.DataFrame:
    evaluate = dump_dir / "evaluate"
    selection = {c: r for c, r in load_records(evaluate / SELECTION_FILE).items() if c in concept_ids}
    test = {c: r for c, r in load_records(evaluate / TEST_FILE).items() if c in concept_ids}
    best = select_best_factors(selection, method, source=str(evaluate / SELECTION_FILE))
    if unsteered:
        best = dict.fromkeys(best, 0.0)
    return score_at_factors(test, method, best, source=str(evaluate / TEST_FILE))


def table_rows(dump_dir: Path, cfg: RealConfig, data: RealData) -> pd.DataFrame:
    judged = set(judged_concepts(data, cfg))
    hypersteer = [VARIANT_METHODS[v] for v in cfg.variants]
    rows = []
    for label, ids in (("held-in", data.heldin_ids), ("held-out", data.heldout_ids)):
        losses = loss_table(dump_dir, ids)
        base = losses[losses["method"] == UNSTEERED].set_index("concept_id")["loss"]
        plain = judge_scores(dump_dir, hypersteer[0], judged & set(ids), unsteered=True)
        for method in [*hypersteer, DIFFMEAN, PROMPTING, UNSTEERED]:
            mine = losses[losses["method"] == method].set_index("concept_id")["loss"]
            row = {"method": method, "concepts": label, "n_loss": len(mine)}
            row["loss_mean"], row["loss_std"] = _mean_std(mine)
            row["loss_below_unsteered"] = int((mine < base.reindex(mine.index)).sum())
            scores = (plain if method == UNSTEERED
                      else judge_scores(dump_dir, method, judged & set(ids)))
            row["n_judged"] = len(scores)
            for key in (*JUDGE_COLUMNS, "factor"):
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(scores[key])
            row["rise_mean"], row["rise_ci_low"], row["rise_ci_high"] = (
                concept_rise(scores, plain) if method != UNSTEERED else (np.nan,) * 3)
            rows.append(row)
    return pd.DataFrame(rows)


def concept_rise(scores: pd.DataFrame, plain: pd.DataFrame) -> tuple[float, float, float]:
    """Mean (method - unsteered) concept score over the judged concepts and its bootstrap
    interval: paired by concept, so whether a held-out concept is steered at all is read off one
    interval rather than off two means with wide spreads."""
    from ..demo.report import bootstrap_ci

    mine = scores.set_index("concept_id")["concept"]
    rise = (mine - plain.set_index("concept_id")["concept"].reindex(mine.index)).to_numpy(float)
    return (float(np.nanmean(rise)) if rise.size else float("nan"), *bootstrap_ci(rise))


def render_table(rows: pd.DataFrame) -> str:
    header = ["Method", "Concepts", "Steering loss ↓", "< unsteered", "Overall", "Concept",
              "Concept rise [95% CI]", "Instruction", "Fluency", "Factor"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in rows.iterrows():
        cells = [r["method"], r["concepts"], f"{r['loss_mean']:.3f} ± {r['loss_std']:.3f}",
                 f"{r['loss_below_unsteered']}/{r['n_loss']}"]
        judge = [f"{r[f'{k}_mean']:.3f} ± {r[f'{k}_std']:.3f}" for k in JUDGE_COLUMNS]
        rise = ("—" if np.isnan(r["rise_mean"]) else
                f"{r['rise_mean']:+.3f} [{r['rise_ci_low']:.2f}, {r['rise_ci_high']:.2f}]")
        cells += [*judge[:2], rise, *judge[2:]]
        cells.append("—" if np.isnan(r["factor_mean"]) else f"{r['factor_mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(dump_dir: Path) -> str:
    path = dump_dir / SWEEP_FILE
    if not path.exists():
        return "The steering layer was fixed by the config (no sweep).\n"
    sweep = read_json(path)
    lines = [f"Criterion: {sweep['criterion']} (concepts {sweep['concepts']}); chosen: layer "
             f"**{sweep['chosen_layer']}**.", "",
             "| layer | unsteered loss | DiffMean loss | its factor | ‖DiffMean‖ |", "|---|---|---|---|---|"]
    for r in sweep["layers"]:
        lines.append(f"| {r['layer']} | {r['unsteered']:.3f} | {r['diffmean']:.3f} | "
                     f"{r['factor']:g} | {r['vector_norm']:.2f} |")
    return "\n".join(lines) + "\n"


def training_table(dump_dir: Path, cfg: RealConfig) -> str:
    lines = ["| method | updates | examples | first loss | last loss | examples/s |",
             "|---|---|---|---|---|---|"]
    for variant in cfg.variants:
        path = dump_dir / "train" / VARIANT_METHODS[variant] / "train_summary.json"
        if path.exists():
            s = read_json(path)
            lines.append(f"| {s['method']} | {s['steps']} | {s['train_examples']} | "
                         f"{s['first_loss']:.3f} | {s['last_loss']:.3f} | {s['examples_per_s']:.2f} |")
    return "\n".join(lines) + "\n"


def write_real_report(dump_dir: str | Path, cfg: RealConfig, data: RealData, judge_label: str,
                      layer: int) -> Path:
    """``report/report.md`` and ``report/results.csv``; prints the table."""
    from ..demo.report import criterion_curves
    from ..stages.plots import criteria_vs_factor_figure, save_figure

    dump_dir = Path(dump_dir)
    out = dump_dir / "report"
    rows = table_rows(dump_dir, cfg, data)
    atomic_write(out / "results.csv", lambda tmp: rows.to_csv(tmp, index=False))
    table = render_table(rows)
    xattn = VARIANT_METHODS[cfg.variants[0]]
    judged = set(judged_concepts(data, cfg))
    curves = {label: criterion_curves(dump_dir, xattn, judged & set(ids))
              for label, ids in (("held-in", data.heldin_ids), ("held-out", data.heldout_ids))}
    save_figure(criteria_vs_factor_figure(curves, f"{xattn} on {cfg.model}"),
                out / "score_vs_factor.png")
    timings = read_json(dump_dir / TIMINGS_FILE) if (dump_dir / TIMINGS_FILE).exists() else {}
    n_judged_in = len(judged & set(data.heldin_ids))
    md = [f"# HyperSteer on {cfg.model}: held-in and held-out", "",
          f"Base LM `{cfg.model}`, steering layer {layer}; {len(data.heldin_ids)} training "
          f"concepts ({len(data.train)} examples), {len(data.heldout_ids)} held-out concepts "
          f"(`{cfg.heldout_set}`, never seen in training). Judge: {judge_label}.", "",
          f"Steering loss: mean answer cross-entropy on each concept's reference answers that "
          f"no method trained on ({cfg.eval_examples} per held-in concept, "
          f"{cfg.heldout_eval_examples} per held-out one; half choose DiffMean's factor, half "
          f"report), mean ± std over concepts; `< unsteered`: concepts whose loss is below the "
          f"unsteered model's. Judge scores (0-2) on {cfg.eval_prompts} generic instructions per "
          f"concept ({n_judged_in} held-in and {len(data.heldout_ids)} held-out concepts), factor "
          f"chosen on half of them; concept rise: the concept score minus the same concept's "
          f"unsteered score, with a 95% bootstrap interval over concepts. DiffMean on held-out "
          f"concepts is fitted on those concepts' own rows (a supervised oracle); HyperSteer "
          f"never sees them. Unsteered: factor 0.", "",
          table, "![score vs factor](score_vs_factor.png)", "", "## Layer sweep", "",
          sweep_table(dump_dir), "## Training", "", training_table(dump_dir, cfg),
          "## Time (this dump, wall / CPU seconds)", "",
          "".join(f"- {k}: {v['wall_s']:.0f} / {v['cpu_s']:.0f}\n" for k, v in timings.items())]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(md))
    print(table, end="")
    return report
