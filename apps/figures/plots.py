"""Fig. 2a-c of the paper from run directories.

A runs folder holds one sub-folder per app, each with one run directory per approach, as the apps'
``--optimizer`` lists write them::

    <runs>/node_regression/<c-sgd|c-adam|d-naive|d-naive-pb|d-sgd|d-adam|d-amsgrad>/metrics.csv
    <runs>/power_allocation/<c-adam|d-adam>/{metrics.csv,summary.json,config.json}  (+ d-gcp-adam if present)
    <runs>/link_scheduling/<c-adam|d-adam>/{metrics.csv,summary.json}

Each figure is drawn from whatever of its runs exist; the runs that are missing are returned by name
so the caller can report them. A run whose metrics.csv, summary.json or config.json cannot be used (not
valid CSV or JSON, a missing column, a value of the wrong type) is skipped and counted as missing, and
one line naming the file and the problem goes to the caller's ``problems`` list. A run still in
progress (no summary.json yet) is drawn to its last checkpointed epoch and labelled so. Figures are
written as PNG and PDF, atomically, into ``out`` (created if missing); a figure without any run is not
written at all.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.runs import CONFIG, METRICS, SUMMARY, atomic_savefig

NODE_REGRESSION = ("c-sgd", "c-adam", "d-naive", "d-naive-pb", "d-sgd", "d-adam", "d-amsgrad")
POWER_ALLOCATION = ("c-adam", "d-adam")
POWER_ALLOCATION_EXTRA = ("d-gcp-adam",)  # drawn when present (the --reproduce runs have it); missing only if bad
LINK_SCHEDULING = ("c-adam", "d-adam")
LABELS = {"c-sgd": "C-SGD", "c-adam": "C-Adam", "d-naive": "D-naive", "d-naive-pb": "D-naive-PB",
          "d-sgd": "D-SGD", "d-adam": "D-Adam", "d-amsgrad": "D-AMSGrad", "d-gcp-adam": "D-GCP-Adam (K = 5)"}
SCHEDULING_LABELS = {"c-adam": "centralized", "d-adam": "distributed"}


class BadRun(ValueError):
    """A file of a run cannot be used; the message is one line "<file>: <problem>"."""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# the metrics.csv columns each figure plots, and the summary.json entries it reads (with their checks)
NODE_REGRESSION_COLUMNS = ("step", "mp_rounds", "test_mse")
POWER_ALLOCATION_COLUMNS = ("epoch", "test_sum_rate")
LINK_SCHEDULING_COLUMNS = ("epoch", "test_ratio", "train_ratio")
_COUNTERS = {"epoch", "step", "mp_rounds"}  # columns that must be finite (the others are metrics)
# summary.json keys renamed in version 0.2 (runs of older versions are read under the new names)
RENAMED_SUMMARY_KEYS = {"rounds_per_step": "mp_rounds_per_batch", "floats_per_step": "floats_sent_per_node_per_batch",
                        "floats_sent": "floats_sent_per_node", "optimizer_label": "label"}
NODE_REGRESSION_SUMMARY = {"mp_rounds_per_batch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                               "an integer >= 0")}
POWER_ALLOCATION_SUMMARY = {"bandwidth_hz": (lambda v: _number(v) and v > 0, "a positive number"),
                            "wmmse_test_sum_rate": (_number, "a finite number"),
                            "wmmse_tr_test_sum_rate": (_number, "a finite number")}


def _column(rows: Sequence[dict], name: str) -> np.ndarray:
    return np.asarray([float(r[name]) for r in rows], dtype=float)


def _read_json(path: Path) -> dict:
    """A JSON object from ``path`` (BadRun if it cannot be read, is not JSON, or is not an object)."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise BadRun(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise BadRun(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(document, dict):
        raise BadRun(f"{path}: not a JSON object (a JSON {type(document).__name__})")
    return document


