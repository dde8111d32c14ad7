"""Benchmark: one halo exchange (propagate) plus one reverse exchange over MPI, |V| = 10^4 and 10^5, P = 1, 2.

A (|V|, B = 100, g = 10) float32 feature block on a Barabasi-Albert graph (m = 2) with the normalized
Laplacian as operator, METIS partition (computed on rank 0 and broadcast). Each configuration runs in a
fresh ``mpiexec -n P`` launch of this script (one TensorFlow thread per rank, ``--bind-to none``);
rank 0 prints, per exchange pair (forward + reverse, TensorFlow eager path of
:class:`core.distributed.exchange.MPIExchange`): the wall time (slowest rank), the share of it spent
inside MPI calls (slowest rank), the bytes each rank sent, and the partition's edge cut and boundary
nodes. For P = 1 it also times the in-process :func:`core.ops.apply_operator` pair on the whole graph,
the reference the exchange must not be much slower than. This is the first version: the full training
step over MPI comes later.

Run: ``python benchmarks/bench_mpi.py [--sizes 10000 100000 --ranks 1 2 --repeats 5]``. The launches run
one after the other (each pays P TensorFlow start-ups), so on a shared machine load from other work
affects them unevenly; the minimum over the repeats is reported.
"""

from __future__ import annotations

import _common  # noqa: F401  first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np

from core.distributed.launch import mpi_environment, mpiexec_command, under_mpiexec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(sizes, batch, width, repeats) -> None:
    from core.distributed.exchange import mpi
    from core.distributed.faults import install_abort_on_exception

    install_abort_on_exception()
    for n in sizes:
        one_size(mpi(), n, batch, width, repeats)


def one_size(MPI, n, batch, width, repeats) -> None:
    import networkx as nx
    import tensorflow as tf

    from core.distributed.exchange import MPIExchange
    from core.distributed.partition import partition, partition_stats
    from core.graph import Graph
    from core.ops import apply_operator, to_operator

    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    graph = Graph.from_networkx(nx.barabasi_albert_graph(n, 2, seed=0))
    shift = graph.shift_operator("normalized_laplacian")
    owner = comm.bcast(partition(graph, p, "metis", seed=0) if rank == 0 else None, root=0)
    stats = partition_stats(owner, graph) if rank == 0 else None
    ex = MPIExchange(owner, shift)
    view = ex.view(shift)
    x = tf.constant(np.random.default_rng(rank).uniform(size=(view.num_owned, batch, width)), tf.float32)

    def pair():
        y = ex.propagate(view, x)
        return ex.propagate(view.transposed(), y).numpy()

    pair()  # warm-up: constants, first calls
    best, share, sent = float("inf"), 0.0, 0
    for _ in range(repeats):
        comm.Barrier()
        before = ex.counters.as_dict()
        start = time.perf_counter()
        pair()
        wall = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        after = ex.counters.as_dict()
        in_mpi = comm.allreduce(after["seconds_in_mpi"] - before["seconds_in_mpi"], op=MPI.MAX)
        if wall < best:
            best, share, sent = wall, in_mpi / wall, after["bytes_sent"] - before["bytes_sent"]
    sent_by_rank = comm.gather(sent, root=0)
    reference = None
    if p == 1:
        op = to_operator(shift)
        full = tf.constant(np.random.default_rng(0).uniform(size=(n, batch, width)), tf.float32)
        apply_operator(op.transposed(), apply_operator(op, full)).numpy()
        reference = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            apply_operator(op.transposed(), apply_operator(op, full)).numpy()
            reference = min(reference, time.perf_counter() - start)
    if rank == 0:
        mb = ", ".join(f"{s / 1e6:.1f}" for s in sent_by_rank)
        ref = f"   (in-process apply_operator pair: {1e3 * reference:.1f} ms)" if reference is not None else ""
        print(f"|V| = {n:>6}  P = {p}:  {1e3 * best:8.1f} ms per propagate + reverse,  {100 * share:5.1f} % in MPI,"
              f"  MB sent per rank [{mb}],  edge cut {stats.edge_cut} ({100 * stats.cut_fraction:.1f} %),"
              f"  boundary nodes {stats.boundary_nodes} ({100 * stats.boundary_fraction:.1f} %){ref}", flush=True)
    ex.free()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="numbers of nodes |V|")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="numbers of MPI ranks P")
    parser.add_argument("--batch-size", type=int, default=100, help="samples B")
    parser.add_argument("--width", type=int, default=10, help="features g")
    parser.add_argument("--repeats", type=int, default=5, help="timed exchange pairs per configuration")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or under_mpiexec():
        worker(args.sizes, args.batch_size, args.width, args.repeats)
        return 0
    print(f"MPI halo + reverse exchange, B = {args.batch_size}, g = {args.width}, float32, BA m = 2, METIS, "
          f"normalized Laplacian, 1 TensorFlow thread per rank")
    for p in args.ranks:
        command = mpiexec_command(p, os.path.abspath(__file__), "--worker", "--sizes", *args.sizes,
                                  "--batch-size", args.batch_size, "--width", args.width, "--repeats", args.repeats)
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=mpi_environment(), start_new_session=True)
        try:
            if proc.wait(timeout=args.timeout) != 0:
                print(f"mpiexec -n {p} failed with status {proc.returncode}", file=sys.stderr)
                return 1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
