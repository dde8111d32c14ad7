"""Fig. 2a-c of the paper from run directories.

A runs folder holds one sub-folder per app, each with one run directory per approach, as the apps'
``--optimizer`` lists write them::

    <runs>/node_regression/<c-sgd|c-adam|d-naive|d-naive-pb|d-sgd|d-adam|d-amsgrad>/metrics.csv
    <runs>/power_allocation/<c-adam|d-adam>/{metrics.csv,summary.json,config.json}  (+ d-gcp-adam if present)
    <runs>/link_scheduling/<c-adam|d-adam>/{metrics.csv,summary.json}

Each figure is drawn from whatever of its runs exist; the runs that are missing are returned by name
so the caller can report them. A run still in progress (no summary.json yet) is drawn to its last
checkpointed epoch and labelled so. Figures are written as PNG and PDF, atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.runs import CONFIG, METRICS, SUMMARY, atomic_savefig, read_csv

NODE_REGRESSION = ("c-sgd", "c-adam", "d-naive", "d-naive-pb", "d-sgd", "d-adam", "d-amsgrad")
POWER_ALLOCATION = ("c-adam", "d-adam")
POWER_ALLOCATION_EXTRA = ("d-gcp-adam",)  # drawn when present (the --reproduce runs have it), never missing
LINK_SCHEDULING = ("c-adam", "d-adam")
LABELS = {"c-sgd": "C-SGD", "c-adam": "C-Adam", "d-naive": "D-naive", "d-naive-pb": "D-naive-PB",
          "d-sgd": "D-SGD", "d-adam": "D-Adam", "d-amsgrad": "D-AMSGrad", "d-gcp-adam": "D-GCP-Adam (K = 5)"}
SCHEDULING_LABELS = {"c-adam": "centralized", "d-adam": "distributed"}


def _column(rows: Sequence[dict], name: str) -> np.ndarray:
    return np.asarray([float(r[name]) for r in rows], dtype=float)


def _load(app_dir: Path, approaches: Sequence[str], need_summary: bool = False):
    """``{approach: (rows, summary)}`` of the finished-enough runs, and the missing run paths."""
    found, missing = {}, []
    for name in approaches:
        metrics, summary = app_dir / name / METRICS, app_dir / name / SUMMARY
        if not metrics.is_file() or (need_summary and not summary.is_file()):
            missing.append(str(app_dir / name))
            continue
        rows = read_csv(metrics)
        if not rows:
            missing.append(str(app_dir / name))
            continue
        found[name] = (rows, json.loads(summary.read_text()) if summary.is_file() else {})
    return found, missing


def _new_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.4, 4.4))


def _save(plt, fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    try:
        fig.tight_layout()
        for path in paths:
            atomic_savefig(fig, path, dpi=150)
    finally:
        plt.close(fig)
    return paths


def fig2a(runs: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Test MSE vs message-passing rounds for the seven approaches (log x); marker every 200 mini-batches."""
    found, missing = _load(runs / "node_regression", NODE_REGRESSION)
    if not found:
        return [], missing
    plt, fig, ax = _new_figure()
    for name, (rows, _) in found.items():
        rounds, mse, steps = _column(rows, "mp_rounds"), _column(rows, "test_mse"), _column(rows, "step")
        keep = rounds > 0  # the initial model sits at 0 rounds, off a log axis
        marks = [i for i, s in enumerate(steps[keep]) if s % 200 == 0]
        ax.plot(rounds[keep], mse[keep], label=LABELS[name], marker="o", markersize=3, markevery=marks or None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("message-passing rounds")
    ax.set_ylabel("test MSE")
    ax.set_title("Node regression (Fig. 2a)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(plt, fig, out, "fig2a_node_regression"), missing


def _bandwidth_hz(run: Path, summary: dict) -> float | None:
    """The dataset bandwidth of an App B run: from its summary, or from its config while it runs."""
    if "bandwidth_hz" in summary:
        return float(summary["bandwidth_hz"])
    try:
        return float(json.loads((run / CONFIG).read_text())["dataset"]["bandwidth_hz"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fig2b(runs: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Test sum-rate in Mbps vs epoch, centralized and distributed, with WMMSE and WMMSE-Tr as lines."""
    app = runs / "power_allocation"
    found, missing = _load(app, POWER_ALLOCATION)
    found.update(_load(app, POWER_ALLOCATION_EXTRA)[0])
    curves = {}
    for name, (rows, summary) in found.items():
        bandwidth = _bandwidth_hz(app / name, summary)
        if bandwidth is None:  # neither a summary nor a readable config: cannot convert to Mbps
            if name in POWER_ALLOCATION:
                missing.append(str(app / name))
            continue
        curves[name] = (rows, summary, bandwidth / 1e6)  # bit/s/Hz -> Mbps
    if not curves:
        return [], missing
    plt, fig, ax = _new_figure()
    for name, (rows, summary, mbps) in curves.items():
        label = f"UWMMSE, {LABELS[name]}"
        if not summary:
            label += f" (in progress: epoch {int(float(rows[-1]['epoch']))})"
        ax.plot(_column(rows, "epoch"), _column(rows, "test_sum_rate") * mbps, label=label)
    finished = [(summary, mbps) for _, summary, mbps in curves.values() if summary]
    summary, mbps = finished[0] if finished else ({}, 0.0)
    for key, label, style in (("wmmse_test_sum_rate", "WMMSE", "--"), ("wmmse_tr_test_sum_rate", "WMMSE-Tr", ":")):
        if key in summary:
            ax.axhline(summary[key] * mbps, linestyle=style, color="k", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test sum-rate (Mbps)")
    ax.set_title("UWMMSE power allocation (Fig. 2b)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(plt, fig, out, "fig2b_power_allocation"), missing


def fig2c(runs: Path, out: Path) -> tuple[list[Path], list[str]]:
    """GCNN-LGS / LGS utility ratio vs mini-batch: centralized and distributed actor, train and test."""
    found, missing = _load(runs / "link_scheduling", LINK_SCHEDULING)
    if not found:
        return [], missing
    plt, fig, ax = _new_figure()
    for name, (rows, _) in found.items():
        minibatch = _column(rows, "epoch")  # one trainer epoch per mini-batch in this app
        label = SCHEDULING_LABELS[name]
        line, = ax.plot(minibatch, _column(rows, "test_ratio"), label=f"{label}, test")
        ax.plot(minibatch, _column(rows, "train_ratio"), linestyle=":", color=line.get_color(),
                label=f"{label}, train")
    ax.axhline(1.0, color="k", linewidth=0.8, label="LGS")
    ax.set_xlabel("mini-batch")
    ax.set_ylabel("utility ratio GCNN-LGS / LGS")
    ax.set_title("Link scheduling (Fig. 2c)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(plt, fig, out, "fig2c_link_scheduling"), missing


def rounds_in_runs(runs: Path) -> dict[str, int]:
    """Rounds per mini-batch that the node-regression runs recorded, by optimizer."""
    found, _ = _load(runs / "node_regression", NODE_REGRESSION, need_summary=True)
    return {name: int(summary["rounds_per_step"]) for name, (_, summary) in found.items()
            if "rounds_per_step" in summary}
