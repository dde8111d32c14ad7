"""D-GC-Adam (gradient consensus, then local Adam): identities, a NumPy re-computation and its counts.

Float64, fixed seeds, eager steps through the batched executor (and the protocol executor once).
"""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.executors import BatchedExecutor, ProtocolExecutor, flatten
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import EXTRA_OPTIMIZERS, OPTIMIZERS, GradientConsensusAdam, make_optimizer
from core.replicas import replicate

DT = tf.float64
MODEL = GCNN((3, 4, 1), ("tanh", "sigmoid"), bias=(True, False))


def batch(seed, num_nodes, size=5):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(size, num_nodes, 3)), DT),
            tf.constant(rng.normal(size=(size, num_nodes, 1)), DT))


def train(name, graph, steps, k=1, lr=0.05):
    opt = make_optimizer(name, k)
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mixing = to_operator(graph.metropolis_hastings(), DT)
    theta = flatten(MODEL.init_params(1, "glorot", DT))
    if not opt.centralized:
        theta = replicate(theta, graph.num_nodes)
    state, executor = opt.init_state(theta), BatchedExecutor(MODEL)
    for t in range(steps):
        x, y = batch(t, graph.num_nodes)
        result = executor.train_step(theta, state, x, y, shift, mixing, opt, tf.constant(lr, DT))
        theta, state = result.theta, result.state
    return theta, result.cost


def test_name_rounds_and_registry():
    opt = make_optimizer("d-gc-adam", 3)
    assert isinstance(opt, GradientConsensusAdam) and opt.name == "d-gc-adam" and opt.consensus_rounds == 3
    assert opt.consensus == "gradient" and opt.schedule == "piggyback" and opt.payload_size(7) == 7
    assert "d-gc-adam" in EXTRA_OPTIMIZERS and "d-gc-adam" not in OPTIMIZERS  # no app's "all" changes
    with pytest.raises(ValueError, match="K must be"):
        make_optimizer("d-gc-adam", 0)


@pytest.mark.parametrize("k", [1, 3])
def test_on_a_complete_graph_every_copy_follows_c_adam(k):
    """W = 11^T / |V| (MH on a complete graph): W^K g is the average gradient, so from equal copies every
    copy takes C-Adam's steps on the centralized gradient."""
    graph = Graph.from_dense(np.ones((6, 6)) - np.eye(6))
    central, _ = train("c-adam", graph, 6)
    distributed, _ = train("d-gc-adam", graph, 6, k=k)
    np.testing.assert_allclose(distributed.numpy(), np.tile(central.numpy(), (6, 1)), rtol=1e-9, atol=1e-12)


def test_step_matches_a_numpy_recomputation():
    rng = np.random.default_rng(3)
    opt = GradientConsensusAdam(2)
    theta = tf.constant(rng.normal(size=(4, 5)), DT)
    state = opt.init_state(theta)
    th, m, v = theta.numpy(), np.zeros((4, 5)), np.zeros((4, 5))
    for t in range(1, 5):
        grad, mixed = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
        theta, state = opt.step(theta, tf.constant(grad, DT), tf.constant(mixed, DT), state, tf.constant(0.1, DT))
        m = 0.9 * m + 0.1 * mixed  # the mixed gradient drives the moments; the local one is unused
        v = 0.999 * v + 0.001 * mixed**2
        th = th - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(theta.numpy(), th, rtol=1e-12)


def test_protocol_and_batched_executors_agree_and_count_d_naive_pb_rounds():
    gcnn = GCNN((3, 4, 2), ("tanh", "sigmoid"), bias=True)
    graph = Graph.from_networkx(nx.barabasi_albert_graph(10, 2, seed=2))
    n, B, K = graph.num_nodes, 3, 2
    rng = np.random.default_rng(0)
    optimizer = make_optimizer("d-gc-adam", K)
    theta = replicate(flatten(gcnn.init_params(0, "glorot", DT)), n)
    theta += tf.constant(rng.normal(0, 0.05, theta.shape), DT)
    x = tf.constant(rng.normal(size=(B, n, 3)), DT)
    y = tf.constant(rng.normal(size=(B, n, 2)), DT)
    args = (theta, optimizer.init_state(theta), x, y, to_operator(graph.shift_operator("normalized_laplacian"), DT),
            to_operator(graph.metropolis_hastings(), DT), optimizer, 0.05)
    batched, protocol = BatchedExecutor(gcnn).train_step(*args), ProtocolExecutor(gcnn).train_step(*args)
    np.testing.assert_allclose(batched.theta.numpy(), protocol.theta.numpy(), rtol=1e-10, atol=1e-14)
    for a, b in zip(batched.state, protocol.state):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    L = gcnn.num_layers
    assert batched.cost == protocol.cost and batched.cost.rounds == L * B + L - 1 + K
    naive_pb = make_optimizer("d-naive-pb", K)
    pb = BatchedExecutor(gcnn).train_step(theta, naive_pb.init_state(theta), *args[2:6], naive_pb, 0.05)
    assert pb.cost == batched.cost  # the rounds and floats of D-naive-PB with the same K
