"""The ``runs`` fixture of the apps.figures tests: a small synthetic runs folder with every run the figures need."""

import json

import numpy as np
import pytest

from apps.figures import plots
from core.runs import atomic_write_csv


def write_run(folder, columns, rows, summary):
    folder.mkdir(parents=True)
    atomic_write_csv(folder / "metrics.csv", columns, rows)
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for k, name in enumerate(plots.NODE_REGRESSION):
        rows = [{"epoch": e, "step": 10 * e, "mp_rounds": 2010 * e, "test_mse": 0.2 / (1 + e + k)} for e in range(30)]
        write_run(root / "node_regression" / name, ("epoch", "step", "mp_rounds", "test_mse"), rows,
                  {"mp_rounds_per_batch": 201 if name.startswith("d-") else 200})
    for name in (*plots.POWER_ALLOCATION, *plots.POWER_ALLOCATION_EXTRA):
        rows = [{"epoch": e, "test_sum_rate": 16 + np.log1p(e)} for e in range(5)]
        write_run(root / "power_allocation" / name, ("epoch", "test_sum_rate"), rows,
                  {"bandwidth_hz": 5e6, "wmmse_test_sum_rate": 20.47, "wmmse_tr_test_sum_rate": 16.47})
    for name in plots.LINK_SCHEDULING:
        rows = [{"epoch": e, "test_ratio": 0.98 + 0.002 * e, "train_ratio": 0.97 + 0.002 * e} for e in range(20)]
        write_run(root / "link_scheduling" / name, ("epoch", "test_ratio", "train_ratio"), rows, {})
    return root
