"""Fig. 2a-c of the paper from run directories.

A runs folder holds one sub-folder per app (``node_regression``, ``power_allocation``,
``link_scheduling``). Under it, the run directory of an approach is found wherever the apps write one::

    <runs>/<app>/<approach>/               what ``--quick`` and ``--reproduce`` write (``--out <runs>/<app>``)
    <runs>/<app>/<timestamp>/<approach>/   the apps' default layout (no ``--out``, or several approaches)
    <runs>/<app>/<name>/                   a single approach run with ``--out``; its config.json names it

and the newest run of each approach is drawn (:func:`find_runs`: newest by the ``started`` time of its
config.json, else by the folder's modification time), so a figure shows whatever was run last. The
approaches are those of the paper's curves:

    node_regression:  c-sgd c-adam d-naive d-naive-pb d-sgd d-adam d-amsgrad
    power_allocation: c-adam d-adam d-gcp-adam
    link_scheduling:  c-adam d-adam

Each figure is drawn from whatever of its runs exist; the runs that are missing are returned by name
so the caller can report them. A run whose metrics.csv, summary.json or config.json cannot be used (not
valid CSV or JSON, a missing column, a value of the wrong type) is skipped and counted as missing, and
one line naming the file and the problem goes to the caller's ``problems`` list. A run still in
progress (no summary.json yet) is drawn to its last checkpointed epoch and labelled so; a curve with no point
the log axes of Fig. 2a can show (a run that diverged in its first epoch has only its initial model, at 0
rounds) is named in the legend with why, and the figure says so if no curve has one. Legends name
the optimizers as :data:`apps.common.cli.LABELS` does, with the variant where it matters ("D-Adam
(DADAM)", "D-Adam (authors' variant)", "D-GCP-Adam (K = 5)"). Figures are written as PNG and PDF,
atomically, into ``out`` (created if missing); a figure without any run is not written at all.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from apps.common.cli import LABELS
from apps.common.plots import drawable, log_scales, not_drawn
from apps.common.plots import legend_below as _legend
from apps.common.plots import new_figure as _new_figure
from apps.common.plots import save_figure as _save
from core.runs import CONFIG, METRICS, SUMMARY

NODE_REGRESSION = ("c-sgd", "c-adam", "d-naive", "d-naive-pb", "d-sgd", "d-adam", "d-amsgrad")
POWER_ALLOCATION = ("c-adam", "d-adam", "d-gcp-adam")
LINK_SCHEDULING = ("c-adam", "d-adam")
NOISE_FLOOR = 0.01  # App A's label noise variance, unless its runs record another


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


@dataclass
class Run:
    """One approach's run directory as a figure reads it."""

    path: Path
    rows: list[dict]
    summary: dict  # {} while the run is in progress
    finished: bool  # whether it has a summary.json
    config: dict = field(default_factory=dict)  # {} when absent or unreadable (used for labels only)


