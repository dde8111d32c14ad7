"""A failing rank stops the whole MPI job: an uncaught exception prints one line and calls ``MPI_Abort``.

Without this, a rank that raises leaves the others blocked in their next collective, waiting for it
forever (mpi4py finalises MPI at exit, it does not abort). :func:`install_abort_on_exception` replaces
``sys.excepthook`` and ``threading.excepthook``: the first uncaught exception in any thread of any rank
prints

    fdtrain-mpi: rank 2 of 3 failed: RuntimeError: <message on one line>; aborting all ranks

on stderr and calls ``comm.Abort(1)``, which makes ``mpiexec`` end every rank (within a second or two
here). Call it first thing in an MPI script, before any exchange.
"""

from __future__ import annotations

import os
import sys
import threading

PREFIX = "fdtrain-mpi"
TRACEBACK_ENV = "FDTRAIN_MPI_TRACEBACK"


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on a single line (whitespace collapsed, at most ``limit`` characters)."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def install_abort_on_exception(comm=None, errorcode: int = 1, traceback: bool | None = None):
    """Abort all ranks on the first uncaught exception in this process (module docstring).

    Args:
        comm: the communicator to abort (default ``MPI.COMM_WORLD``; importing mpi4py initialises MPI).
        errorcode: the exit status ``MPI_Abort`` passes on.
        traceback: also print the full traceback before the line (for debugging; default: the
            environment variable ``FDTRAIN_MPI_TRACEBACK=1``).

    Returns:
        The previous ``sys.excepthook``.
    """
    from core.distributed.exchange import mpi

    MPI = mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    if traceback is None:
        traceback = os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    previous = sys.excepthook

    def abort(exc_type, exc, tb):
        try:
            if traceback:
                import traceback as tb_module

                tb_module.print_exception(exc_type, exc, tb, file=sys.stderr)
            line = one_line(exc) if exc is not None else exc_type.__name__
            print(f"{PREFIX}: rank {rank} of {size} failed: {line}; aborting all ranks", file=sys.stderr, flush=True)
            sys.stdout.flush()
        finally:
            comm.Abort(errorcode)

    sys.excepthook = abort
    threading.excepthook = lambda args: abort(args.exc_type, args.exc_value, args.exc_traceback)
    return previous
