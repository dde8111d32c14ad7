"""App A under MPI: cases that tests/core/distributed/trainer_cases.py runs with ``--app`` (not collected).

Every rank runs ``apps.node_regression`` with ``--backend mpi`` into a run directory that rank 0 alone
writes; rank 0 then runs the same flags in-process (``--backend local``) and compares metrics.csv (float64,
rtol 1e-10 / atol 1e-12; counts exactly), the logical counts of summary.json, and what config.json records
of the backend. Then the validation errors: ``--jobs 2`` and a graph with fewer nodes than ranks end every
rank with status 2, rank 0 alone printing the one line.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

from tests.core.distributed.comparing import ATOL, COUNTS, RTOL, wait_for_all
from tests.core.distributed.comparing import in_process as run_in_process


def node_regression_in_process(argv: list[str]) -> int:
    from apps.node_regression import experiment

    return run_in_process(experiment, argv)



def tiny(nodes: int) -> list[str]:
    return ["--nodes", str(nodes), "--train-samples", "16", "--test-samples", "4", "--input-dim", "6", "--hidden", "4",
            "--teacher-hidden", "5", "--batch-size", "4", "--epochs", "2", "--lr", "0.01", "--dtype", "float64",
            "-q", "--checkpoint-every", "1"]


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run(out: Path, rank: int, size: int, comm, ok) -> None:
    from apps.node_regression.experiment import main

    nodes = 12
    for approach, method in (("d-sgd", "metis"), ("c-sgd", "contiguous")):
        mpi_dir, local_dir = out / f"app_mpi_{approach}_p{size}", out / f"app_local_{approach}_p{size}"
        argv = [*tiny(nodes), "--optimizer", approach, "--seed", "3"]
        status = main([*argv, "--backend", "mpi", "--partition", method, "--out", str(mpi_dir)])
        assert status == 0, status
        if rank == 0:
            assert node_regression_in_process([*argv, "--no-jit", "--out", str(local_dir)]) == 0
            got, want = read_metrics(mpi_dir / "metrics.csv"), read_metrics(local_dir / "metrics.csv")
            assert len(got) == len(want) == 3, (len(got), len(want))
            for g, w in zip(got, want):
                for k in w:
                    if k == "wall_s":
                        continue
                    if k in COUNTS:
                        assert g[k] == w[k], (k, g[k], w[k])
                    else:
                        np.testing.assert_allclose(float(g[k]), float(w[k]), rtol=RTOL, atol=ATOL, err_msg=k)
            s_mpi = json.loads((mpi_dir / "summary.json").read_text())
            s_loc = json.loads((local_dir / "summary.json").read_text())
            for k in ("mp_rounds_per_batch", "floats_sent_per_node_per_batch", "mp_rounds", "floats_sent_per_node"):
                assert s_mpi[k] == s_loc[k], (k, s_mpi[k], s_loc[k])
            assert s_mpi["mpi_ranks"] == size and len(s_mpi["mpi_bytes_sent_per_batch"]) == size, s_mpi
            backend = json.loads((mpi_dir / "config.json").read_text())["backend"]
            assert backend["backend"] == "mpi" and backend["ranks"] == size and backend["partition"] == method, backend
            assert isinstance(backend["edge_cut"], int), backend
            assert backend["xla"] == "autoclustering", backend  # the stretches between exchanges run as XLA
            print(f"APP {approach} P={size} bytes/batch={s_mpi['mpi_bytes_sent_per_batch']} "
                  f"edge_cut={backend['edge_cut']}/{backend['num_edges']}", flush=True)
        wait_for_all(comm)
        ok(f"app/{approach}")
    # validation: every rank ends with 2; the message is rank 0's alone (the others print nothing)
    for extra, needle in ((["--jobs", "2"], "--jobs: the MPI backend trains one approach at a time"),
                          (["--graph", "er", "--graph-p", "0.5", "--nodes", "1"], "ranks for a graph of 1 nodes")):
        err = io.StringIO()
        with redirect_stderr(err):
            status = main([*tiny(nodes), "--optimizer", "d-sgd", "--backend", "mpi", *extra,
                           "--out", str(out / f"refused_p{size}")])
        assert status == 2, (extra, status)
        text = err.getvalue()
        if rank == 0:
            assert needle in text and text.count("\n") == 1, text
        else:
            assert text == "", text
        assert not (out / f"refused_p{size}").exists()
    wait_for_all(comm)
    ok("app/validation")
