"""GCNN forward pass (eqs. 9-10), parameter handling and per-node replicas."""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.replicas import consensus_error, consensus_model, flatten, replicate, unflatten

F64 = tf.float64
SIGMOID = lambda h: 1 / (1 + np.exp(-h))  # noqa: E731


def test_forward_equals_dense_eq_9():
    """X^l = sigma(X^{l-1} Theta0 + S X^{l-1} Theta1 + b), computed densely in NumPy."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(15, 2, seed=1))
    s_dense = graph.shift_operator("normalized_laplacian").to_dense()
    gcnn = GCNN((4, 6, 2), ("tanh", "sigmoid"), bias=True)
    params = gcnn.init_params(1, "glorot", F64, bias_init=0.1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 15, 4))  # sample-major
    out, _ = gcnn.forward(params, tf.constant(x), to_operator(graph.shift_operator("normalized_laplacian"), F64),
                          sample_major=True)
    p = [q.numpy() for q in params]
    h1 = np.tanh(x @ p[0] + s_dense @ x @ p[1] + p[2])
    expected = SIGMOID(h1 @ p[3] + s_dense @ h1 @ p[4] + p[5])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_per_node_equal_copies_equal_shared_and_own_copy_is_used():
    graph = Graph.from_networkx(nx.erdos_renyi_graph(12, 0.3, seed=2))
    shift = to_operator(graph.shift_operator("adjacency"), F64)
    gcnn = GCNN((3, 5, 5, 1), ("relu", "leaky_relu", "identity"), bias=(False, True, True))
    shared = gcnn.init_params(2, "glorot", F64)
    x = tf.constant(np.random.default_rng(2).normal(size=(12, 4, 3)), F64)
    y_shared, _ = gcnn.forward(shared, x, shift)
    copies = [replicate(p, 12) for p in shared]
    y_copies, _ = gcnn.forward(copies, x, shift)
    np.testing.assert_allclose(y_copies.numpy(), y_shared.numpy(), rtol=1e-13)
    # Changing node k's last-layer Theta1 copy changes node k's output only (it acts on k's own aggregate).
    k = int(np.argmax(graph.degree))
    changed = list(copies)
    changed[-2] = tf.tensor_scatter_nd_add(changed[-2], [[k]], tf.ones((1, 5, 1), F64))
    y_changed, _ = gcnn.forward(changed, x, shift)
    diff = np.abs((y_changed - y_copies).numpy()).sum(axis=(1, 2))
    assert diff[k] > 0 and np.all(np.delete(diff, k) == 0)


def test_per_block_copies_equal_each_block_node_holding_the_copy_and_gradients_agree():
    """Per-block parameters (G copies, consecutive |V|/G nodes each) = per-node copies repeated per block."""
    graph = Graph.from_networkx(nx.erdos_renyi_graph(12, 0.3, seed=3))
    shift = to_operator(graph.shift_operator("adjacency"), F64)
    gcnn = GCNN((2, 4, 1), ("relu", "sigmoid"), bias=True)
    shared = gcnn.init_params(3, "glorot", F64, bias_init=0.1)
    blocks = [tf.stack([p * (1 + 0.1 * g) for g in range(3)]) for p in shared]
    per_node = [tf.repeat(p, 4, axis=0) for p in blocks]  # 3 blocks of 4 nodes
    x = tf.constant(np.random.default_rng(3).normal(size=(12, 5, 2)), F64)
    factor = tf.constant(np.random.default_rng(4).uniform(0.5, 2, size=(12, 5)), F64)

    def output_and_grads(params):
        with tf.GradientTape() as tape:
            tape.watch(params)
            y, _ = gcnn.forward(params, x, shift, factor)
            loss = tf.reduce_sum(tf.sin(y))
        return y, tape.gradient(loss, params)

    y_blocks, g_blocks = output_and_grads(blocks)
    y_nodes, g_nodes = output_and_grads(per_node)
    np.testing.assert_allclose(y_blocks.numpy(), y_nodes.numpy(), rtol=1e-13)
    for gb, gn in zip(g_blocks, g_nodes, strict=True):  # a block's gradient sums its nodes' gradients
        summed = tf.reduce_sum(tf.reshape(gn, [3, 4, *gn.shape[1:]]), axis=1)
        np.testing.assert_allclose(gb.numpy(), summed.numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="5 parameter copies neither match nor evenly divide the 12 nodes"):
        gcnn.forward([tf.repeat(p[:1], 5, axis=0) for p in blocks], x, shift, factor)


def test_paper_student_parameter_count_and_uniform_init():
    gcnn = GCNN((10, 10, 1), "sigmoid")
    assert gcnn.num_params == 220
    params = gcnn.init_params(0, "uniform", scale=(1.0, 2.0))
    assert 0 <= float(tf.reduce_min(params[0])) and float(tf.reduce_max(params[0])) <= 1
    assert float(tf.reduce_max(params[1])) > 1 and float(tf.reduce_max(params[1])) <= 2
    np.testing.assert_array_equal(params[0].numpy(), gcnn.init_params(0, "uniform", scale=(1.0, 2.0))[0].numpy())


@pytest.mark.parametrize("kwargs, message", [
    (dict(widths=(3,)), "widths"),
    (dict(widths=(3, 0, 1)), "widths"),
    (dict(widths=(3, 2, 1), activations=("relu",)), "one activation"),
    (dict(widths=(3, 2), activations="swish"), "unknown activation"),
    (dict(widths=(2.7, 1)), "positive integers"),
    (dict(widths="31"), "positive integers"),
    (dict(widths=(3, 1), bias=1), "bias must be a bool"),
    (dict(widths=(3, 2, 1), bias=(True, "no")), "bias must be a bool"),
])
def test_invalid_architectures(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GCNN(**kwargs)


def test_replicas_flatten_and_consensus():
    gcnn = GCNN((2, 3, 1), "tanh", bias=True)
    shared = gcnn.init_params(3, "glorot", F64)
    flat = flatten(shared)
    assert flat.shape == (gcnn.num_params,)
    for a, b in zip(unflatten(flat, gcnn.param_shapes()), shared):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    copies = replicate(flat, 5)
    assert float(consensus_error(copies)) < 1e-15
    np.testing.assert_allclose(consensus_model(copies).numpy(), flat.numpy())
    offset = np.zeros((5, gcnn.num_params))
    offset[2] = 1.0
    spread = copies + tf.constant(offset, F64)
    mean = flat.numpy() + 0.2
    expected = np.linalg.norm(1.0 - 0.2 * np.ones(gcnn.num_params)) / np.linalg.norm(mean)
    assert float(consensus_error(spread)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("slope", [0.2, 0.01, 1 / 3])
def test_leaky_relu_and_its_vjp_are_exact_in_float64(slope):
    """The slope is built in float64, not cast from float32 (tf.cast(0.2, tf.float64) = 0.20000000298...),
    so sigma(H) and its VJP (eq. 12) equal their NumPy float64 values bit for bit."""
    act = GCNN((2, 2), "leaky_relu", leaky_slope=slope).activation(1)
    rng = np.random.default_rng(5)
    h, z = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5))
    out = act(tf.constant(h, F64))
    assert out.dtype == F64
    np.testing.assert_array_equal(out.numpy(), np.where(h > 0, h, slope * h))
    vjp = act.vjp(tf.constant(h, F64), out, tf.constant(z, F64))
    np.testing.assert_array_equal(vjp.numpy(), np.where(h > 0, z, slope * z))
    # float32 runs are unchanged: the same slope rounded once to float32
    out32 = act(tf.constant(h, tf.float32)).numpy()
    h32 = h.astype(np.float32)
    np.testing.assert_array_equal(out32, np.where(h32 > 0, h32, np.float32(slope) * h32))


def test_leaky_relu_forward_matches_numpy_float64():
    """A leaky-ReLU GCNN (eq. 10) against dense NumPy float64: a float32 slope would be off by ~1e-8."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(10, 2, seed=6))
    s_dense = graph.shift_operator("adjacency").to_dense()
    gcnn = GCNN((3, 4, 2), "leaky_relu", bias=True)
    params = gcnn.init_params(6, "glorot", F64, bias_init=-0.3)
    x = np.random.default_rng(6).normal(size=(5, 10, 3))
    out, _ = gcnn.forward(params, tf.constant(x), to_operator(graph.shift_operator("adjacency"), F64),
                          sample_major=True)
    p = [q.numpy() for q in params]
    leaky = lambda h: np.where(h > 0, h, 0.2 * h)  # noqa: E731
    h1 = leaky(x @ p[0] + s_dense @ x @ p[1] + p[2])
    expected = leaky(h1 @ p[3] + s_dense @ h1 @ p[4] + p[5])
    assert np.any(expected < 0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-13, atol=1e-15)
