"""Graph container: constructors, validation, shift operators and Metropolis-Hastings weights (eq. 16)."""

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from core.graph import SHIFT_OPERATORS, Graph, GraphError

# A hand-checked graph: path 0-1-2 plus edge 1-3 and an isolated node 4. Degrees d = (1, 3, 1, 1, 0).
EDGES = np.array([[0, 1], [1, 2], [1, 3]])
A = np.zeros((5, 5))
A[0, 1] = A[1, 0] = A[1, 2] = A[2, 1] = A[1, 3] = A[3, 1] = 1.0


def test_constructors_agree():
    graphs = [
        Graph.from_dense(A),
        Graph.from_sparse(sp.csr_matrix(A)),
        Graph.from_edge_list(EDGES, 5),
        Graph.from_networkx(nx.from_numpy_array(A)),
    ]
    for g in graphs:
        assert g.num_nodes == 5 and g.num_edges == 3
        np.testing.assert_array_equal(g.degree, [1, 3, 1, 1, 0])
        np.testing.assert_array_equal(g.adjacency_dense(), A)


def test_self_loops_are_dropped():
    a = A.copy()
    a[2, 2] = 5.0
    assert Graph.from_dense(a).num_edges == 3
    assert Graph.from_edge_list(np.vstack([EDGES, [[4, 4]]]), 5).num_edges == 3
    assert Graph.from_sparse(sp.csr_matrix(a)).num_edges == 3
    looped = nx.from_numpy_array(A)
    looped.add_edge(2, 2)  # networkx hands a self-loop over in COO parts, one of them negative
    np.testing.assert_array_equal(Graph.from_networkx(looped).adjacency_dense(), A)
    np.testing.assert_array_equal(Graph.from_networkx(looped, weight=None).adjacency_dense(), A)


def test_sparse_duplicates_are_summed_before_the_checks():
    parts = sp.coo_matrix(([1.0, -0.5, 1.0, -0.5], ([0, 0, 1, 1], [1, 1, 0, 0])), shape=(2, 2))
    np.testing.assert_array_equal(Graph.from_sparse(parts).weights, [0.5, 0.5])


def test_no_edges_from_an_empty_list():
    g = Graph.from_edge_list([], 3)
    assert g.num_nodes == 3 and g.num_edges == 0


def test_nearly_symmetric_input_is_symmetrised():
    a = A.copy()
    a[1, 0] = 1.0 + 1e-9
    for g in (Graph.from_dense(a, atol=1e-6), Graph.from_sparse(sp.csr_matrix(a), atol=1e-6)):
        d = g.adjacency_dense()
        np.testing.assert_array_equal(d, d.T)
        assert d[0, 1] == pytest.approx(1.0 + 5e-10, abs=1e-15)
        s = g.shift_operator("normalized_laplacian").to_dense()
        np.testing.assert_array_equal(s, s.T)


@pytest.mark.parametrize(
    "adjacency, message",
    [
        (np.ones((2, 3)), "square"),
        (np.array([[0, 1.0], [0, 0]]), "symmetric"),
        (np.array([[0, -1.0], [-1, 0]]), "non-negative"),
        (np.array([[0, np.nan], [np.nan, 0]]), "finite"),
        (np.array([["a", "b"], ["b", "a"]]), "real-valued"),
        (np.zeros((0, 0)), "no nodes"),
        (np.ones(3), "square"),
    ],
)
def test_dense_validation(adjacency, message):
    with pytest.raises(GraphError, match=message):
        Graph.from_dense(adjacency)


def test_other_validation():
    with pytest.raises(GraphError, match="symmetric"):
        Graph.from_sparse(sp.csr_matrix(np.array([[0, 1.0], [0, 0]])))
    with pytest.raises(GraphError, match="out of range"):
        Graph.from_edge_list([[0, 3]], 3)
    with pytest.raises(GraphError, match="more than once"):
        Graph.from_edge_list([[0, 1], [1, 0]], 3)
    with pytest.raises(GraphError, match="integers"):
        Graph.from_edge_list([[0.0, 1.0]], 3)
    with pytest.raises(GraphError, match="directed"):
        Graph.from_networkx(nx.DiGraph([(0, 1)]))
    with pytest.raises(GraphError, match="unknown shift"):
        Graph.from_dense(A).shift_operator("laplace")
    with pytest.raises(GraphError, match="unknown mixing"):
        Graph.from_dense(A).mixing_matrix("metropolis")


