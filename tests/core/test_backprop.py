"""Local backpropagation (eqs. 11-14) against its oracles: GradientTape on per-node copies, central finite
differences, and the centralized gradient (eq. 7)."""

import itertools

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.backprop import local_backprop
from core.gcnn import GCNN
from core.graph import SHIFT_OPERATORS, Graph
from core.ops import to_operator
from core.replicas import flatten, replicate

F64 = tf.float64


def ba_graph(n=16, seed=0):
    return Graph.from_networkx(nx.barabasi_albert_graph(n, 2, seed=seed))


def er_graph_with_isolated_node(n=16, seed=0):
    g = nx.erdos_renyi_graph(n, 0.25, seed=seed)
    g.remove_edges_from(list(g.edges(0)))  # node 0 is isolated
    return Graph.from_networkx(g)


ARCHITECTURES = {
    1: GCNN((3, 2), ("tanh",), bias=True),
    2: GCNN((4, 5, 1), ("sigmoid", "identity"), bias=(False, True)),
    3: GCNN((2, 6, 3, 2), ("leaky_relu", "relu", "tanh"), bias=(True, False, True)),
    4: GCNN((3, 4, 7, 2, 1), ("tanh", "sigmoid", "leaky_relu", "identity"), bias=(True, True, False, True)),
}


def unequal_copies(gcnn, num_nodes, seed):
    """Per-node copies that differ from node to node (so a wrong copy index cannot go unnoticed)."""
    rng = np.random.default_rng(seed)
    return [p + tf.constant(rng.normal(0, 0.3, p.shape), F64)
            for p in replicate_list(gcnn.init_params(seed, "glorot", F64), num_nodes)]


def replicate_list(params, num_nodes):
    return [replicate(p, num_nodes) for p in params]


def tape_gradients(gcnn, params, x, y, shift, self_factor=None):
    with tf.GradientTape() as tape:
        tape.watch(params)
        y_hat, cache = gcnn.forward(params, x, shift, self_factor)
        loss = tf.reduce_sum((y_hat - y) ** 2)  # l = sum_i l_i
    return tape.gradient(loss, params), y_hat, cache


def max_relative_error(a_list, b_list):
    return max(float(tf.reduce_max(tf.abs(a - b)) / (tf.reduce_max(tf.abs(b)) + 1e-300))
               for a, b in zip(a_list, b_list))


CASES = list(itertools.product(["ba", "er_isolated"], [1, 2, 3, 4], SHIFT_OPERATORS))


@pytest.mark.parametrize("graph_kind, depth, shift_kind", CASES)
def test_local_backprop_equals_gradient_tape(graph_kind, depth, shift_kind):
    graph = ba_graph(seed=depth) if graph_kind == "ba" else er_graph_with_isolated_node(seed=depth)
    gcnn = ARCHITECTURES[depth]
    n, batch = graph.num_nodes, 3
    rng = np.random.default_rng(depth)
    shift = to_operator(graph.shift_operator(shift_kind), F64)
    params = unequal_copies(gcnn, n, seed=depth)
    x = tf.constant(rng.normal(size=(n, batch, gcnn.widths[0])), F64)
    y = tf.constant(rng.normal(size=(n, batch, gcnn.widths[-1])), F64)
    expected, y_hat, cache = tape_gradients(gcnn, params, x, y, shift)
    local = local_backprop(gcnn, params, cache, 2 * (y_hat - y), shift)  # eq. (11)
    assert max_relative_error(local, expected) <= 1e-10


def test_self_factor_and_per_sample_asymmetric_shift():
    """UWMMSE-style layer: S = H per sample (asymmetric, weighted) and diag(H) as the self factor."""
    n, batch = 6, 4
    rng = np.random.default_rng(7)
    h = rng.uniform(0.1, 1.0, (batch, n, n))
    pattern = Graph.from_dense(np.ones((n, n)))  # complete pattern; values replaced per sample
    base = pattern.shift_operator("adjacency")
    values = h[:, base.rows, base.cols]  # S_ij = H[b, i, j], asymmetric
    shift = to_operator(base.with_values(values), F64)
    self_factor = tf.constant(np.einsum("bii->ib", h), F64)  # node-major (|V|, B)
    gcnn = GCNN((1, 5, 1), ("relu", "sigmoid"), bias=True)
    params = unequal_copies(gcnn, n, seed=3)
    x = tf.ones((n, batch, 1), F64)
    y = tf.constant(rng.normal(size=(n, batch, 1)), F64)
    expected, y_hat, cache = tape_gradients(gcnn, params, x, y, shift, self_factor)
    local = local_backprop(gcnn, params, cache, 2 * (y_hat - y), shift, self_factor)
    assert max_relative_error(local, expected) <= 1e-10