# ---------------------------------------------------------------------------- finding runs
def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _config_or_empty(run: Path) -> dict:
    """A run's config.json, or {} if it has none or it cannot be read (only finding and labelling use this)."""
    try:
        document = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def started(run: Path) -> float:
    """When ``run`` was started: its config.json's ``started`` time (POSIX seconds), else the folder's mtime."""
    stamp = _config_or_empty(run).get("started")
    if isinstance(stamp, str):
        for parse in (lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S%z"), datetime.fromisoformat):
            try:
                return parse(stamp).timestamp()
            except (ValueError, OverflowError, OSError):
                continue
    try:
        return run.stat().st_mtime
    except OSError:
        return float("-inf")


def _newest(runs: list[Path]) -> Path:
    def key(run: Path):
        try:
            mtime = run.stat().st_mtime
        except OSError:
            mtime = float("-inf")
        return started(run), mtime, str(run)

    return max(runs, key=key)


def find_runs(app_dir: Path, approaches: Sequence[str], problems: list[str] | None = None) -> dict[str, Path]:
    """The newest run directory (one with a metrics.csv) of each of ``approaches`` under ``app_dir``:
    ``app_dir/<approach>/``, ``app_dir/<group>/<approach>/``, or a single-approach run ``app_dir/<name>/``
    whose config.json names the approach. Approaches without any run are left out. A run whose config.json
    names its approach with something other than a string is skipped, one line for ``problems``."""
    candidates: dict[str, list[Path]] = {name: [] for name in approaches}

    def consider(folder: Path, name: str | None) -> None:
        if name in candidates and (folder / METRICS).is_file():
            candidates[name].append(folder)

    for child in _subfolders(app_dir):
        if (child / METRICS).is_file():  # a run: <approach>/, or one approach in a folder of another name
            if child.name in candidates:
                consider(child, child.name)
                continue
            config = _config_or_empty(child)
            key = "optimizer" if "optimizer" in config else "approach"  # "approach": runs before 0.2
            name = config.get(key)
            if name is not None and not isinstance(name, str):  # a list or a number cannot name one approach
                if problems is not None:
                    problems.append(f"{child / CONFIG}: {key} must be a string, got {json.dumps(name)}")
                continue
            consider(child, name)
        else:  # a group of approaches (<timestamp>/ or any --out), or a run that has logged nothing yet
            for grandchild in _subfolders(child):
                consider(grandchild, grandchild.name)
    return {name: _newest(found) for name, found in candidates.items() if found}


# ---------------------------------------------------------------------------- reading runs
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
          summary_checks: dict | None = None, need_summary: bool = False) -> tuple[dict[str, Run], list[str]]:
    """``{approach: Run}`` of the newest usable run of each approach, and the missing runs: ``<app>/<approach> (no
    run under app_dir)`` for an approach without any, or the run skipped for a bad file (its problem appended to
    ``problems``), or without a summary where ``need_summary``."""
    found, missing = {}, []
    newest = find_runs(app_dir, approaches, problems)
    for name in approaches:
        run = newest.get(name)
        if run is None or (need_summary and not (run / SUMMARY).is_file()):
            # no run at all: the approach under the app's folder (<approach>/ or <group>/<approach>/)
            missing.append(str(run) if run is not None else f"{app_dir.name}/{name} (no run under {app_dir})")
            continue
        summary = run / SUMMARY
        try:
            rows = _read_metrics(run / METRICS, columns)
            document = _read_json(summary) if summary.is_file() else {}
            document = {RENAMED_SUMMARY_KEYS.get(k, k): v for k, v in document.items()}
            _check_entries(summary, document, summary_checks or {})
            config = _read_json(run / CONFIG) if (run / CONFIG).is_file() else {}  # labels and titles read it
        except BadRun as exc:
            if problems is not None:
                problems.append(str(exc))
            missing.append(str(run))
            continue
        if not rows:  # a run that has not logged anything yet
            missing.append(str(run))
            continue
        found[name] = Run(run, rows, document, summary.is_file(), config)
    return found, missing


# ---------------------------------------------------------------------------- labels and drawing
def label(name: str, config: dict) -> str:
    """The legend name of optimizer ``name`` (:data:`apps.common.cli.LABELS`) with what distinguishes its
    variant, from the run's config: D-Adam as DADAM or in the authors' variant, K of the gradient-consensus
    optimizers."""
    text = LABELS.get(name, name)
    flags = config.get("flags") if isinstance(config.get("flags"), dict) else {}
    if name == "d-adam":
        variant = flags.get("d_adam_variant")
        if variant == "paper":
            text += " (DADAM)"
        elif variant == "authors":
            text += " (authors' variant)"
    elif name in ("d-naive", "d-naive-pb", "d-gc-adam", "d-gcp-adam"):
        rounds = flags.get("consensus_rounds")
        if isinstance(rounds, int) and not isinstance(rounds, bool):
            text += f" (K = {rounds})"
    return text


def _legend_name(name: str, run: Run, unit: str = "epoch") -> str:
    """:func:`label`, and whether the run is still in progress (to which epoch it is drawn) or diverged."""
    text = label(name, run.config)
    try:
        last = f" {int(float(run.rows[-1]['epoch']))}"
    except (KeyError, TypeError, ValueError, OverflowError):
        last = ""
    diverged = run.summary.get("diverged")
    if not run.finished:
        text += f" (in progress: {unit}{last})"
    elif isinstance(diverged, dict):
        epoch = diverged.get("epoch")
        text += f" (diverged at {unit} {epoch})" if isinstance(epoch, int) else " (diverged)"
    return text


def _dataset_size(found: dict[str, Run], key: str) -> int | None:
    """An entry of the dataset's config (e.g. App B's pairs), if the runs record one and agree on it."""
    values = set()
    for run in found.values():
        dataset = run.config.get("dataset") if isinstance(run.config.get("dataset"), dict) else {}
        config = dataset.get("config") if isinstance(dataset.get("config"), dict) else {}
        value = dataset.get(key, config.get(key))
        values.add(value if isinstance(value, int) and not isinstance(value, bool) else None)
    return values.pop() if len(values) == 1 else None


