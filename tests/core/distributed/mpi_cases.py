"""MPI cases run by tests/core/distributed/test_mpi.py under ``mpiexec -n P`` (not collected by pytest).

Every rank builds the same small graphs and random data (fixed seeds), runs its part through
:class:`core.distributed.exchange.MPIExchange` and compares its owned rows with the in-process
:func:`core.ops.apply_operator` on the whole graph, in float64 to rtol 1e-12: forward exchange, reverse
exchange, their TensorFlow gradients (eager and inside ``tf.function``), a GCNN forward pass with its
parameter gradient, the byte counters, the reductions, and the debug mode's mismatch errors. Each passed
case prints ``CASE <name> rank=<r> OK``; the run ends with ``DONE rank=<r>``. With ``--fault`` the last
rank then raises while the others wait in an exchange with it: the excepthook of
:mod:`core.distributed.faults` must end the whole job (the test times it).

Run by hand: ``.venv/bin/mpiexec --oversubscribe -n 3 .venv/bin/python tests/core/distributed/mpi_cases.py``.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

from core.distributed.faults import install_abort_on_exception  # noqa: E402

install_abort_on_exception()

# isort: split
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.distributed.exchange import ExchangeMismatchError, MPIExchange, mpi  # noqa: E402
from core.distributed.partition import partition  # noqa: E402
from core.gcnn import GCNN  # noqa: E402
from core.graph import Graph  # noqa: E402
from core.ops import apply_operator, to_operator  # noqa: E402

MPI = mpi()
COMM = MPI.COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()
F64 = tf.float64
RTOL, ATOL = 1e-12, 1e-13


def ok(name: str) -> None:
    print(f"CASE {name} rank={RANK} OK", flush=True)


def close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL, err_msg=what)


# ---------------------------------------------------------------------------- graphs
def ba_with_isolated_node():
    """BA(24, 2) plus an isolated node 24; METIS partition."""
    base = Graph.from_networkx(nx.barabasi_albert_graph(24, 2, seed=1))
    up = base.senders < base.receivers
    graph = Graph.from_edge_list(np.stack([base.senders[up], base.receivers[up]], 1), 25)
    return graph, partition(graph, P, "metis", seed=0)


def rank_without_boundary():
    """A ring split over ranks 0..P-2 and a triangle plus an isolated node owned by the last rank alone:
    the last rank has no boundary node and an empty neighbour list (for P = 2, both ranks have)."""
    ring = 4 * (P - 1)
    edges = [(i, (i + 1) % ring) for i in range(ring)] + [(ring, ring + 1), (ring + 1, ring + 2), (ring, ring + 2)]
    graph = Graph.from_edge_list(np.array(edges), ring + 4)
    owner = np.concatenate([np.repeat(np.arange(P - 1), 4), np.full(4, P - 1)])
    return graph, owner


def ring():
    """A ring of 3P nodes in contiguous blocks: every rank neighbours every other one (P <= 3)."""
    n = 3 * P
    graph = Graph.from_edge_list(np.array([(i, (i + 1) % n) for i in range(n)]), n)
    return graph, partition(graph, P, "contiguous")


# ---------------------------------------------------------------------------- cases
def check_operator(name: str, ex: MPIExchange, op_np, batch=3, width=2) -> None:
    """Forward and reverse exchange, NumPy and TF, eager and tf.function, and their gradients."""
    op = to_operator(op_np, F64)
    view = ex.view(op_np)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(op.num_nodes, batch, width))
    c = rng.normal(size=(op.num_nodes, batch, width))  # cotangent of the loss sum(c * y)
    own = view.owned
    x_tf, c_tf = tf.constant(x, F64), tf.constant(c, F64)

    ref_fwd = apply_operator(op, x_tf).numpy()
    ref_rev = apply_operator(op.transposed(), x_tf).numpy()
    close(ex.propagate(view, x_tf.numpy()[own]), ref_fwd[own], f"{name}: forward")
    close(ex.propagate(view.transposed(), x[own]), ref_rev[own], f"{name}: reverse")
    close(ex.propagate_numpy(view, x[own]), ref_fwd[own], f"{name}: forward (NumPy)")
    close(ex.reverse_numpy(view, x[own]), ref_rev[own], f"{name}: reverse (NumPy)")

    # gradients: d sum(c * M x) / dx = M^T c, d sum(c * M^T x) / dx = M c
    x_own, c_own = tf.constant(x[own]), tf.constant(c[own])
    for transposed in (False, True):
        target = view.transposed() if transposed else view
        ref_c = apply_operator(op if transposed else op.transposed(), c_tf).numpy()
        with tf.GradientTape() as tape:
            tape.watch(x_own)
            loss = tf.reduce_sum(c_own * ex.propagate(target, x_own))
        close(tape.gradient(loss, x_own), ref_c[own], f"{name}: gradient (transposed={transposed})")

    fresh = ex.view(op_np)  # first used while tracing: its constants must still be eager

    @tf.function
    def graph_mode(x_own, c_own):
        with tf.GradientTape() as tape:
            tape.watch(x_own)
            y = ex.propagate(fresh, x_own)
            loss = tf.reduce_sum(c_own * y)
        return y, tape.gradient(loss, x_own)

    y, g = graph_mode(x_own, c_own)
    close(y, ref_fwd[own], f"{name}: forward in tf.function")
    close(g, apply_operator(op.transposed(), c_tf).numpy()[own], f"{name}: gradient in tf.function")
    ok(name)


def check_per_sample(ex: MPIExchange, graph: Graph) -> None:
    """Per-sample values (B, nnz) on a fixed pattern, sliced with localize."""
    base = graph.shift_operator("adjacency")
    values = np.random.default_rng(3).uniform(size=(4, base.nnz))
    op_np = base.with_values(values)
    check_operator("per_sample", ex, op_np, batch=4, width=3)
    view = ex.view(base).with_values(ex.view(base).localize(values))
    x = np.random.default_rng(5).normal(size=(graph.num_nodes, 4, 3))
    ref = apply_operator(to_operator(op_np, F64), tf.constant(x)).numpy()
    close(ex.propagate(view, x[view.owned]), ref[view.owned], "per_sample: localize")
    ok("per_sample_localize")


def check_gcnn(ex: MPIExchange, graph: Graph) -> None:
    """A 2-layer GCNN with shared parameters through the exchange: outputs and the sum over ranks of the
    local parameter gradients equal the global forward pass and its gradient."""
    shift_np = graph.shift_operator("normalized_laplacian")
    shift = to_operator(shift_np, F64)
    view = ex.view(shift_np)
    gcnn = GCNN((3, 4, 2), ("tanh", "identity"), bias=True)
    params = gcnn.init_params(seed=0, init="glorot", dtype=F64)
    x = tf.constant(np.random.default_rng(9).normal(size=(graph.num_nodes, 5, 3)), F64)
    with tf.GradientTape() as tape:
        tape.watch(params)
        y_ref, _ = gcnn.forward(params, x, shift)
        loss_ref = tf.reduce_sum(tf.square(y_ref))
    grads_ref = tape.gradient(loss_ref, params)
    x_own = tf.gather(x, view.owned)
    with tf.GradientTape() as tape:
        tape.watch(params)
        y, _ = gcnn.forward(params, x_own, view, exchange=ex)
        loss = tf.reduce_sum(tf.square(y))
    grads = tape.gradient(loss, params)
    close(y, tf.gather(y_ref, view.owned), "gcnn: output")
    close(ex.allreduce_sum(loss.numpy()), loss_ref.numpy(), "gcnn: loss")
    for k, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        close(ex.allreduce_sum(g.numpy()), g_ref, f"gcnn: gradient of parameter {k}")
    ok("gcnn_forward_gradient")


def check_counters_and_reductions(ex: MPIExchange, op_np) -> None:
    view = ex.view(op_np)
    x = np.ones((view.num_owned, 2, 5))
    before = ex.counters.as_dict()
    ex.propagate_numpy(view, x)
    ex.reverse_numpy(view, x)
    after = ex.counters.as_dict()
    row_bytes = 2 * 5 * 8
    sent = after["bytes_sent"] - before["bytes_sent"]
    assert sent == (view.num_sent + view.num_ghosts) * row_bytes, (sent, view.num_sent, view.num_ghosts)
    assert after["exchanges"] - before["exchanges"] == 2
    assert after["messages_sent"] - before["messages_sent"] == (
        np.count_nonzero(view.send_counts) + np.count_nonzero(view.recv_counts))
    totals = ex.total_counters()
    assert totals["bytes_sent"] == totals["bytes_received"], totals
    assert totals["messages_sent"] == totals["messages_received"], totals
    assert ex.allreduce_sum(RANK + 1) == P * (P + 1) // 2
    assert ex.allreduce_max(float(RANK)) == P - 1
    mean = ex.allreduce_mean(np.array([RANK, 2.0 * RANK]), weight=RANK + 1)
    expected = sum(r * (r + 1) for r in range(P)) / sum(r + 1 for r in range(P))
    close(mean, [expected, 2 * expected], "allreduce_mean")
    ok("counters_reductions")


def check_mismatch() -> None:
    """Debug mode: a rank that runs another operator's exchange, or is one exchange ahead, raises loudly."""
    graph, owner = ring()
    shift, mixing = graph.shift_operator("normalized_laplacian"), graph.metropolis_hastings()
    ex = MPIExchange(owner, (shift, mixing), debug=True)
    s_view, w_view = ex.view(shift), ex.view(mixing)
    x = np.ones((s_view.num_owned, 1, 2))
    ex.propagate(s_view, x)  # in step: passes
    # rank 0 exchanges W while the others exchange S (same shapes: without the check, silently wrong rows)
    try:
        ex.propagate(w_view if RANK == 0 else s_view, x)
    except Exception as err:  # TF wraps errors raised inside tf.numpy_function
        assert "MPI exchange out of step" in str(err) and "operator" in str(err), str(err)
    else:
        raise AssertionError("an operator mismatch was not detected")
    ok("debug_operator_mismatch")
    ex.free()
    ex = MPIExchange(owner, (shift, mixing), debug=True)
    s_view = ex.view(shift)
    if RANK == 1:
        ex.sequence += 1  # as if this rank had run one exchange the others did not
    try:
        ex.propagate_numpy(s_view, x)
    except ExchangeMismatchError as err:
        assert "out of step" in str(err) and "exchange #" in str(err), str(err)
    else:
        raise AssertionError("a sequence mismatch was not detected")
    ok("debug_sequence_mismatch")
    ex.free()