def _read_metrics(path: Path, columns: Sequence[str]) -> list[dict]:
    """The rows of a metrics.csv, every value of ``columns`` a number (BadRun otherwise)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
    except OSError as exc:
        raise BadRun(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, csv.Error) as exc:  # bytes that are not UTF-8, a NUL byte, ...
        raise BadRun(f"{path}: not a readable CSV file ({' '.join(str(exc).split())})") from None
    if not header:  # the apps always write the header, even before the first row
        raise BadRun(f"{path}: empty, not even a header line")
    absent = [c for c in columns if c not in header]
    if absent:
        raise BadRun(f"{path}: no column {', '.join(absent)} in the header")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for name in columns:
            value = row[name]
            try:
                number = float(value)
            except (TypeError, ValueError):
                shown = "missing" if value is None or value == "" else f"{value!r}, not a number"
                raise BadRun(f"{path}: line {line}: {name} is {shown}") from None
            if name in _COUNTERS and not math.isfinite(number):  # (a metric may be nan: a diverged run)
                raise BadRun(f"{path}: line {line}: {name} is {value!r}, not a finite number")
    return rows


def _check_entries(path: Path, document: dict, checks: dict) -> None:
    for key, (valid, expected) in checks.items():
        if key in document and not valid(document[key]):
            raise BadRun(f"{path}: {key} must be {expected}, got {json.dumps(document[key])}")


def _load(app_dir: Path, approaches: Sequence[str], columns: Sequence[str], problems: list[str] | None,
          summary_checks: dict | None = None, need_summary: bool = False, optional: bool = False):
    """``{approach: (rows, summary)}`` of the finished-enough runs, and the missing run paths (absent ones
    only unless ``optional``; skipped ones always, their problem appended to ``problems``)."""
    found, missing = {}, []
    for name in approaches:
        run = app_dir / name
        metrics, summary = run / METRICS, run / SUMMARY
        if not metrics.is_file() or (need_summary and not summary.is_file()):
            if not optional:
                missing.append(str(run))
            continue
        try:
            rows = _read_metrics(metrics, columns)
            document = _read_json(summary) if summary.is_file() else {}
            if isinstance(document, dict):
                document = {RENAMED_SUMMARY_KEYS.get(k, k): v for k, v in document.items()}
            _check_entries(summary, document, summary_checks or {})
        except BadRun as exc:
            if problems is not None:
                problems.append(str(exc))
            missing.append(str(run))
            continue
        if not rows:  # a run that has not logged anything yet
            if not optional:
                missing.append(str(run))
            continue
        found[name] = (rows, document)
    return found, missing


def _new_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.4, 4.4))


def _save(plt, fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    try:
        out.mkdir(parents=True, exist_ok=True)  # only now: a call with nothing to draw writes nothing
        fig.tight_layout()
        for path in paths:
            atomic_savefig(fig, path, dpi=150)
    finally:
        plt.close(fig)
    return paths


def fig2a(runs: Path, out: Path, problems: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Test MSE vs message-passing rounds for the seven approaches (log x); marker every 200 mini-batches."""
    found, missing = _load(runs / "node_regression", NODE_REGRESSION, NODE_REGRESSION_COLUMNS, problems,
                           NODE_REGRESSION_SUMMARY)
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


def _bandwidth_hz(run: Path, summary: dict) -> float:
    """The dataset bandwidth of an App B run: from its summary, or from its config while it runs (BadRun if
    neither has it)."""
    if "bandwidth_hz" in summary:
        return float(summary["bandwidth_hz"])
    config = run / CONFIG
    if not config.is_file():
        raise BadRun(f"{config}: missing (without a bandwidth_hz in summary.json the run needs its "
                     "dataset.bandwidth_hz)")
    dataset = _read_json(config).get("dataset")
    bandwidth = dataset.get("bandwidth_hz") if isinstance(dataset, dict) else None
    if not (_number(bandwidth) and bandwidth > 0):
        shown = "missing" if bandwidth is None else f"{json.dumps(bandwidth)}, not a positive number"
        raise BadRun(f"{config}: dataset.bandwidth_hz is {shown}")
    return float(bandwidth)


def fig2b(runs: Path, out: Path, problems: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Test sum-rate in Mbps vs epoch, centralized and distributed, with WMMSE and WMMSE-Tr as lines."""
    app = runs / "power_allocation"
    found, missing = _load(app, POWER_ALLOCATION, POWER_ALLOCATION_COLUMNS, problems, POWER_ALLOCATION_SUMMARY)
    extra, skipped = _load(app, POWER_ALLOCATION_EXTRA, POWER_ALLOCATION_COLUMNS, problems, POWER_ALLOCATION_SUMMARY,
                           optional=True)
    found.update(extra)
    missing += skipped
    curves = {}
    for name, (rows, summary) in found.items():
        try:
            bandwidth = _bandwidth_hz(app / name, summary)
        except BadRun as exc:  # cannot convert to Mbps
            if problems is not None:
                problems.append(str(exc))
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


def fig2c(runs: Path, out: Path, problems: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """GCNN-LGS / LGS utility ratio vs mini-batch: centralized and distributed actor, train and test."""
    found, missing = _load(runs / "link_scheduling", LINK_SCHEDULING, LINK_SCHEDULING_COLUMNS, problems)
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
    """Rounds per mini-batch that the node-regression runs recorded, by optimizer (the runs :func:`fig2a`
    skips are left out, silently: fig2a reports them)."""
    found, _ = _load(runs / "node_regression", NODE_REGRESSION, NODE_REGRESSION_COLUMNS, None, NODE_REGRESSION_SUMMARY,
                     need_summary=True)
    return {name: summary["mp_rounds_per_batch"] for name, (_, summary) in found.items()
            if "mp_rounds_per_batch" in summary}