def _note(ax, lines: list[str]) -> None:
    """Lines of explanation in small print between the figure's title and the plot."""
    import textwrap

    if lines:
        ax.set_title("\n".join(textwrap.fill(line, 100) for line in lines), fontsize=7, loc="left", color="0.2")


# line style, marker and width per approach of Fig. 2a: the centralized ones wide and solid, the
# distributed ones narrower and broken on top of them, so that curves that coincide (C-SGD and D-SGD)
# both stay visible
FIG2A_STYLES = {
    "c-sgd": ("C0", "-", 2.8, "o"), "c-adam": ("C1", "-", 2.8, "s"),
    "d-naive": ("C2", (0, (6, 2)), 1.4, "^"), "d-naive-pb": ("C3", "-.", 1.4, "v"),
    "d-sgd": ("C4", (0, (4, 2)), 1.4, "x"), "d-adam": ("C5", (0, (2, 1.5)), 1.4, "D"),
    "d-amsgrad": ("C6", (0, (8, 2, 2, 2)), 1.4, "*"),
}


def _noise_floor(found: dict[str, Run]) -> float:
    """The label-noise variance the App A runs were generated with (0.01 unless they say otherwise)."""
    for run in found.values():
        flags = run.config.get("flags") if isinstance(run.config.get("flags"), dict) else {}
        value = flags.get("noise_variance")
        if _number(value) and value > 0:
            return float(value)
    return NOISE_FLOOR


def _plain(value: float, _=None) -> str:
    return f"{value:.10g}"


def fig2a(runs: Path, out: Path, problems: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Test MSE vs message-passing rounds for the seven approaches (log-log), a marker every 200 mini-batches,
    the noise floor as a line; a second panel shows the curves near the floor on a linear scale."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    found, missing = _load(runs / "node_regression", NODE_REGRESSION, NODE_REGRESSION_COLUMNS, problems,
                           NODE_REGRESSION_SUMMARY)
    if not found:
        return [], missing
    floor = _noise_floor(found)
    plt, fig, (ax, near) = _new_figure(2, 7.0, height_ratios=(2.1, 1))
    lowest, best_end, drawn = [], [], False
    for name, run in found.items():
        rounds, mse, steps = (_column(run.rows, c) for c in ("mp_rounds", "test_mse", "step"))
        # the initial model sits at 0 rounds, off the log axes, and a diverged run's MSE is nan: a run that
        # diverged in its first epoch has nothing else, and is only named in the legend
        keep, reason = drawable(rounds, mse, logx=True, logy=True, xname="message-passing rounds", yname="test MSE")
        rounds, mse, steps = rounds[keep], mse[keep], steps[keep]
        drawn |= reason is None
        marks = [i for i, s in enumerate(steps) if s % 200 == 0] or None
        color, style, width, marker = FIG2A_STYLES[name]
        kwargs = dict(color=color, linestyle=style, linewidth=width, marker=marker, markersize=4.5 if width < 2 else 5,
                      markevery=marks, zorder=2 if width >= 2 else 3)
        ax.plot(rounds, mse, label=not_drawn(_legend_name(name, run), reason), **kwargs)
        near.plot(rounds, mse, **kwargs)
        if mse.size:
            lowest.append(mse.min())
            best_end.append(mse[-1])
    for axes in (ax, near):
        axes.axhline(floor, color="k", linestyle=(0, (1, 1.5)), linewidth=1.1, zorder=1,
                     label=f"noise floor ({floor:g})" if axes is ax else None)
        axes.grid(True, which="both", alpha=0.3)
    log_scales(ax, logx=True, logy=True)
    log_scales(near, logx=True)
    if not drawn:
        _note(ax, ["No run has a point after 0 message-passing rounds to draw (each diverged in its first epoch "
                   "or has logged only its initial model); the legend says why for each."])
    span = math.log10(max(ax.get_ylim()) / min(ax.get_ylim()))  # decades: label more values on a short axis
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0) if span > 1 else
                                          (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("test MSE")
    fig.suptitle("Node regression: test MSE against message-passing rounds")
    _legend(fig, ax, columns=4)
    # near the floor: from just below it (or the lowest curve) to 1.25 x the floor, or higher if no curve ends there
    low = min([floor, *lowest]) * 0.97
    high = max(1.25 * floor, 1.05 * min(best_end, default=floor))
    near.set_ylim(low, high)
    near.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=(1, 2, 2.5, 5, 10)))
    near.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4f}"))
    near.set_ylabel("test MSE, near the floor")
    near.set_xlabel("message-passing rounds")
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


