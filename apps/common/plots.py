"""Plots the apps share: learning curves drawn into PNG files atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

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
