"""What every app needs to run on the MPI backend (docs/design.md, section 11): flags, checks, the backend.

An app that supports ``--backend {local,mpi}`` (flags: :func:`apps.common.cli.add_backend_arguments`) uses

- :func:`start_world` and :func:`run_on_world` in its ``main()``: the processes of the run (the ranks of
  ``mpiexec``, or this process alone; TensorFlow threads = cores / ranks on the machine), an uncaught
  exception on any rank ending the whole job, other ranks silent, and a rank that stopped with a failure
  or an interrupt aborting the others instead of leaving them in a collective (after rank 0 has finished
  writing the run directory);
- :func:`check_backend_flags` in ``parse_args``: ``--backend local`` under mpiexec with P > 1 and ``--jobs``
  under MPI are refused (the ranks are the parallelism);
- :func:`check_ranks` in ``plan``: P > |V| is refused, P = 1 without mpiexec is said;
- :func:`say_notes` in ``plan``: what a run should know about its flags (rank 0, unless ``-q``);
- :func:`on_root` for what rank 0 alone decides (the run path with its timestamp, a generated dataset),
  broadcast to the others, a ValueError on rank 0 becoming the same error on every rank;
- :func:`make_backend` in ``execute``: the partition computed on rank 0 and broadcast, the
  :class:`core.backend.MPIBackend` (or the app's subclass) built collectively, and what config.json records.

Nothing here imports TensorFlow or mpi4py at import time (flags are validated before either is imported).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from apps.common.main import MPIWorld, World, run_experiment, world_from_env


def start_world() -> World:
    """The processes of this run; under mpiexec with P > 1 an uncaught exception on any rank aborts the job
    with one line (:mod:`core.distributed.faults`). Under mpiexec each rank gets cores / (ranks on this
    machine) TensorFlow threads unless the environment sets them (:func:`threads_per_rank`)."""
    world = world_from_env()
    if isinstance(world, MPIWorld):
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):  # read when TensorFlow is imported
            os.environ.setdefault(name, str(threads_per_rank()))
    if world.size > 1:
        from core.distributed.faults import install_abort_on_exception

        install_abort_on_exception()
    return world


def threads_per_rank() -> int:
    """The machine's cores shared by the ranks mpiexec started on it (``OMPI_COMM_WORLD_LOCAL_SIZE``, or
    ``MPI_LOCALNRANKS`` of MPICH), at least 1."""
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or os.environ.get("MPI_LOCALNRANKS") or "1"
    try:
        ranks = max(1, int(local))
    except ValueError:
        ranks = 1
    return max(1, (os.cpu_count() or 1) // ranks)


ROOT_GRACE_S = 10.0
"""How long a rank other than 0 that ended with status 1 or 130 waits for rank 0 to abort the job before it
aborts the job itself (:func:`run_on_world`)."""


def run_on_world(world: World, prog: str, argv, parse_args, plan, execute, report, failures: tuple = ()) -> int:
    """:func:`apps.common.main.run_experiment` on ``world``: only rank 0 prints, and a rank that ends with a
    status other than 0 (done) or 2 (bad input, which every rank agrees on) aborts the job: rank 0 at once,
    the others only if rank 0 has not done so within :data:`ROOT_GRACE_S`."""
    with world.quiet_unless_root():
        status = run_experiment(prog, argv, parse_args, plan, execute, report, failures=failures, world=world)
    if status not in (0, 2) and world.size > 1:
        if not world.is_root:
            # Rank 0 alone writes the run directory. After a stop that all ranks meet together (SIGTERM or
            # Ctrl-C at the trainer's agreed epoch boundary, a divergence) rank 0 may still be writing the
            # checkpoint, metrics.csv or summary.json, and printing the --resume line, when this rank, which
            # writes nothing, gets here: an abort from here would kill it half-way (seen with slow writes: the
            # stop epoch's checkpoint saved, its metrics.csv not, no --resume line). So rank 0's abort ends
            # this rank; only a rank that stopped alone (rank 0 still waiting in a collective) aborts the job
            # itself, after the grace. A further signal during the wait ends this rank at once (the default
            # handlers are back), and mpiexec the others.
            time.sleep(ROOT_GRACE_S)
        world.abort(status)  # a rank that stopped must not leave the others waiting in a collective
    return status


def check_backend_flags(args: argparse.Namespace, argv: Sequence[str] | None, world: World) -> None:
    """Refuse ``--backend local`` on several ranks and ``--jobs`` > 1 under MPI (ValueError); under MPI
    ``args.jobs`` becomes 1. ``argv``: the typed command line (None: ``sys.argv[1:]``), so that a default
    ``--jobs`` (one per core) is not mistaken for a request."""
    if world.size > 1 and args.backend != "mpi":
        raise ValueError(f"started by mpiexec on {world.size} ranks with --backend local (every rank would train "
                         f"the whole network); give --backend mpi, or run without mpiexec")
    if args.backend == "mpi":
        typed = sys.argv[1:] if argv is None else argv
        if getattr(args, "jobs", 1) > 1 and any(a == "--jobs" or a.startswith("--jobs=") for a in typed):
            raise ValueError("--jobs: the MPI backend trains one approach at a time (its ranks are the parallelism); "
                             "leave --jobs out or give --jobs 1")
        args.jobs = 1


def check_ranks(args: argparse.Namespace, world: World, num_nodes: int, prog: str, nodes_are: str) -> None:
    """Under ``--backend mpi``: P > |V| is refused (every rank must own a node; ``nodes_are`` names them,
    e.g. "a graph of 12 nodes"), and P = 1 without mpiexec is said on stderr (unless -q)."""
    if args.backend != "mpi":
        return
    if world.size > num_nodes:
        raise ValueError(f"--backend mpi: {world.size} ranks for {nodes_are}; every rank must own at least one node "
                         f"(start at most {num_nodes} ranks)")
    if world.size == 1 and not args.quiet:
        from core.distributed.launch import under_mpiexec

        if not under_mpiexec():
            print(f"{prog}: note: --backend mpi without mpiexec runs with P = 1 (start it with `mpiexec -n P "
                  f"{prog} ...` to split the nodes over P processes)", file=sys.stderr)


def say_notes(args: argparse.Namespace, world: World, prog: str, *notes: str | None) -> None:
    """Print each given note (``"note: ..."``) once, on stderr of rank 0, unless ``-q``."""
    if world.is_root and not args.quiet:
        for note in notes:
            if note:
                print(f"{prog}: {note}", file=sys.stderr)


def on_root(world: World, fn: Callable):
    """``fn()`` on rank 0 only, its result (or its ValueError) broadcast to every rank."""
    if world.size == 1:
        return fn()
    result = None
    if world.is_root:
        try:
            result = ("ok", fn())
        except ValueError as exc:
            result = ("error", str(exc))
    result = world.bcast(result)
    if result[0] == "error":
        raise ValueError(result[1])
    return result[1]


def make_backend(args: argparse.Namespace, world: World, num_nodes: int, sources: Callable,
                 build: Callable | None = None, autocluster: bool = True):
    """The backend of a run and what config.json records of it.

    In-process (``--backend local``, or ``mpi`` started without mpiexec): a :class:`core.backend.LocalBackend`.
    Under mpiexec with ``--backend mpi``: ``sources()`` gives the operators (or graphs, edge arrays) the run
    exchanges along (called only then); the owner array of ``--partition`` on the union of their edges
    (:func:`core.distributed.partition.partition`) is computed on rank 0 and broadcast, then
    ``build(owner, sources, partition)`` (default :class:`core.backend.MPIBackend`) is called on every rank
    (collective: it creates the exchanges' communicators). With ``autocluster`` (an app whose step keeps its
    shapes) and without ``--no-jit``, XLA compiles the stretches of the step between exchanges
    (:func:`core.backend.enable_xla_autoclustering`; config.json records ``"xla": "autoclustering"``).
    """
    from core.backend import LocalBackend

    if args.backend != "mpi" or not isinstance(world, MPIWorld):
        info = {"backend": args.backend, "ranks": 1}
        if args.backend == "mpi":
            info.update({"partition": args.partition, "edge_cut": 0})
        return LocalBackend(int(num_nodes)), info
    from core.backend import MPIBackend
    from core.distributed.partition import partition

    sources = sources()
    sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    owner = world.bcast(partition(sources, world.size, args.partition) if world.is_root else None)
    if build is None:
        backend = MPIBackend(owner, sources, partition=args.partition)
    else:
        backend = build(owner, sources, args.partition)
    info = backend.describe()
    if autocluster and not getattr(args, "no_jit", False):
        from core.backend import enable_xla_autoclustering

        enable_xla_autoclustering()
        info["xla"] = "autoclustering"
    return backend, info