# why a curve of Fig. 2b can end below WMMSE-Tr, or far below C-Adam (docs/design.md, section 8)
FIG2B_WHY = {
    "d-adam": "the nodes' local gradients are very uneven on UWMMSE, and the mean of their normalised Adam steps "
              "climbs slowly (docs/design.md, section 8)",
}
FIG2B_KEEPS_UP = "; D-GCP-Adam, gradient consensus before the Adam step, keeps up with C-Adam"
"""Added to D-Adam's note when the figure shows it: a finished D-GCP-Adam run within 10 % of C-Adam's gain
over WMMSE-Tr."""


def _keeps_up(curve, centralized, tr: float) -> bool:
    """Whether the finished run of ``curve`` ends within 10 % of the finished C-Adam run's gain over WMMSE-Tr."""
    if curve is None or centralized is None or not (curve[0].finished and centralized[0].finished):
        return False
    final = float(curve[0].rows[-1]["test_sum_rate"])
    top = float(centralized[0].rows[-1]["test_sum_rate"])
    return math.isfinite(final) and final - tr >= 0.9 * (top - tr)


def _style(name: str) -> dict:
    """Curves of centralized optimizers wide and solid, distributed ones narrower and dashed on top of them,
    so that curves that coincide (C-SGD and D-SGD, C-Adam and D-GCP-Adam) both stay visible."""
    if name.startswith("c-"):
        return {"linewidth": 2.8, "zorder": 2}
    return {"linewidth": 1.6, "linestyle": (0, (5, 1.5)), "zorder": 3}


