"""Starting and stopping ``mpiexec`` jobs from the MPI tests: the venv's mpiexec, output to a file (a full
pipe would block the ranks), a session of its own so that the whole job can be killed, and waits with a
deadline so that a hang fails a test instead of blocking the suite."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from core.distributed.launch import mpi_environment, mpiexec_command

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
    """Kill mpiexec and every rank it started (they share its session and process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
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
