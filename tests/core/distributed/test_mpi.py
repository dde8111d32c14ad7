"""The MPI backend under real ``mpiexec``: two launches (P = 2 and P = 3) of mpi_cases.py, side by side.

Each launch pays P TensorFlow start-ups, so all cases run inside one script per launch (see mpi_cases.py
for what they check against the in-process :func:`core.ops.apply_operator`, in float64 to rtol 1e-12).
The P = 3 launch ends with a deliberate exception on its last rank while the other ranks wait for it in
an exchange: the whole job must end within 30 s of the fault (the excepthook of
:mod:`core.distributed.faults` calls MPI_Abort). Assertions are on the script's own lines, not on
mpiexec's banners. Each launch runs in a session of its own, with a timeout, and its process group is
killed in ``finally`` whatever happened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="the MPI backend needs mpi4py (requirements.txt)")

from core.distributed.launch import find_mpiexec  # noqa: E402
from tests.core.distributed.launching import assert_failure_ended_the_job, kill_group, launch, wait_all  # noqa: E402

SCRIPT = Path(__file__).with_name("mpi_cases.py")
REPO = Path(__file__).resolve().parents[3]
CASES = ("ba_isolated_shift", "ba_isolated_mixing", "ba_isolated_asymmetric", "ba_isolated_shift_csr",
         "ba_isolated_mixing_csr", "ba_isolated_asymmetric_csr", "per_sample",
         "per_sample_localize", "gcnn_forward_gradient", "counters_reductions", "no_boundary_rank",
         "no_boundary_rank_csr", "debug_operator_mismatch", "debug_sequence_mismatch")
TIMEOUT_S = 90  # per launch; a hang fails the test instead of blocking the suite
FAULT_BOUND_S = 30


def _check_cases(text: str, num_ranks: int) -> None:
    for case in CASES:
        for rank in range(num_ranks):
            assert f"CASE {case} rank={rank} OK" in text, f"P={num_ranks}: case {case} failed on rank {rank}:\n{text}"
    for rank in range(num_ranks):
        assert f"DONE rank={rank}" in text, f"P={num_ranks}: rank {rank} did not finish:\n{text}"


def test_mpi_exchanges_gradients_debug_mode_and_fault_stop(tmp_path):
    try:
        find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    procs, ended = {}, {}
    try:
        procs[2] = launch(SCRIPT, 2, tmp_path)
        procs[3] = launch(SCRIPT, 3, tmp_path, "--fault")
        ended = wait_all(procs, TIMEOUT_S)
        texts = {n: log.read_text(errors="replace") for n, (_, log) in procs.items()}
        for n in procs:
            assert n in ended, f"mpiexec -n {n} did not end within {TIMEOUT_S} s:\n{texts[n]}"

        assert procs[2][0].returncode == 0, f"mpiexec -n 2 exited with {procs[2][0].returncode}:\n{texts[2]}"
        _check_cases(texts[2], 2)

        text = texts[3]
        _check_cases(text, 3)
        assert procs[3][0].returncode != 0, text
        assert_failure_ended_the_job(text, ended[3], "deliberate failure on rank 2", FAULT_BOUND_S)
    finally:
        for proc, _ in procs.values():
            kill_group(proc)
