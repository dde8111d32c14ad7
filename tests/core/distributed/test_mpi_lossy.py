"""Imperfect links under real ``mpiexec -n 3``: lossy_cases.py trains D-SGD, D-naive, C-SGD, D-AMSGrad, D-GT and
D-naive-PB over lost packets (zero, stale, retransmit:2 and a Gilbert-Elliott chain with stale; D-AMSGrad also
over link failures, S restricted and W rebuilt on every rank; D-SGD with its test metrics under loss and
failures too) and compares
every logged metric, the parameters and the counts with the in-process run (float64, rtol 1e-10), then resumes
a 3-rank checkpoint in-process and the reverse. One launch (three TensorFlow start-ups), with a timeout; its
process group is killed in ``finally``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="the MPI backend needs mpi4py (requirements.txt)")

from core.distributed.launch import find_mpiexec  # noqa: E402
from tests.core.distributed.launching import kill_group, launch, wait_all  # noqa: E402

SCRIPT = Path(__file__).with_name("lossy_cases.py")
CASES = [f"lossy/{name}/{setup}" for name, setup in (
    ("d-sgd", "zero"), ("d-naive", "zero"), ("c-sgd", "stale"), ("d-amsgrad", "stale"), ("d-sgd", "retransmit"),
    ("d-gt", "gilbert-stale"), ("d-naive-pb", "retransmit"), ("d-amsgrad", "failure"),
    ("d-sgd", "failure-eval"))] + ["lossy/resume_across_p"]
TIMEOUT_S = 180


def test_lossy_training_under_mpi_drops_the_packets_one_process_drops(tmp_path):
    try:
        find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    proc, log = launch(SCRIPT, 3, tmp_path, "--out", tmp_path)
    try:
        ended = wait_all({3: (proc, log)}, TIMEOUT_S)
        text = log.read_text(errors="replace")
        assert 3 in ended, f"mpiexec -n 3 did not end within {TIMEOUT_S} s:\n{text}"
        assert proc.returncode == 0, f"mpiexec -n 3 exited with {proc.returncode}:\n{text}"
        for case in CASES:
            for rank in range(3):
                assert f"CASE {case} rank={rank} OK " in text, f"case {case} failed on rank {rank}:\n{text}"
        for rank in range(3):
            assert f"DONE rank={rank}" in text, f"rank {rank} did not finish:\n{text}"
    finally:
        kill_group(proc)
