"""SIGTERM to one rank of an MPI run under ``-n 3``: every rank stops at the same epoch boundary, checkpoints it,
and the run resumes under ``-n 2`` to the numbers of an uninterrupted in-process run (issue #14: a run killed
under -n 3 resumes under -n 2 or in-process; the app tests resume in-process).

Under mpiexec the signal only records a stop request (raising where the rank happens to be could leave its
peers waiting in an exchange); the trainer reduces the request over the ranks at every epoch boundary
(``core.backend.MPIBackend.any_rank``), so all ranks raise KeyboardInterrupt together and the checkpoint
(a collective gather of the per-node rows) happens at a point every rank agrees on.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("mpi4py", reason="the MPI backend needs mpi4py (requirements.txt)")

from core.distributed.launch import find_mpiexec, mpi_environment, mpiexec_command  # noqa: E402
from tests.core.distributed.launching import REPO, kill_group, rank_pids  # noqa: E402

STOP_BOUND_S = 30
EPOCHS = 4000  # a tiny problem, one mini-batch per epoch: about 1000 epochs run before the stop on a quiet machine
APP = ["-m", "apps.node_regression", "--optimizer", "d-sgd", "--dtype", "float64", "--no-jit", "--seed", "3", "-q",
       "--nodes", "30", "--train-samples", "20", "--batch-size", "20", "--test-samples", "5", "--epochs", str(EPOCHS),
       "--checkpoint-every", "1000"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sigterm_to_one_rank_stops_all_at_an_agreed_epoch_and_resumes(tmp_path):
    find_mpiexec()
    run = tmp_path / "run"
    log = tmp_path / "mpi.log"
    command = mpiexec_command(3, *APP, "--backend", "mpi", "--out", run)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=mpi_environment(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.csv").is_file():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert (run / "metrics.csv").is_file(), "the run did not start training in 120 s"
        time.sleep(0.2)  # some epochs in
        ranks = rank_pids(proc.pid, "apps.node_regression")
        assert len(ranks) == 3, ranks
        os.kill(ranks[1], signal.SIGTERM)  # the rank that does not write the run
        sent = time.time()
        status = proc.wait(timeout=STOP_BOUND_S)
        stop_s = time.time() - sent
    finally:
        kill_group(proc)
    text = log.read_text()
    assert status == 130, text  # the interrupt status, as every rank exits with it
    assert stop_s < STOP_BOUND_S, text
    assert text.count("interrupted; continue with --resume") == 1, text  # rank 0's line only
    assert "Traceback" not in text, text
    rows = _rows(run / "metrics.csv")
    stopped_at = int(rows[-1]["epoch"])
    assert 0 < stopped_at < EPOCHS
    assert not (run / "summary.json").exists()

    assert json.loads((run / "config.json").read_text())["backend"]["ranks"] == 3

    # resume under -n 2 (the saved flags: --backend mpi, to EPOCHS) and compare with an uninterrupted in-process run
    resumed = subprocess.run(mpiexec_command(2, "-m", "apps.node_regression", "--resume", run, "-q"), cwd=REPO,
                             env=mpi_environment(), capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"):
        env.pop(name, None)
    fresh = tmp_path / "fresh"
    straight = subprocess.run([sys.executable, *APP, "--out", str(fresh)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = json.loads((run / "summary.json").read_text()), json.loads((fresh / "summary.json").read_text())
    assert a["mpi_ranks"] == 2, a  # the resumed part ran on 2 ranks (its wire counts are summed there)
    assert 0 < a["mpi_counts_from_step"] < a["steps"]  # ... from the step it was resumed at
    config = json.loads((run / "config.json").read_text())
    assert config["backend"]["ranks"] == 3  # how the run started, and how it went on:
    assert [r["backend"]["ranks"] for r in config["resumed"]] == [2], config.get("resumed")
    for key in ("final_test_mse", "final_train_mse", "final_consensus_error"):
        assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), key
    assert a["mp_rounds"] == b["mp_rounds"] and a["floats_sent_per_node"] == b["floats_sent_per_node"]