def fault() -> None:
    """The last rank raises while every other rank waits for it in an exchange."""
    graph, owner = ring()
    shift = graph.shift_operator("adjacency")
    ex = MPIExchange(owner, shift)
    view = ex.view(shift)
    COMM.Barrier()
    if RANK == P - 1:
        print(f"FAULT rank={RANK} t={time.time():.3f}", flush=True)
        raise RuntimeError(f"deliberate failure on rank {RANK}")
    print(f"WAITING rank={RANK}", flush=True)
    ex.propagate(view, np.ones((view.num_owned, 1, 1)))  # never completes: rank P-1 is gone
    print(f"UNREACHABLE rank={RANK}", flush=True)


def main(argv) -> None:
    graph, owner = ba_with_isolated_node()
    shift, mixing = graph.shift_operator("normalized_laplacian"), graph.metropolis_hastings()
    # one value per entry, M != M^T: the reverse exchange proper (the symmetric ones run it as a forward one)
    asymmetric = shift.with_values(np.random.default_rng(11).uniform(0.5, 1.5, size=shift.nnz))
    ex = MPIExchange(owner, (shift, mixing))
    assert ex.view(shift).symmetric and ex.view(mixing).symmetric and not ex.view(asymmetric).symmetric
    check_operator("ba_isolated_shift", ex, shift)
    check_operator("ba_isolated_mixing", ex, mixing)
    check_operator("ba_isolated_asymmetric", ex, asymmetric)
    ex.csr_min_nodes = 0  # the rank-local products as CSR products (core.ops.csr_apply), as from 1000 owned rows
    check_operator("ba_isolated_shift_csr", ex, shift)
    check_operator("ba_isolated_mixing_csr", ex, mixing)
    check_operator("ba_isolated_asymmetric_csr", ex, asymmetric)
    ex.csr_min_nodes = 10**9
    check_per_sample(ex, graph)
    check_gcnn(ex, graph)
    check_counters_and_reductions(ex, shift)
    ex.free()

    graph, owner = rank_without_boundary()
    shift = graph.shift_operator("laplacian")
    ex = MPIExchange(owner, shift)
    if RANK == P - 1:
        assert ex.neighbours.size == 0 and ex.view(shift).num_sent == 0, ex.neighbours
    check_operator("no_boundary_rank", ex, shift)
    ex.csr_min_nodes = 0
    check_operator("no_boundary_rank_csr", ex, shift)
    ex.free()

    check_mismatch()
    COMM.Barrier()
    print(f"DONE rank={RANK}", flush=True)
    if "--fault" in argv:
        fault()


if __name__ == "__main__":
    main(sys.argv[1:])