def fig2b(runs: Path, out: Path, problems: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Test sum-rate in Mbps vs epoch of C-Adam, D-Adam and D-GCP-Adam, with WMMSE and WMMSE-Tr as lines; a
    note above the plot says why a curve ends below WMMSE-Tr or far below C-Adam, if one does."""
    app = runs / "power_allocation"
    found, missing = _load(app, POWER_ALLOCATION, POWER_ALLOCATION_COLUMNS, problems, POWER_ALLOCATION_SUMMARY)
    curves = {}
    for name, run in found.items():
        try:
            bandwidth = _bandwidth_hz(run.path, run.summary)
        except BadRun as exc:  # cannot convert to Mbps
            if problems is not None:
                problems.append(str(exc))
            missing.append(str(run.path))
            continue
        curves[name] = (run, bandwidth / 1e6)  # bit/s/Hz -> Mbps
    if not curves:
        return [], missing
    plt, fig, ax = _new_figure()
    # the baselines of the newest finished run (runs on another dataset would have other baselines)
    finished = sorted((started(run.path), name) for name, (run, _) in curves.items() if run.finished)
    reference, scale = (curves[finished[-1][1]][0].summary, curves[finished[-1][1]][1]) if finished else ({}, 0.0)
    notes = []
    tr = reference.get("wmmse_tr_test_sum_rate")
    centralized = curves.get("c-adam")
    for name, (run, mbps) in curves.items():
        rate = _column(run.rows, "test_sum_rate")
        ax.plot(_column(run.rows, "epoch"), rate * mbps, label=_legend_name(name, run), **_style(name))
        if tr is None or not run.finished or not np.isfinite(rate[-1]):
            continue
        epochs = int(float(run.rows[-1]["epoch"]))
        epochs, why = f"{epochs} epoch{'' if epochs == 1 else 's'}", FIG2B_WHY.get(name, "it needs more training")
        if name == "d-adam" and _keeps_up(curves.get("d-gcp-adam"), centralized, tr):
            why += FIG2B_KEEPS_UP
        if rate[-1] <= tr:
            notes.append(f"{label(name, run.config)} ends below WMMSE-Tr after {epochs}: {why}.")
        elif name != "c-adam" and centralized is not None and centralized[0].finished:
            top = float(centralized[0].rows[-1]["test_sum_rate"])
            if rate[-1] - tr < 0.5 * (top - tr):  # less than half of C-Adam's gain over WMMSE-Tr
                notes.append(f"{label(name, run.config)} trails C-Adam after {epochs}: {why}.")
    for key, text, style in (("wmmse_test_sum_rate", "WMMSE", "--"), ("wmmse_tr_test_sum_rate", "WMMSE-Tr", ":")):
        if key in reference:
            iterations = reference.get(key.replace("test_sum_rate", "iterations"))
            text += f" ({iterations} it.)" if isinstance(iterations, int) else ""
            ax.axhline(reference[key] * scale, linestyle=style, color="k", linewidth=1.2, label=text)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test sum-rate (Mbps)")
    pairs = _dataset_size(found, "pairs")
    fig.suptitle("UWMMSE power allocation" + (f", {pairs} transmitter-receiver pairs" if pairs else ""))
    ax.grid(True, alpha=0.3)
    _legend(fig, ax)
    _note(ax, notes)
    return _save(plt, fig, out, "fig2b_power_allocation"), missing


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points (odd), over fewer at the ends; NaNs are left out."""
    values = np.asarray(values, float)
    half = max(0, window // 2)
    valid = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    index = np.arange(values.size)
    lo, hi = np.maximum(index - half, 0), np.minimum(index + half + 1, values.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[hi] - sums[lo]) / (counts[hi] - counts[lo])


def smoothing_window(points: int) -> int:
    """The moving-average window of Fig. 2c's training curve: about 5 % of the points, odd, at least 5."""
    window = max(5, round(points / 20))
    return window + 1 - window % 2


MODE_TITLES = {"algorithm1": "Algorithm 1 loop", "authors": "the authors' loop"}


def fig2c(runs: Path, out: Path, problems: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """GCNN-LGS / LGS utility ratio vs mini-batch, centralized and distributed actor: the test ratio, and the
    training ratio (fresh weights every mini-batch, so noisy) as a moving average over the raw curve."""
    found, missing = _load(runs / "link_scheduling", LINK_SCHEDULING, LINK_SCHEDULING_COLUMNS, problems)
    if not found:
        return [], missing
    plt, fig, ax = _new_figure()
    windows = set()
    for name, run in found.items():  # the legend names each optimizer by its colour, and the curves by style
        minibatch = _column(run.rows, "epoch")  # one trainer epoch per mini-batch in this app
        train = _column(run.rows, "train_ratio")
        window = smoothing_window(len(train))
        windows.add(window)
        line, = ax.plot(minibatch, _column(run.rows, "test_ratio"), linewidth=2.0, zorder=3,
                        label=_legend_name(name, run, unit="mini-batch"))
        ax.plot(minibatch, train, color=line.get_color(), linewidth=0.7, alpha=0.25, zorder=1)
        ax.plot(minibatch, moving_average(train, window), color=line.get_color(), linestyle=(0, (4, 1.5)),
                linewidth=1.4, zorder=2)
    mean = f"mean of {windows.pop()} mini-batches" if len(windows) == 1 else "moving average"
    ax.plot([], [], color="0.35", linewidth=2.0, label="test")
    ax.plot([], [], color="0.35", linestyle=(0, (4, 1.5)), linewidth=1.4, label=f"train, {mean}")
    ax.plot([], [], color="0.35", linewidth=0.7, alpha=0.4, label="train, each mini-batch")
    ax.axhline(1.0, color="k", linewidth=0.9, label="LGS", zorder=1)
    modes = {run.config.get("mode") for run in found.values()}
    mode = MODE_TITLES.get(modes.pop()) if len(modes) == 1 else None
    ax.set_xlabel("mini-batch")
    ax.set_ylabel("utility ratio GCNN-LGS / LGS")
    links = _dataset_size(found, "vertices")
    fig.suptitle("Link scheduling" + (f" on conflict graphs of {links} links" if links else "")
                 + (f", {mode}" if mode else ""))
    ax.grid(True, alpha=0.3)
    _legend(fig, ax, columns=3)
    return _save(plt, fig, out, "fig2c_link_scheduling"), missing


# ---------------------------------------------------------------------------- what Table I compares with
def rounds_in_runs(runs: Path) -> dict[str, dict]:
    """What the node-regression runs recorded, by optimizer: ``{"rounds": rounds per mini-batch, "widths":
    g, "batch_size": B, "consensus_rounds": K}`` (each setting None when the run does not record it). The
    runs :func:`fig2a` skips are left out, silently: fig2a reports them."""
    found, _ = _load(runs / "node_regression", NODE_REGRESSION, NODE_REGRESSION_COLUMNS, None, NODE_REGRESSION_SUMMARY,
                     need_summary=True)
    counts = {}
    for name, run in found.items():
        if "mp_rounds_per_batch" not in run.summary:
            continue
        flags = run.config.get("flags") if isinstance(run.config.get("flags"), dict) else {}
        hidden, inputs = flags.get("hidden"), flags.get("input_dim")
        widths = None
        if isinstance(hidden, list) and all(isinstance(h, int) for h in hidden) and isinstance(inputs, int):
            widths = (inputs, *hidden, 1)
        setting = {k: flags.get(k) if isinstance(flags.get(k), int) else None
                   for k in ("batch_size", "consensus_rounds")}
        counts[name] = {"rounds": run.summary["mp_rounds_per_batch"], "widths": widths, **setting}
    return counts