def test_softmax_output_layer():
    graph = ba_graph(10, seed=4)
    shift = to_operator(graph.shift_operator("normalized_adjacency"), F64)
    gcnn = GCNN((2, 4, 3), ("tanh", "softmax"), bias=True)
    params = unequal_copies(gcnn, 10, seed=4)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(10, 2, 2)), F64)
    y = tf.constant(rng.normal(size=(10, 2, 3)), F64)
    expected, y_hat, cache = tape_gradients(gcnn, params, x, y, shift)
    local = local_backprop(gcnn, params, cache, 2 * (y_hat - y), shift)
    assert max_relative_error(local, expected) <= 1e-10


def test_local_backprop_matches_finite_differences():
    graph = Graph.from_networkx(nx.path_graph(4))
    shift = to_operator(graph.shift_operator("normalized_laplacian"), F64)
    gcnn = GCNN((2, 3, 1), ("tanh", "sigmoid"), bias=(True, False))
    params = unequal_copies(gcnn, 4, seed=11)
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(size=(4, 2, 2)), F64)
    y = tf.constant(rng.normal(size=(4, 2, 1)), F64)

    def loss(ps):
        y_hat, _ = gcnn.forward(ps, x, shift)
        return float(tf.reduce_sum((y_hat - y) ** 2))

    y_hat, cache = gcnn.forward(params, x, shift)
    local = local_backprop(gcnn, params, cache, 2 * (y_hat - y), shift)
    step = 1e-6
    for k, p in enumerate(params):
        flat = p.numpy().ravel()
        numeric = np.zeros_like(flat)
        for idx in range(flat.size):
            plus, minus = flat.copy(), flat.copy()
            plus[idx] += step
            minus[idx] -= step
            numeric[idx] = (loss(_with(params, k, plus.reshape(p.shape)))
                            - loss(_with(params, k, minus.reshape(p.shape)))) / (2 * step)
        np.testing.assert_allclose(local[k].numpy().ravel(), numeric, rtol=1e-6, atol=1e-8)


def _with(params, k, value):
    out = list(params)
    out[k] = tf.constant(value, F64)
    return out


@pytest.mark.parametrize("shift_kind", SHIFT_OPERATORS)
def test_node_mean_of_local_gradients_is_centralized_gradient(shift_kind):
    """With equal copies, (1/|V|) sum_i grad J_i = d/dtheta of the node-mean loss (eqs. 7, 8b)."""
    graph = er_graph_with_isolated_node(12, seed=5)
    shift = to_operator(graph.shift_operator(shift_kind), F64)
    gcnn = ARCHITECTURES[3]
    shared = gcnn.init_params(5, "glorot", F64)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(12, 4, gcnn.widths[0])), F64)
    y = tf.constant(rng.normal(size=(12, 4, gcnn.widths[-1])), F64)
    with tf.GradientTape() as tape:
        tape.watch(shared)
        y_hat, _ = gcnn.forward(shared, x, shift)
        node_mean_loss = tf.reduce_sum(tf.reduce_mean(tf.reduce_sum((y_hat - y) ** 2, -1), axis=0))
    centralized = flatten(tape.gradient(node_mean_loss, shared))
    copies = replicate_list(shared, 12)
    y_hat, cache = gcnn.forward(copies, x, shift)
    local = flatten(local_backprop(gcnn, copies, cache, 2 * (y_hat - y), shift), per_node=True)
    np.testing.assert_allclose(tf.reduce_mean(local, axis=0), centralized, rtol=1e-10, atol=1e-12)
