"""Per-rank operator views, simulated for P ranks in one process, against core.ops.apply_operator (no MPI).

The simulation routes each rank's send buffer segment by segment as MPI_Neighbor_alltoallv would, so
these tests check the plans themselves: ghost sets, local indices, send and receive orders for the
forward (halo) and reverse exchanges, on random graphs with an isolated node, per-sample values, and a
partition in which one rank has no boundary node.
"""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.distributed.partition import contiguous_owner, edge_pattern, partition
from core.distributed.views import (
    OperatorView,
    PlanError,
    build_views,
    check_plans,
    is_symmetric,
    rank_neighbours,
    simulate_propagate,
    simulate_reverse,
)
from core.graph import Graph
from core.ops import apply_operator, to_operator

F64 = tf.float64


def random_graph(n, p_edge, seed, isolated=1):
    g = nx.gnp_random_graph(n, p_edge, seed=seed)
    g.add_nodes_from(range(n, n + isolated))  # isolated nodes at the end
    return Graph.from_networkx(g)


def reference(op_np, x, transposed=False):
    op = to_operator(op_np, F64)
    return apply_operator(op.transposed() if transposed else op, tf.constant(x, F64)).numpy()


def assert_matches(op_np, owner, x, num_ranks=None):
    views = build_views(op_np, owner, num_ranks)
    check_plans(views)
    np.testing.assert_allclose(simulate_propagate(views, x), reference(op_np, x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(simulate_reverse(views, x), reference(op_np, x, True), rtol=1e-12, atol=1e-14)
    return views


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("method", ["metis", "contiguous"])
def test_simulated_ranks_equal_global_apply(seed, parts, method):
    graph = random_graph(23, 0.15, seed)
    owner = partition(graph, parts, method, seed=0)
    x = np.random.default_rng(seed).normal(size=(graph.num_nodes, 3, 2))
    for op in (graph.shift_operator("normalized_laplacian"), graph.metropolis_hastings(),
               graph.shift_operator("adjacency")):
        views = assert_matches(op, owner, x)
        assert sum(v.num_owned for v in views) == graph.num_nodes


def test_ghosts_plans_and_local_indices():
    graph = random_graph(30, 0.12, seed=4)
    op = graph.shift_operator("laplacian")
    owner = partition(graph, 3)
    views = build_views(op, owner)
    for v in views:
        np.testing.assert_array_equal(v.owned, np.flatnonzero(owner == v.rank))
        mine = owner[op.rows] == v.rank
        expected_ghosts = np.unique(op.cols[mine][owner[op.cols[mine]] != v.rank])
        np.testing.assert_array_equal(np.sort(v.ghosts), expected_ghosts)
        assert np.all(np.diff(v.ghost_owner) >= 0)  # grouped by owner
        extended = np.concatenate([v.owned, v.ghosts])
        np.testing.assert_array_equal(v.owned[v.rows], op.rows[v.entries])
        np.testing.assert_array_equal(extended[v.cols], op.cols[v.entries])
        assert v.send_counts.sum() == v.num_sent and v.recv_counts.sum() == v.num_ghosts
        # what v sends to q is q's ghost block owned by v, in q's order
        for pos, q in enumerate(v.neighbours):
            start = v.send_displs[pos]
            sent = v.owned[v.send_index[start:start + v.send_counts[pos]]]
            w = views[q]
            np.testing.assert_array_equal(sent, w.ghosts[w.ghost_owner == v.rank])
        np.testing.assert_array_equal(v.diagonal(), op.diagonal()[v.owned])


def test_rank_without_boundary_nodes_and_isolated_node():
    # ranks 0 and 1 share a path; rank 2 owns a triangle of its own and an isolated node
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [6, 7], [7, 8], [6, 8]])
    graph = Graph.from_edge_list(edges, 10)
    owner = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    x = np.random.default_rng(0).normal(size=(10, 2, 3))
    views = assert_matches(graph.shift_operator("normalized_laplacian"), owner, x)
    assert views[2].neighbours.size == 0 and views[2].num_ghosts == 0 and views[2].num_sent == 0
    assert views[0].neighbours.tolist() == [1] and views[0].num_sent == 1 and views[0].num_ghosts == 1
    # a rank that owns no node at all still has a (empty) view
    views = assert_matches(graph.metropolis_hastings(), owner, x, num_ranks=4)
    assert views[3].num_owned == 0 and views[3].rows.size == 0


