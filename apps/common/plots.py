"""Plots the apps share: learning curves drawn into PNG files atomically, and the figure style of the paper's
figures and the robustness sweep (a figure with the legend below the plot, saved as PNG and PDF)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.runs import atomic_savefig


def drawable(x, y, logx: bool = False, logy: bool = False, xname: str = "x", yname: str = "y"):
    """(mask, reason): the points of the curve ``x, y`` that can be drawn (finite, and > 0 on a log axis), and
    None, or why there is none (e.g. every point of a run that diverged in its first epoch sits at 0 rounds,
    which a log x axis cannot show), for the curve's legend entry."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    finite = np.isfinite(x) & np.isfinite(y)
    mask = finite & (x > 0 if logx else True) & (y > 0 if logy else True)
    if mask.any():
        return mask, None
    if not finite.any():
        return mask, f"no finite {yname}" if x.size else "no point"
    if logx and not (finite & (x > 0)).any():
        return mask, f"no point at {xname} > 0"
    return mask, f"no {yname} > 0"


def not_drawn(label: str, reason: str | None) -> str:
    """``label`` with why its curve is not drawn, inside its trailing parenthesis if it has one."""
    if reason is None:
        return label
    if label.endswith(")"):
        return f"{label[:-1]}; not drawn: {reason})"
    return f"{label} (not drawn: {reason})"


def log_scales(ax, logx: bool = False, logy: bool = False) -> None:
    """Log scales on ``ax``. An axis with no positive data gets the range 1 to 10, where matplotlib would
    otherwise raise when it places the ticks (a figure whose every curve has nothing to draw), and one whose
    positive data is a single value (only a reference line) a decade around it, which matplotlib would warn about."""
    for log, axis in ((logx, "x"), (logy, "y")):
        if not log:
            continue
        low, high = getattr(ax.dataLim, f"interval{axis}")
        low = low if low > 0 else getattr(ax.dataLim, f"minpos{axis}")
        if not (np.isfinite(high) and high > 0):  # (the limits before the scale, which would autoscale to nothing)
            getattr(ax, f"set_{axis}lim")(1.0, 10.0)
        elif not low < high:
            getattr(ax, f"set_{axis}lim")(high / 10 ** 0.5, high * 10 ** 0.5)
        getattr(ax, f"set_{axis}scale")("log")


def plot_curves(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, title: str = "", logx: bool = False, logy: bool = False,
                markevery: int | None = None) -> None:
    """Draw ``label -> (x, y)`` curves into a PNG (atomically). Only the points a log axis can show are drawn
    (x > 0 on a log x, y > 0 on a log y, finite values); a curve without any is named in the legend with
    why, and a figure without any curve says so in its middle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        reasons = []
        for label, (x, y) in curves.items():
            x, y = np.asarray(x, float), np.asarray(y, float)
            keep, reason = drawable(x, y, logx, logy, xlabel, ylabel)
            reasons.append(reason)
            ax.plot(x[keep], y[keep], label=not_drawn(label, reason), marker="o" if markevery else None,
                    markersize=3, markevery=markevery)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        log_scales(ax, logx, logy)
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if all(r is not None for r in reasons):
            ax.text(0.5, 0.5, "nothing to draw", transform=ax.transAxes, ha="center", va="center", color="0.4")
        if len(curves) > 1 or any(r is not None for r in reasons):  # a lone curve's legend only to say why
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
