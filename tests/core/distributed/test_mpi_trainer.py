"""The trainer and App A under real ``mpiexec``: launches of trainer_cases.py with P = 2, 3 and 6.

Each launch pays P TensorFlow start-ups, so all cases of a P run inside one script (trainer_cases.py says
what they compare with the in-process run, in float64 to rtol 1e-10 / atol 1e-12, counts exactly):

- ``-n 2`` and ``-n 3`` side by side: D-SGD, D-AMSGrad, D-naive-PB and C-SGD on a BA graph with an isolated
  node (METIS) and on a partition leaving a rank without boundary nodes, per-epoch and per-step logging;
  ``-n 2`` also runs ``apps.node_regression --backend mpi`` (rank 0's run directory against the in-process
  run; --jobs and P > |V| refused with one line); ``-n 3`` also checkpoints under 3 ranks and resumes
  in-process and the reverse, then one rank raises mid-run: the job must end within 30 s with one line;
- both launches also run App B's cases (tests/core/distributed/power_allocation_cases.py: UWMMSE with C-Adam and
  distributed Adams through the trainer and the app, resume across P, and over lossy links: stale, link
  failures and the lossy evaluation);
- and App C's (tests/core/distributed/link_scheduling_cases.py: the actor on the ranks with a graph drawn per
  mini-batch, the critic on rank 0; D-Adam, C-Adam and D-SGD, the app, refused flags, and over lossy links:
  retransmissions, a Gilbert chain, stale buffers by link with a resume across P, link failures and the lossy
  evaluation);
- ``-n 6`` on a 6-node graph, one process per network node (six more TensorFlow start-ups: about 21 s on
  2 cores, in the default suite).

Each launch runs in a session of its own, with a timeout, and its process group is killed in ``finally``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="the MPI backend needs mpi4py (requirements.txt)")

from core.distributed.launch import find_mpiexec  # noqa: E402
from tests.core.distributed.launching import assert_failure_ended_the_job, kill_group, launch, wait_all  # noqa: E402
from tests.core.distributed.link_scheduling_cases import CASES as LS_CASES  # noqa: E402
from tests.core.distributed.power_allocation_cases import CASES as PA_CASES  # noqa: E402

SCRIPT = Path(__file__).with_name("trainer_cases.py")
CORE_CASES = [f"ba_with_isolated_node/{o}" for o in ("d-sgd", "d-amsgrad", "d-naive-pb", "c-sgd")]
CASES = {2: CORE_CASES + ["rank_without_boundary/d-sgd", "ba_with_isolated_node/d-naive-pb/per_step", "app/d-sgd",
                          "app/c-sgd", "app/validation"],
         3: CORE_CASES + ["rank_without_boundary/c-sgd/per_step", "six_nodes/d-sgd", "six_nodes/c-sgd",
                          "resume_across_p/d-amsgrad", "resume_across_p/c-sgd"],
         6: ["six_nodes/d-sgd", "six_nodes/c-sgd", "six_nodes/d-amsgrad"]}
for _n, _names in PA_CASES.items():  # App B (tests/core/distributed/power_allocation_cases.py)
    CASES[_n] = CASES[_n] + _names
for _n, _names in LS_CASES.items():  # App C (tests/core/distributed/link_scheduling_cases.py)
    CASES[_n] = CASES[_n] + _names
TIMEOUT_S = 300  # per launch (about 130 s on the quiet 2-core machine); a hang fails the test, never blocks the suite
FAULT_BOUND_S = 30


REPO = Path(__file__).resolve().parents[3]


def _check(text: str, num_ranks: int) -> None:
    for case in CASES[num_ranks]:
        for rank in range(num_ranks):
            assert f"CASE {case} rank={rank} OK " in text, f"P={num_ranks}: case {case} failed on rank {rank}:\n{text}"
    for rank in range(num_ranks):
        assert f"DONE rank={rank}" in text, f"P={num_ranks}: rank {rank} did not finish:\n{text}"


def test_trainer_and_app_under_mpi_equal_in_process(tmp_path):
    try:
        find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    procs = {}
    try:
        for n, extra in ((2, ["--app"]), (3, ["--fault"])):
            out = tmp_path / f"p{n}"
            out.mkdir()
            procs[n] = launch(SCRIPT, n, out, "--out", out, *extra)
        ended = wait_all(procs, TIMEOUT_S)
        texts = {n: log.read_text(errors="replace") for n, (_, log) in procs.items()}
        for n in procs:
            assert n in ended, f"mpiexec -n {n} did not end within {TIMEOUT_S} s:\n{texts[n]}"
        assert procs[2][0].returncode == 0, f"mpiexec -n 2 exited with {procs[2][0].returncode}:\n{texts[2]}"
        _check(texts[2], 2)
        text = texts[3]
        _check(text, 3)
        assert procs[3][0].returncode != 0, text
        assert_failure_ended_the_job(text, ended[3], "deliberate failure on rank 2 in the middle of a run",
                                     FAULT_BOUND_S)
    finally:
        for proc, _ in procs.values():
            kill_group(proc)


def test_one_rank_per_network_node(tmp_path):
    """``mpiexec -n 6`` on a 6-node graph: every network node its own process, equal to the in-process run."""
    try:
        find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    proc = None
    try:
        proc = launch(SCRIPT, 6, tmp_path, "--small")
        ended = wait_all({6: proc}, TIMEOUT_S)
        text = proc[1].read_text(errors="replace")
        assert 6 in ended, f"mpiexec -n 6 did not end within {TIMEOUT_S} s:\n{text}"
        assert proc[0].returncode == 0, f"mpiexec -n 6 exited with {proc[0].returncode}:\n{text}"
        _check(text, 6)
    finally:
        if proc is not None:
            kill_group(proc[0])
