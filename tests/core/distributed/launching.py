"""Starting and stopping ``mpiexec`` jobs from the MPI tests: the venv's mpiexec, output to a file (a full
pipe would block the ranks), a session of its own so that the whole job can be killed, and waits with a
deadline so that a hang fails a test instead of blocking the suite."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from core.distributed.launch import kill_session, mpi_environment, mpiexec_command

REPO = Path(__file__).resolve().parents[3]


def launch(script: Path, num_ranks: int, out_dir: Path, *args) -> tuple[subprocess.Popen, Path]:
    """``mpiexec -n num_ranks python script *args`` from the repository root; returns (process, log file)."""
    log = out_dir / f"mpi_n{num_ranks}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(mpiexec_command(num_ranks, script, *args), cwd=REPO, env=mpi_environment(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc, log


def kill_group(proc: subprocess.Popen) -> None:
    """Kill mpiexec and every rank it started: they share its session (Open MPI 5 gives each rank a process
    group of its own, so killing the launcher's group would leave the ranks running)."""
    kill_session(proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def wait_all(procs: dict, timeout_s: float) -> dict:
    """Wait for the jobs ``{key: (process, log)}``; returns ``{key: end time}`` of those that ended in time."""
    ended, deadline = {}, time.time() + timeout_s
    while len(ended) < len(procs) and time.time() < deadline:
        for key, (proc, _) in procs.items():
            if key not in ended and proc.poll() is not None:
                ended[key] = time.time()
        time.sleep(0.05)
    return ended


def assert_failure_ended_the_job(text: str, ended_at: float, message: str, bound_s: float) -> None:
    """The fault case of an MPI script (rank 2 of 3 raises while ranks 0 and 1 wait in an exchange)
    printed exactly one abort line, ``message`` from rank 2, and the job ended within ``bound_s``."""
    fault = re.search(r"^FAULT rank=2 t=([0-9.]+)$", text, flags=re.M)
    assert fault, f"the fault case did not start:\n{text}"
    # not anchored at the line start: mpiexec may interleave the ranks' streams
    assert len(re.findall(r"fdtrain-mpi: rank \d of 3 failed", text)) == 1, text
    assert re.search(rf"fdtrain-mpi: rank 2 of 3 failed: RuntimeError: {re.escape(message)}; aborting all ranks$",
                     text, flags=re.M), text
    assert "WAITING rank=0" in text and "WAITING rank=1" in text, text
    assert "UNREACHABLE" not in text, text
    stop_s = ended_at - float(fault.group(1))
    assert stop_s < bound_s, f"the job took {stop_s:.1f} s to end after rank 2 failed"
