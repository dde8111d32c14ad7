"""The robustness sweep's grid, its runs and their results (docs/design.md, section 12).

A sweep trains an app's distributed optimizers over imperfect links for a grid of packet-loss rates p and
receiver policies (``--on-loss``), with several seeds, and a centralized reference over perfect links. Every
run is the app itself, started as a child process (:mod:`apps.common.children`) with the link flags: one
*cell* (policy, p, seed) is one invocation that trains all the sweep's optimizers into its own grouped run
directory ``<out>/runs/<policy>/p<p>/seed<s>/<optimizer>/``. At p = 0 every policy is the same run (a link
model that loses nothing is bit for bit no model), so the lossless cell ``<out>/runs/lossless/seed<s>`` is
shared by all policies and also trains the reference. Cells run side by side (``--jobs``); a cell whose
approaches all have a summary is done, one with a config.json is continued with ``--resume``, so the sweep
is resumable as a whole. A diverged approach is a result (recorded as diverged), not a failure.

Results: ``sweep.csv`` (a row per trained approach: cell, optimizer, final and best metric, realised loss rate,
extra rounds, message-passing rounds, diverged) and ``points.csv`` (per policy, p and optimizer: mean, min and
max over the seeds of the final metric, and how many seeds diverged).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apps.common.cli import LABELS


@dataclass(frozen=True)
class AppSpec:
    """What the sweep needs to know of one app: its module, the default grid (and ``--quick``'s), the summary
    metric drawn against p (``final_<metric>``) and the flags its runs get at paper scale and with --quick."""

    module: str
    optimizers: tuple[str, ...]  # the distributed optimizers swept by default
    reference: str  # centralized, trained over perfect links
    loss_probs: tuple[float, ...]
    policies: tuple[str, ...]
    seeds: int  # of the first policy
    metric: str
    metric_label: str
    log_metric: bool
    paper_flags: tuple[str, ...]
    quick: dict


APPS = {
    "node_regression": AppSpec(
        "apps.node_regression", ("d-sgd", "d-amsgrad", "d-naive-pb", "d-gt", "d-gt-adam"), "c-sgd",
        (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3), ("stale", "zero", "retransmit:1"), 3, "test_mse", "final test MSE",
        log_metric=True, paper_flags=(),
        quick={"loss_probs": (0.0, 0.1, 0.3), "optimizers": ("d-sgd", "d-amsgrad", "d-gt"), "policies": ("stale",),
               "seeds": 1, "flags": ("--preset", "quick")}),
    "power_allocation": AppSpec(
        "apps.power_allocation", ("d-adam", "d-gcp-adam", "d-gt-adam"), "c-adam", (0.0, 0.05, 0.2), ("stale",), 1,
        "test_sum_rate_mbps", "final test sum-rate (Mbps)", log_metric=False, paper_flags=("--epochs", "10"),
        quick={"loss_probs": (0.0, 0.2), "optimizers": ("d-adam", "d-gt-adam"), "policies": ("stale",), "seeds": 1,
               "flags": ("--preset", "quick")}),
}
"""App A's default grid is issue #16's paper-scale sweep; App B's its reduced one (10 epochs of the paper dataset).
``--quick`` for App A is what ``make demo`` draws: three loss rates; D-SGD, D-AMSGrad, D-GT; stale; one seed."""


def policy_folder(policy: str) -> str:
    """A folder name for a policy (``retransmit:1`` -> ``retransmit-1``)."""
    return policy.replace(":", "-")


def prob_folder(p: float) -> str:
    return f"p{p:g}"


@dataclass(frozen=True)
class Cell:
    """One invocation of the app: the sweep's optimizers (and at p = 0 the reference) for one policy, p and
    seed. ``policy`` is None for the lossless cell shared by all policies."""

    policy: str | None
    loss_prob: float
    seed: int
    optimizers: tuple[str, ...]

    @property
    def name(self) -> str:
        if self.policy is None:
            return f"lossless/seed{self.seed}"
        return f"{policy_folder(self.policy)}/{prob_folder(self.loss_prob)}/seed{self.seed}"

    def path(self, out: Path) -> Path:
        return out / "runs" / self.name

    def approach_path(self, out: Path, name: str) -> Path:
        """Where the app writes approach ``name`` of this cell: its own folder when the cell trains several
        (the app's grouped layout), the cell's folder itself when it trains one."""
        return self.path(out) / name if len(self.optimizers) > 1 else self.path(out)

    def link_flags(self) -> list[str]:
        if self.policy is None:
            return []
        return ["--loss-prob", f"{self.loss_prob:g}", "--on-loss", self.policy]


@dataclass(frozen=True)
class Grid:
    """The sweep: which app, optimizers, loss rates, policies and seeds (``seeds`` for the first policy, the
    one drawn with a spread; ``other_seeds`` for the others), the training seed of seed index 0, and the
    flags every run of the app gets (a preset, ``--epochs``, ``--data``, whatever was given after ``--``)."""

    app: str
    optimizers: tuple[str, ...]
    loss_probs: tuple[float, ...]
    policies: tuple[str, ...]
    seeds: int
    other_seeds: int
    base_seed: int = 0
    app_flags: tuple[str, ...] = ()
    reference: str = ""

    @property
    def spec(self) -> AppSpec:
        return APPS[self.app]

    def seeds_of(self, policy: str) -> list[int]:
        count = self.seeds if policy == self.policies[0] else self.other_seeds
        return [self.base_seed + k for k in range(count)]

    def cells(self) -> list[Cell]:
        """Every invocation: the lossless ones (one per seed any policy uses), then policy by policy."""
        seeds = sorted({s for policy in self.policies for s in self.seeds_of(policy)})
        lossless = tuple(self.optimizers) + ((self.reference,) if self.reference else ())
        cells = [Cell(None, 0.0, s, lossless) for s in seeds] if 0.0 in self.loss_probs else []
        for policy in self.policies:
            for p in self.loss_probs:
                if p > 0:
                    cells += [Cell(policy, p, s, tuple(self.optimizers)) for s in self.seeds_of(policy)]
        return cells

    def cell_of(self, policy: str, p: float, seed: int) -> Cell:
        """The cell holding a (policy, p, seed) point (the lossless one at p = 0)."""
        key = (None, 0.0) if p == 0 else (policy, p)
        return next(c for c in self.cells() if (c.policy, c.loss_prob, c.seed) == (*key, seed))

    def as_dict(self) -> dict:
        return {"app": self.app, "optimizers": list(self.optimizers), "loss_probs": list(self.loss_probs),
                "policies": list(self.policies), "seeds": self.seeds, "other_seeds": self.other_seeds,
                "base_seed": self.base_seed, "app_flags": list(self.app_flags), "reference": self.reference}


def cell_command(grid: Grid, cell: Cell, out: Path) -> list[str]:
    """The app's command line for ``cell``: a new run into its folder, or the ``--resume`` of the run there."""
    target = cell.path(out)
    if (target / "config.json").is_file():
        return [sys.executable, "-m", grid.spec.module, "--resume", str(target), "-q"]
    return [sys.executable, "-m", grid.spec.module, *grid.app_flags, "--optimizer", ",".join(cell.optimizers),
            "--seed", str(cell.seed), *cell.link_flags(), "--jobs", "1", "--out", str(target), "-q"]


def read_summary(path: Path) -> dict | None:
    import json

    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def cell_done(cell: Cell, out: Path) -> bool:
    """Every approach of the cell has its summary (finished, or diverged)."""
    return all(read_summary(cell.approach_path(out, name)) is not None for name in cell.optimizers)


def epochs_done(cell: Cell, out: Path) -> int:
    """Epochs logged so far by the cell's approaches (rows of their metrics.csv, the initial row excluded)."""
    total = 0
    for name in cell.optimizers:
        try:
            with open(cell.approach_path(out, name) / "metrics.csv", "rb") as f:
                total += max(sum(1 for _ in f) - 2, 0)  # header and the row of the untrained model
        except OSError:
            pass
    return total


@dataclass
class Row:
    """One trained approach of the sweep."""

    policy: str
    loss_prob: float
    seed: int
    optimizer: str
    final: float
    best: float
    diverged: bool
    loss_rate: float = 0.0
    extra_rounds: float = 0.0
    mp_rounds: float = 0.0

    def as_dict(self) -> dict:
        return {"policy": self.policy, "loss_prob": self.loss_prob, "seed": self.seed, "optimizer": self.optimizer,
                "label": LABELS.get(self.optimizer, self.optimizer), "final": self.final, "best": self.best,
                "diverged": int(self.diverged), "loss_rate": self.loss_rate, "extra_rounds": self.extra_rounds,
                "mp_rounds": self.mp_rounds}

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        """A row of sweep.csv as :meth:`as_dict` wrote it (strings); KeyError or ValueError if it is not one."""
        return cls(d["policy"], float(d["loss_prob"]), int(d["seed"]), d["optimizer"], float(d["final"]),
                   float(d["best"]), bool(int(d["diverged"])), float(d["loss_rate"]), float(d["extra_rounds"]),
                   float(d["mp_rounds"]))


def _first(summary: dict, *keys, default=0.0) -> float:
    for k in keys:
        if isinstance(summary.get(k), (int, float)):
            return float(summary[k])
    return default


def collect(grid: Grid, out: Path, fallback: dict | None = None) -> list[Row]:
    """Every approach's result, per policy (the lossless cells count for every policy at p = 0); approaches
    without a summary (not run yet, or stopped) are left out, or given their row of ``fallback`` (keyed by
    policy, p, seed and optimizer) if it has one."""
    metric = grid.spec.metric
    rows = []
    for policy in grid.policies:
        for p in grid.loss_probs:
            for seed in grid.seeds_of(policy):
                cell = grid.cell_of(policy, p, seed)
                for name in cell.optimizers:
                    s = read_summary(cell.approach_path(out, name))
                    if s is None:
                        if (policy, p, seed, name) in (fallback or {}):
                            rows.append(fallback[(policy, p, seed, name)])
                        continue
                    diverged = bool(s.get("diverged"))
                    final = _first(s, f"final_{metric}", default=math.nan)
                    rows.append(Row(policy, p, seed, name, math.nan if diverged else final,
                                    _first(s, f"best_{metric}", default=math.nan), diverged,
                                    _first(s, "packet_loss_rate"),
                                    _first(s, "extra_rounds"), _first(s, "mp_rounds")))
    return rows


def previous_rows(grid: Grid, path: Path, cells) -> dict:
    """The rows of a sweep.csv written before (``path``) that belong to ``cells``, keyed as :func:`collect`'s
    ``fallback``; none if the file is missing or not one this version wrote (results are never made up)."""
    import csv

    cells = set(cells)
    try:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
        previous = [Row.from_dict(r) for r in table]
    except (OSError, KeyError, ValueError, TypeError):
        return {}
    kept = {}
    for r in previous:
        if r.policy in grid.policies and r.loss_prob in grid.loss_probs and r.seed in grid.seeds_of(r.policy):
            if grid.cell_of(r.policy, r.loss_prob, r.seed) in cells:
                kept[(r.policy, r.loss_prob, r.seed, r.optimizer)] = r
    return kept


def points(rows: Sequence[Row]) -> list[dict]:
    """Per (policy, p, optimizer): the mean, min and max of the final metric over the seeds that did not
    diverge, the seeds run and diverged, and the mean of the total message-passing rounds."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.policy, r.loss_prob, r.optimizer), []).append(r)
    out = []
    for (policy, p, optimizer), group in groups.items():
        finite = [r.final for r in group if not r.diverged and math.isfinite(r.final)]
        out.append({"policy": policy, "loss_prob": p, "optimizer": optimizer,
                    "label": LABELS.get(optimizer, optimizer), "seeds": len(group),
                    "diverged": sum(r.diverged for r in group),
                    "mean": sum(finite) / len(finite) if finite else math.nan,
                    "min": min(finite) if finite else math.nan, "max": max(finite) if finite else math.nan,
                    "loss_rate": sum(r.loss_rate for r in group) / len(group),
                    "mp_rounds": sum(r.mp_rounds for r in group) / len(group)})
    return out
