"""The ``runs`` fixture of the apps.figures tests: a small synthetic runs folder with every run the figures need,
in the layout ``--quick`` writes (``<runs>/<app>/<approach>/``), each run with the config.json entries the
figures read (flags, start time)."""

import json

import numpy as np
import pytest

from apps.figures import plots
from core.runs import atomic_write_csv

STARTED = "2026-12-01T10:00:00+0000"
# App A's quick setting: B = 20, K = 1, g = (10, 10, 1); rounds per mini-batch as the runs record them
NODE_REGRESSION_FLAGS = {"batch_size": 20, "consensus_rounds": 1, "hidden": [10], "input_dim": 10,
                         "noise_variance": 0.01, "d_adam_variant": "paper"}
ROUNDS = {"c-sgd": 40, "c-adam": 40, "d-naive": 80, "d-naive-pb": 42, "d-sgd": 41, "d-adam": 41, "d-amsgrad": 41}


def write_run(folder, columns, rows, summary, config=None):
    folder.mkdir(parents=True)
    atomic_write_csv(folder / "metrics.csv", columns, rows)
    (folder / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def node_regression_run(folder, name, k=0, rounds=None, started=STARTED):
    rows = [{"epoch": e, "step": 10 * e, "mp_rounds": 410 * e, "test_mse": 0.01 + 0.2 / (1 + e + k)} for e in range(30)]
    write_run(folder, ("epoch", "step", "mp_rounds", "test_mse"), rows,
              {"mp_rounds_per_batch": ROUNDS[name] if rounds is None else rounds},
              {"app": "node_regression", "optimizer": name, "started": started, "flags": NODE_REGRESSION_FLAGS})


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for k, name in enumerate(plots.NODE_REGRESSION):
        node_regression_run(root / "node_regression" / name, name, k)
    for name in plots.POWER_ALLOCATION:
        rows = [{"epoch": e, "test_sum_rate": 16 + np.log1p(e)} for e in range(5)]
        write_run(root / "power_allocation" / name, ("epoch", "test_sum_rate"), rows,
                  {"bandwidth_hz": 5e6, "wmmse_test_sum_rate": 20.47, "wmmse_tr_test_sum_rate": 16.47},
                  {"app": "power_allocation", "optimizer": name, "started": STARTED,
                   "flags": {"d_adam_variant": "paper", "consensus_rounds": 5}})
    for name in plots.LINK_SCHEDULING:
        rows = [{"epoch": e, "test_ratio": 0.98 + 0.002 * e, "train_ratio": 0.97 + 0.002 * e} for e in range(20)]
        write_run(root / "link_scheduling" / name, ("epoch", "test_ratio", "train_ratio"), rows, {},
                  {"app": "link_scheduling", "optimizer": name, "started": STARTED, "mode": "algorithm1",
                   "flags": {"d_adam_variant": "authors"}})
    return root


@pytest.fixture
def nr_run():
    """:func:`node_regression_run`, for tests that lay out runs of their own."""
    return node_regression_run
