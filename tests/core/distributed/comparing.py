"""What the MPI case scripts share: the tolerances, the comparison of an MPI run with the in-process one, a run
directory's metrics.csv as numbers, running an app in-process inside a rank, and a barrier that sleeps while it
waits (imported by the case modules and tests; no side effects, no MPI import)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

RTOL, ATOL = 1e-10, 1e-12  # float64: MPI sums in another order than one process
COUNTS = ("epoch", "step", "mp_rounds", "floats_sent_per_node")
"""Columns that must be equal exactly (the logical counts)."""


def compare_rows(name: str, rows, ref_rows) -> None:
    """Rank 0: the logged rows of the MPI run against the in-process ones (counts exactly, the rest to RTOL/ATOL)."""
    assert len(rows) == len(ref_rows), (name, len(rows), len(ref_rows))
    for r, e in zip(rows, ref_rows):
        for k in e:
            if k == "wall_s":
                continue
            if k in COUNTS:
                assert r[k] == e[k], (name, k, r[k], e[k])
            else:
                np.testing.assert_allclose(r[k], e[k], rtol=RTOL, atol=ATOL, err_msg=f"{name}: {k}")


def metrics_rows(path: Path) -> list[dict]:
    """The rows of a metrics.csv, the counts as int and the other columns as float (for :func:`compare_rows`)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k in COUNTS else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def compare(name: str, rows, theta, ref_rows, ref_theta) -> None:
    """Rank 0: rows and the final parameters of the MPI run against the in-process one."""
    compare_rows(name, rows, ref_rows)
    np.testing.assert_allclose(theta, ref_theta, rtol=RTOL, atol=ATOL, err_msg=f"{name}: parameters")


def in_process(ex, argv: list[str]) -> int:
    """Rank 0: the app of experiment module ``ex`` as one process, although started by mpiexec."""
    from apps.common.main import World, run_experiment

    saved, ex.WORLD = ex.WORLD, World()
    try:
        return run_experiment(ex.PROG, argv, ex.parse_args, ex.plan, ex.execute, lambda *a: None, world=World())
    finally:
        ex.WORLD = saved


def wait_for_all(comm, poll_s: float = 0.002) -> None:
    """A barrier on ``comm`` that sleeps while it waits.

    ``MPI_Barrier`` spins: while rank 0 trains an in-process reference, the other ranks waiting for it would
    take the cores it runs on (two launches side by side put five processes on the two cores of CI).
    """
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_s)
