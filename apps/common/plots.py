"""Plots the apps share: learning curves drawn into PNG files atomically, and the figure style of the paper's
figures and the robustness sweep (a figure with the legend below the plot, saved as PNG and PDF)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.runs import atomic_savefig


def plot_curves(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, title: str = "", logx: bool = False, logy: bool = False,
                markevery: int | None = None) -> None:
    """Draw ``label -> (x, y)`` curves into a PNG (atomically). Points with x <= 0 are dropped on a log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for label, (x, y) in curves.items():
            x, y = np.asarray(x, float), np.asarray(y, float)
            keep = (x > 0) if logx else np.ones_like(x, bool)
            ax.plot(x[keep], y[keep], label=label, marker="o" if markevery else None, markersize=3,
                    markevery=markevery)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if len(curves) > 1:
            ax.legend()
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=120)
    finally:
        plt.close(fig)


def new_figure(rows: int = 1, height: float = 4.8, cols: int = 1, width: float = 6.4, **gridspec):
    """(pyplot, figure, axes): rows x cols panels (rows share x, columns share y), constrained layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=True, gridspec_kw=gridspec or None,
                             sharex=rows > 1, sharey=cols > 1, layout="constrained")
    return plt, fig, axes


def legend_below(fig, ax, columns: int = 3) -> None:
    """The legend of every figure: below the plot, so that it never hides a curve; in fewer than ``columns``
    columns when long entries (a run in progress) would not fit the figure's width side by side."""
    handles, labels = ax.get_legend_handles_labels()
    longest = max((len(text) for text in labels), default=1)
    fits = int(fig.get_figwidth() * 150 // (8.5 * longest + 50))  # at 8 pt, ~8.5 px per character at 150 dpi
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(columns, fits)), fontsize=8,
               frameon=False)


def save_figure(plt, fig, out: Path, stem: str) -> list[Path]:
    """``out/<stem>.png`` and ``.pdf`` at 150 dpi, atomically (``out`` is created only now); closes the figure."""
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    try:
        out.mkdir(parents=True, exist_ok=True)  # only now: a call with nothing to draw writes nothing
        for path in paths:
            atomic_savefig(fig, path, dpi=150)
    finally:
        plt.close(fig)
    return paths
