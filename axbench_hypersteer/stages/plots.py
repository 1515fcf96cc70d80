"""Figures for the steering report.

They are drawn on a bare ``Figure`` with an Agg canvas rather than through ``pyplot``: the report runs
on headless machines and inside tests, and pyplot's global figure registry would leak figures (and
need a display backend) there. The functions take already-aggregated data so that they stay free of
the AxBench file format, which lives in :mod:`axbench_hypersteer.stages.report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..model.fileio import atomic_write

CRITERIA_BARS = (("concept", "Concept"), ("instruction", "Instruction"),
                 ("fluency", "Fluency"), ("overall", "Overall"))


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A bare Figure on an Agg canvas (no pyplot state, works headless); every figure of the
    report and the experiments starts here."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def score_vs_factor_figure(curves: Mapping[str, tuple[np.ndarray | None, np.ndarray]],
                           title: str) -> Figure:
    """One line per method: mean judge score against steering factor.

    A method without a factor sweep (``factors is None``) is drawn as a dashed horizontal line at its
    mean so that it still appears as exactly one line, as a reference level for the swept methods.
    """
    fig = new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    swept = [np.asarray(f, dtype=float) for f, _ in curves.values() if f is not None and len(f)]
    all_factors = np.concatenate(swept) if swept else np.array([])
    positive = all_factors[all_factors > 0]
    # Sweeps such as AxBench's SAE clamping span 0.4..100: a linear axis would squash most points.
    if positive.size == all_factors.size and positive.size and positive.max() / positive.min() > 20:
        ax.set_xscale("log")
    for method, (factors, means) in curves.items():
        if factors is None:
            level = float(np.nanmean(means)) if np.isfinite(means).any() else np.nan
            ax.axhline(level, linestyle="--", linewidth=1.2, label=f"{method} (no factor)")
        else:
            ax.plot(factors, means, marker="o", linewidth=1.5, label=method)
    ax.set_xlabel("steering factor")
    ax.set_ylabel("mean LM-judge score (0-2)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def criteria_figure(summary: pd.DataFrame, title: str) -> Figure:
    """Grouped bars per method: concept / instruction / fluency / overall at the selected factor.

    Error bars are the across-concept std, so a method whose mean hides a bimodal concept spread is
    visible at a glance.
    """
    fig = new_figure(max(6.0, 1.6 * len(summary) + 2.0), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    methods = list(summary["method"])
    x = np.arange(len(methods), dtype=float)
    width = 0.8 / len(CRITERIA_BARS)
    for i, (key, label) in enumerate(CRITERIA_BARS):
        means = summary[f"{key}_mean"].to_numpy(dtype=float)
        stds = np.nan_to_num(summary[f"{key}_std"].to_numpy(dtype=float))
        ax.bar(x + (i - (len(CRITERIA_BARS) - 1) / 2) * width, means, width, yerr=stds,
               capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=15)
    ax.set_ylabel("score at selected factor (0-2)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def criteria_vs_factor_figure(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                              title: str) -> Figure:
    """One panel per concept set (held-in, held-out), one line per criterion against the factor:
    the steering trade-off (concept up, instruction and fluency down) in one picture."""
    fig = Figure(figsize=(5.0 * len(curves) + 1.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(curves), sharey=True, squeeze=False)[0]
    for ax, (label, by_criterion) in zip(axes, curves.items()):
        for key, (factors, means) in by_criterion.items():
            ax.plot(factors, means, marker="o", linewidth=2.2 if key == "overall" else 1.4,
                    label=key)
        ax.set_xlabel("steering factor")
        ax.set_title(f"{label} concepts")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(-0.05, 2.05)
    axes[0].set_ylabel("mean score (0-2)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, out_png: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run leaves the old file or none)."""
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
