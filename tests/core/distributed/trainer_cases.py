"""Trainer cases run by tests/core/distributed/test_mpi_trainer.py under ``mpiexec -n P`` (not collected by pytest).

Every rank builds the same small graphs and data (fixed seeds) and trains a :class:`core.trainer.Trainer` on
its part (:class:`core.backend.MPIBackend`); rank 0 also trains the in-process reference
(:class:`core.backend.LocalBackend`) and compares, in float64, the parameters after several mini-batches
(gathered in global node order) and every logged metric to rtol 1e-10 / atol 1e-12, and the logical counts
exactly. Each passed case prints ``CASE <name> rank=<r> OK`` on every rank; the run ends with
``DONE rank=<r>``. Options (after the script):

- ``--out DIR``: a scratch folder for run directories (resume cases);
- ``--app``: also run ``apps.node_regression`` with ``--backend mpi`` (and the in-process run on rank 0),
  instead of the resume cases;
- ``--small``: only the cases on the 6-node graph (one rank per node with ``-n 6``);
- ``--fault``: at the end the last rank raises in the middle of a run while the others wait for it.

Run by hand (``-n 2 ... --app``, ``-n 6 ... --small``)::

    .venv/bin/mpiexec --oversubscribe -n 3 .venv/bin/python tests/core/distributed/trainer_cases.py --out /tmp/x
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

from core.distributed.faults import install_abort_on_exception  # noqa: E402

install_abort_on_exception()

# isort: split
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.backend import LocalBackend, MPIBackend  # noqa: E402
from core.distributed.exchange import mpi  # noqa: E402
from core.distributed.partition import partition  # noqa: E402
from core.gcnn import GCNN  # noqa: E402
from core.graph import Graph  # noqa: E402
from core.ops import to_operator  # noqa: E402
from core.optimizers import LearningRate, make_optimizer  # noqa: E402
from core.replicas import flatten  # noqa: E402
from core.runs import RunDir  # noqa: E402
from core.supervised import SupervisedGCNN  # noqa: E402
from core.trainer import FixedGraph, GraphOps, Trainer, TrainerConfig  # noqa: E402
from tests.core.distributed.comparing import (  # noqa: E402, F401  (the cases share them)
    ATOL,
    COUNTS,
    RTOL,
    compare,
    wait_for_all,
)

COMM = mpi().COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()
F64 = tf.float64
OPTIMIZERS = ("d-sgd", "d-amsgrad", "d-naive-pb", "c-sgd")


_LAST = [time.time()]


def ok(name: str) -> None:
    now = time.time()
    print(f"CASE {name} rank={RANK} OK ({now - _LAST[0]:.1f} s)", flush=True)
    _LAST[0] = now


# ---------------------------------------------------------------------------- problems
def ba_with_isolated_node():
    """BA(14, 2) plus an isolated node 14; METIS partition."""
    base = Graph.from_networkx(nx.barabasi_albert_graph(14, 2, seed=3))
    up = base.senders < base.receivers
    graph = Graph.from_edge_list(np.stack([base.senders[up], base.receivers[up]], 1), 15)
    return graph, partition(graph, P, "metis", seed=0), "metis"


def rank_without_boundary():
    """A ring owned by ranks 0..P-2 and a triangle plus an isolated node owned by the last rank: the last
    rank has no boundary node (and, for P = 2, neither has rank 0)."""
    ring = 4 * max(P - 1, 1)
    edges = [(i, (i + 1) % ring) for i in range(ring)] + [(ring, ring + 1), (ring + 1, ring + 2), (ring, ring + 2)]
    graph = Graph.from_edge_list(np.array(edges), ring + 4)
    owner = np.concatenate([np.repeat(np.arange(max(P - 1, 1)), 4), np.full(4, P - 1)]) if P > 1 else \
        np.zeros(ring + 4, np.int64)
    return graph, owner, "custom"


def six_nodes():
    """A 6-node graph (a ring with a chord), contiguous blocks: with P = 6 one rank per network node."""
    edges = [(i, (i + 1) % 6) for i in range(6)] + [(0, 3)]
    graph = Graph.from_edge_list(np.array(edges), 6)
    return graph, partition(graph, P, "contiguous"), "contiguous"


def make_task(graph: Graph, backend, seed: int = 0):
    n = graph.num_nodes
    rng = np.random.default_rng(seed)
    x_train, x_test = rng.normal(size=(12, n, 3)), rng.normal(size=(6, n, 3))
    y_train, y_test = rng.normal(size=(12, n, 1)), rng.normal(size=(6, n, 1))
    gcnn = GCNN((3, 4, 1), "sigmoid")
    theta0 = flatten(gcnn.init_params(7, "uniform", F64, 0.5))
    ops = GraphOps(to_operator(graph.shift_operator("adjacency"), F64), to_operator(graph.mixing_matrix("mh"), F64))
    if backend.distributed:
        cut = backend.local_rows
        task = SupervisedGCNN(gcnn, theta0, cut(x_train, 1), cut(y_train, 1), cut(x_test, 1), cut(y_test, 1), F64,
                              backend=backend)
        return task, FixedGraph(backend.local_graph(ops))
    return SupervisedGCNN(gcnn, theta0, x_train, y_train, x_test, y_test, F64, backend=backend), FixedGraph(ops)


def make_trainer(task, graphs, name: str, epochs: int = 2, run=None, per_step: bool = False, jit: bool = False):
    optimizer = make_optimizer(name, 2)
    config = TrainerConfig(epochs=epochs, batch_size=4, seed=5, checkpoint_every=1, jit=jit, quiet=True,
                           log_every_step=per_step)
    return Trainer(task, optimizer, LearningRate(0.05), graphs, config, run)


def gathered(backend, trainer) -> np.ndarray | None:
    theta = trainer.theta.numpy()
    return theta if trainer.optimizer.centralized else backend.gather_rows(theta)


def equal_to_in_process(problem, name: str, per_step: bool = False) -> None:
    graph, owner, method = problem()
    backend = MPIBackend(owner, [graph.shift_operator("adjacency"), graph.mixing_matrix("mh")], partition=method)
    task, graphs = make_task(graph, backend)
    trainer = make_trainer(task, graphs, name, per_step=per_step)
    result = trainer.run()
    theta = gathered(backend, trainer)
    if RANK == 0:
        ref_task, ref_graphs = make_task(graph, LocalBackend(graph.num_nodes))
        ref_trainer = make_trainer(ref_task, ref_graphs, name, per_step=per_step)
        ref = ref_trainer.run()
        compare(f"{problem.__name__}/{name}", result.rows, theta, ref.rows, ref_trainer.theta.numpy())
        for k in ("mp_rounds_per_batch", "floats_sent_per_node_per_batch", "largest_message", "mp_rounds",
                  "floats_sent_per_node"):
            assert result.summary[k] == ref.summary[k], (k, result.summary[k], ref.summary[k])
        assert result.summary["mpi_ranks"] == P and len(result.summary["mpi_bytes_sent_per_batch"]) == P
        print(f"COUNTS {problem.__name__}/{name} bytes/batch={result.summary['mpi_bytes_sent_per_batch']} "
              f"messages/batch={result.summary['mpi_messages_sent_per_batch']}", flush=True)
    wait_for_all(COMM)
    ok(f"{problem.__name__}/{name}{'/per_step' if per_step else ''}")


def resume_across_p(out: Path) -> None:
    """Checkpoint under P ranks, resume in-process (rank 0); checkpoint in-process, resume under P ranks.
    Both end exactly where the uninterrupted in-process run ends."""
    graph, owner, method = ba_with_isolated_node()
    ops = [graph.shift_operator("adjacency"), graph.mixing_matrix("mh")]
    backend = MPIBackend(owner, ops, partition=method)
    mpi_dir, local_dir = out / f"mpi_ckpt_p{P}", out / f"local_ckpt_p{P}"
    ref = None
    for name in ("d-amsgrad", "c-sgd"):
        if RANK == 0:
            for d in (mpi_dir, local_dir):
                shutil.rmtree(d, ignore_errors=True)
            ref_task, ref_graphs = make_task(graph, LocalBackend(graph.num_nodes))
            ref_trainer = make_trainer(ref_task, ref_graphs, name, epochs=4)
            ref = (ref_trainer.run(), ref_trainer.theta.numpy())
        wait_for_all(COMM)
        # P ranks: 2 of 4 epochs, checkpointed on rank 0
        task, graphs = make_task(graph, backend)
        make_trainer(task, graphs, name, epochs=4, run=RunDir(mpi_dir) if RANK == 0 else None).run(until_epoch=2)
        if RANK == 0:  # in-process resume of the P-rank checkpoint
            local_task, local_graphs = make_task(graph, LocalBackend(graph.num_nodes))
            t = make_trainer(local_task, local_graphs, name, epochs=4, run=RunDir(mpi_dir))
            res = t.run(resume=True)
            compare(f"resume mpi->local/{name}", res.rows, t.theta.numpy(), ref[0].rows, ref[1])
            # in-process: 1 epoch, checkpointed, to be resumed by the P ranks
            local_task, local_graphs = make_task(graph, LocalBackend(graph.num_nodes))
            make_trainer(local_task, local_graphs, name, epochs=4, run=RunDir(local_dir)).run(until_epoch=1)
        wait_for_all(COMM)
        task, graphs = make_task(graph, backend)
        t = make_trainer(task, graphs, name, epochs=4, run=RunDir(local_dir, create=False) if RANK == 0 else None)
        res = t.run(resume=True)
        theta = gathered(backend, t)
        if RANK == 0:
            assert res.rows[1]["epoch"] == 1 and len(res.rows) == 5, res.rows
            compare(f"resume local->mpi/{name}", res.rows, theta, ref[0].rows, ref[1])
        wait_for_all(COMM)
        ok(f"resume_across_p/{name}")


def fault() -> None:
    """The last rank raises after the first epoch; the others are then blocked in the next epoch's exchanges."""
    graph, owner, method = ba_with_isolated_node()
    backend = MPIBackend(owner, [graph.shift_operator("adjacency"), graph.mixing_matrix("mh")], partition=method)
    task, graphs = make_task(graph, backend)
    trainer = make_trainer(task, graphs, "d-sgd", epochs=50)

    def on_epoch(epoch, postfix):
        if epoch == 1:
            if RANK == P - 1:
                print(f"FAULT rank={RANK} t={time.time():.3f}", flush=True)
                raise RuntimeError(f"deliberate failure on rank {RANK} in the middle of a run")
            print(f"WAITING rank={RANK}", flush=True)

    trainer.run(on_epoch=on_epoch)
    print(f"UNREACHABLE rank={RANK}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--app", action="store_true")
    parser.add_argument("--fault", action="store_true")
    args = parser.parse_args()
    start = time.time()
    if args.small:  # e.g. -n 6: one rank per network node
        for name in ("d-sgd", "c-sgd", "d-amsgrad"):
            equal_to_in_process(six_nodes, name)
    else:
        for name in OPTIMIZERS:
            equal_to_in_process(ba_with_isolated_node, name)
        if P == 2:
            equal_to_in_process(rank_without_boundary, "d-sgd")
            equal_to_in_process(ba_with_isolated_node, "d-naive-pb", per_step=True)
        else:
            equal_to_in_process(rank_without_boundary, "c-sgd", per_step=True)
            for name in ("d-sgd", "c-sgd"):
                equal_to_in_process(six_nodes, name)
        if args.out is not None and not args.app:
            resume_across_p(args.out)
    if args.app:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps" / "node_regression"))
        import mpi_app_cases

        mpi_app_cases.run(args.out, RANK, P, COMM, ok)
    if args.out is not None and not args.small:  # App B's cases (their names: power_allocation_cases.CASES)
        import power_allocation_cases

        power_allocation_cases.run(args.out, RANK, P, COMM, ok, compare)
    if args.out is not None and not args.small:  # App C's cases (their names: link_scheduling_cases.CASES)
        import link_scheduling_cases

        link_scheduling_cases.run(args.out, RANK, P, COMM, ok)
    print(f"DONE rank={RANK} seconds={time.time() - start:.1f}", flush=True)
    if args.fault:
        fault()


if __name__ == "__main__":
    main()
