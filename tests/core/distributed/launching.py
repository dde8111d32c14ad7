"""Starting and stopping ``mpiexec`` jobs from the MPI tests: the venv's mpiexec, output to a file (a full
pipe would block the ranks), a session of its own so that the whole job can be killed, and waits with a
deadline so that a hang fails a test instead of blocking the suite; finding the ranks of a job and sending
one of them SIGTERM once the run has started (:func:`sigterm_one_rank`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from core.distributed.launch import kill_session, mpi_environment, mpiexec_command

REPO = Path(__file__).resolve().parents[3]


def launch(script: Path | str, num_ranks: int, out_dir: Path, *args, env: dict | None = None
           ) -> tuple[subprocess.Popen, Path]:
    """``mpiexec -n num_ranks python script *args`` from the repository root (``script`` may be ``"-m"``, then
    ``args`` start with the module); returns (process, log file). ``env``: default :func:`mpi_environment`."""
    log = out_dir / f"mpi_n{num_ranks}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(mpiexec_command(num_ranks, script, *args), cwd=REPO, env=env or mpi_environment(),
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


def rank_pids(mpiexec_pid: int, marker: str) -> list[int]:
    """The pids of a job's ranks in rank order: the children of the launcher whose command line contains
    ``marker`` (e.g. the app's module), ordered by the ``OMPI_COMM_WORLD_RANK`` of their environment."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    pids = [int(line.split()[0]) for line in out.splitlines()
            if int(line.split()[1]) == mpiexec_pid and marker in line]

    def rank(pid: int) -> int:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return int(next(v for v in environ if v.startswith(b"OMPI_COMM_WORLD_RANK=")).split(b"=")[1])

    return sorted(pids, key=rank)


def sigterm_one_rank(proc: subprocess.Popen, log: Path, started: Callable[[], bool], marker: str, num_ranks: int,
                     rank: int = 1, start_timeout_s: float = 120, stop_timeout_s: float = 30) -> float:
    """Once ``started()`` (e.g. a run's metrics.csv exists), SIGTERM rank ``rank`` (default 1: not the rank that
    writes the run) of the job ``proc`` and wait for the job to end; returns the seconds from the signal to the
    job's end. AssertionError with the log if the job ends before it has started, does not start within
    ``start_timeout_s`` or does not end within ``stop_timeout_s`` (the job is left running: the caller kills
    it, :func:`kill_group`). It only polls a file, ``ps`` and the process, so the caller may run other work
    meanwhile by calling it in a thread."""
    def text() -> str:
        return log.read_text(errors="replace")

    deadline = time.time() + start_timeout_s
    while not started():
        assert proc.poll() is None, f"the job ended (status {proc.returncode}) before it started:\n{text()}"
        assert time.time() < deadline, f"the job did not start in {start_timeout_s} s:\n{text()}"
        time.sleep(0.05)
    ranks = rank_pids(proc.pid, marker)
    assert len(ranks) == num_ranks, (ranks, text())
    os.kill(ranks[rank], signal.SIGTERM)
    sent = time.time()
    try:
        proc.wait(timeout=stop_timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the job did not end within {stop_timeout_s} s of SIGTERM:\n{text()}") from None
    return time.time() - sent


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