def test_per_sample_values_and_localize():
    graph = random_graph(18, 0.2, seed=5)
    base = graph.shift_operator("adjacency")
    values = np.random.default_rng(1).uniform(size=(4, base.nnz))
    per_sample = base.with_values(values)
    owner = contiguous_owner(graph.num_nodes, 3)
    x = np.random.default_rng(2).normal(size=(graph.num_nodes, 4, 2))
    assert_matches(per_sample, owner, x)
    # views of the pattern re-valued per batch with localize/with_values give the same result
    views = [v.with_values(v.localize(values)) for v in build_views(base, owner)]
    np.testing.assert_allclose(simulate_propagate(views, x), reference(per_sample, x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(simulate_reverse(views, x), reference(per_sample, x, True), rtol=1e-12, atol=1e-14)


def test_symmetry_is_exact_and_the_same_on_every_rank():
    """A view knows whether its global operator equals its transpose (then exchanges may run M^T as M)."""
    graph = random_graph(20, 0.2, seed=3)
    owner = partition(graph, 3, "metis", seed=0)
    adjacency = graph.shift_operator("adjacency")
    rng = np.random.default_rng(4)
    cases = {"normalized_laplacian": (graph.shift_operator("normalized_laplacian"), True),
             "metropolis_hastings": (graph.metropolis_hastings(), True),
             "random values": (adjacency.with_values(rng.uniform(size=adjacency.nnz)), False),
             "per-sample equal": (adjacency.with_values(np.tile(adjacency.values, (3, 1))), True),
             "per-sample random": (adjacency.with_values(rng.uniform(size=(3, adjacency.nnz))), False)}
    for name, (op, expected) in cases.items():
        assert [v.symmetric for v in build_views(op, owner)] == [expected] * 3, name
    # one value off by an ulp breaks it; with_values cannot tell, so it clears the flag
    values = adjacency.values.astype(np.float64).copy()
    values[0] = np.nextafter(values[0], 2.0)
    assert not OperatorView.build(adjacency.with_values(values), owner, 0).symmetric
    view = OperatorView.build(adjacency, owner, 0)
    assert view.symmetric and not view.with_values(view.values).symmetric
    # a pattern without its transpose, and one that repeats an entry
    assert not is_symmetric(np.array([0]), np.array([1]), np.array([1.0]), 2)
    assert not is_symmetric(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), np.ones(4), 2)
    assert is_symmetric(np.array([0, 1, 1]), np.array([1, 0, 1]), np.array([2.0, 2.0, 5.0]), 2)


def test_views_on_a_communicator_for_several_operators():
    """Views aligned with the neighbour lists of the union of S and a sparser operator: zero counts where
    the sparser one has no edge, same results."""
    graph = random_graph(25, 0.15, seed=6)
    shift, n = graph.shift_operator("adjacency"), graph.num_nodes
    owner = partition(graph, 3)
    # a sparser symmetric operator: no edge between rank 2 and the others
    a, b = owner[shift.rows], owner[shift.cols]
    keep = (a == b) | ((a != 2) & (b != 2))
    sparse = type(shift)(shift.rows[keep], shift.cols[keep], shift.values[keep], n)
    _, receivers, senders = edge_pattern(shift, sparse)
    lists = [rank_neighbours(owner, receivers, senders, r) for r in range(3)]
    views = build_views(sparse, owner, neighbours=lists)
    assert any(v.send_counts.min() == 0 for v in views if v.neighbours.size)  # some pairs unused by it
    x = np.random.default_rng(3).normal(size=(n, 2, 2))
    np.testing.assert_allclose(simulate_propagate(views, x), reference(sparse, x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(simulate_reverse(views, x), reference(sparse, x, True), rtol=1e-12, atol=1e-14)


def test_inconsistent_plans_are_refused():
    graph = random_graph(20, 0.2, seed=7)
    owner = partition(graph, 3)
    shift = graph.shift_operator("adjacency")
    with pytest.raises(PlanError, match="not in its neighbour list"):
        OperatorView.build(shift, owner, 0, neighbours=[])
    views = build_views(shift, owner)
    other = build_views(graph.metropolis_hastings(), owner)
    with pytest.raises(PlanError, match="different operators"):
        check_plans([views[0], other[1], views[2]])
    with pytest.raises(ValueError, match="rank 5"):
        OperatorView.build(shift, owner, 5)


def test_importing_the_backend_does_not_start_mpi():
    import sys

    import core.distributed.exchange  # noqa: F401
    import core.distributed.faults as faults
    import core.distributed.launch  # noqa: F401

    assert "mpi4py.MPI" not in sys.modules  # importing mpi4py.MPI would initialise MPI in this process
    assert faults.one_line(RuntimeError("two\n  lines")) == "RuntimeError: two lines"