def test_shift_operators_match_dense_formulas():
    rng = np.random.default_rng(0)
    w = np.triu(rng.uniform(0.5, 2.0, (6, 6)) * (rng.random((6, 6)) < 0.5), 1)
    w = w + w.T
    w[5, :] = w[:, 5] = 0.0  # isolated node: D^-1/2 taken as 0
    g = Graph.from_dense(w)
    d = w.sum(1)
    inv_sqrt = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    norm = inv_sqrt[:, None] * w * inv_sqrt[None, :]
    expected = {
        "adjacency": w,
        "laplacian": np.diag(d) - w,
        "normalized_adjacency": norm,
        "normalized_laplacian": np.eye(6) - norm,
    }
    for kind in SHIFT_OPERATORS:
        np.testing.assert_allclose(g.shift_operator(kind).to_dense(), expected[kind], atol=1e-15)


def test_metropolis_hastings_hand_checked():
    w = Graph.from_edge_list(EDGES, 5).metropolis_hastings().to_dense()
    # eq. (16): W_ij = 1 / (1 + max(d_i, d_j)) on edges; every edge touches node 1 (degree 3) -> 1/4.
    expected = np.array([
        [3 / 4, 1 / 4, 0, 0, 0],
        [1 / 4, 1 / 4, 1 / 4, 1 / 4, 0],
        [0, 1 / 4, 3 / 4, 0, 0],
        [0, 1 / 4, 0, 3 / 4, 0],
        [0, 0, 0, 0, 1],
    ])
    np.testing.assert_allclose(w, expected, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metropolis_hastings_properties(seed):
    g = Graph.from_networkx(nx.erdos_renyi_graph(30, 0.15, seed=seed))
    w = g.metropolis_hastings().to_dense()
    np.testing.assert_allclose(w, w.T, atol=1e-15)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-13)
    assert (w >= 0).all()
    d = g.degree
    i, j = g.receivers[0], g.senders[0]
    assert w[i, j] == pytest.approx(1 / (1 + max(d[i], d[j])))


def test_laplacian_mixing_is_authors_rule():
    g = Graph.from_dense(A)
    beta = 1e-3
    expected = np.eye(5) - beta * (np.diag(A.sum(1)) - A)
    np.testing.assert_allclose(g.mixing_matrix("laplacian", beta).to_dense(), expected, atol=1e-15)
    with pytest.raises(GraphError, match="positive"):
        g.mixing_matrix("laplacian", 0.0)


def test_laplacian_mixing_refuses_a_beta_above_one_over_the_degree():
    star = Graph.from_networkx(nx.star_graph(3))
    with pytest.raises(GraphError, match=r"beta 1.0 is above 1 / max weighted degree = 0.333333"):
        star.mixing_matrix("laplacian", beta=1.0)
    w = star.mixing_matrix("laplacian", beta=1 / 3).to_dense()  # at the bound: the hub keeps weight 0
    assert w.min() >= 0 and w[0, 0] == pytest.approx(0.0, abs=1e-15)


def test_connectivity():
    assert not Graph.from_dense(A).is_connected()
    assert Graph.from_networkx(nx.path_graph(4)).is_connected()
    two_and_isolated = nx.disjoint_union_all([nx.path_graph(3), nx.path_graph(2), nx.empty_graph(2)])
    g = Graph.from_networkx(two_and_isolated)
    assert g.num_components() == 4 and g.component_sizes().tolist() == [3, 2, 1, 1]
    assert Graph.from_networkx(nx.path_graph(4)).component_sizes().tolist() == [4]
