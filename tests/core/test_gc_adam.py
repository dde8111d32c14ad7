"""D-GC-Adam (gradient consensus, then local Adam) and D-GCP-Adam (parameters mixed in the same rounds):
identities, NumPy re-computations and their counts.

Float64, fixed seeds, eager steps through the batched executor (and the protocol executor once).
"""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.comm import CommSimulator, Message, Schedule
from core.executors import BatchedExecutor, ProtocolExecutor, consensus_update, flatten
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


def test_d_gcp_adam_is_d_gc_adam_mixing_theta_and_gradient():
    opt = make_optimizer("d-gcp-adam", 4)
    assert isinstance(opt, GradientConsensusAdam) and opt.mix_parameters and opt.name == "d-gcp-adam"
    assert opt.consensus_rounds == 4 and opt.consensus == "gradient" and opt.schedule == "piggyback"
    assert opt.payload_size(7) == 14 and "d-gcp-adam" in EXTRA_OPTIMIZERS and "d-gcp-adam" not in OPTIMIZERS
    theta, grad = tf.reshape(tf.range(6, dtype=DT), (2, 3)), -tf.reshape(tf.range(6, dtype=DT), (2, 3))
    np.testing.assert_array_equal(opt.consensus_payload(theta, grad, ()), tf.concat([theta, grad], axis=1))
    assert make_optimizer("d-gc-adam", 4).consensus_payload(theta, grad, ()) is grad


@pytest.mark.parametrize("name", ["d-gc-adam", "d-gcp-adam"])
@pytest.mark.parametrize("k", [1, 3])
def test_on_a_complete_graph_every_copy_follows_c_adam(name, k):
    """W = 11^T / |V| (MH on a complete graph): W^K g is the average gradient (and W^K theta = theta for
    equal copies), so from equal copies every copy takes C-Adam's steps on the centralized gradient."""
    graph = Graph.from_dense(np.ones((6, 6)) - np.eye(6))
    central, _ = train("c-adam", graph, 6)
    distributed, _ = train(name, graph, 6, k=k)
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


def test_d_gcp_adam_step_matches_a_numpy_recomputation():
    """The step starts from the mixed parameters y and normalises the mixed gradient x of [y, x]."""
    rng = np.random.default_rng(4)
    opt = GradientConsensusAdam(2, mix_parameters=True)
    theta = tf.constant(rng.normal(size=(4, 5)), DT)
    state = opt.init_state(theta)
    m, v = np.zeros((4, 5)), np.zeros((4, 5))
    for t in range(1, 5):
        grad, mixed = rng.normal(size=(4, 5)), rng.normal(size=(4, 10))
        theta, state = opt.step(theta, tf.constant(grad, DT), tf.constant(mixed, DT), state, tf.constant(0.1, DT))
        y, x = mixed[:, :5], mixed[:, 5:]
        m = 0.9 * m + 0.1 * x
        v = 0.999 * v + 0.001 * x**2
        np.testing.assert_allclose(theta.numpy(), y - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8),
                                   rtol=1e-12)


def test_d_gcp_adam_mixes_theta_and_gradient_k_times_through_the_simulator():
    """consensus_update sends [theta, g] K times (2|theta| floats a round, K rounds) and steps from W^K theta."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(8, 2, seed=1))
    n, p, K = graph.num_nodes, 5, 3
    rng = np.random.default_rng(5)
    w = graph.metropolis_hastings()
    w_dense = w.to_dense()
    theta, grad = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    opt = make_optimizer("d-gcp-adam", K)
    sim = CommSimulator(Schedule("piggyback", 1, 1, K))
    sim.record(Message("fwd", 0, 1), 0)  # the (here empty) forward pass the schedule expects
    out, (m, v, t) = consensus_update(opt, tf.constant(theta, DT), opt.init_state(tf.constant(theta, DT)),
                                      tf.constant(grad, DT), to_operator(w, DT), 0.1, sim)
    wk = np.linalg.matrix_power(w_dense, K)
    x = wk @ grad
    expected = wk @ theta - 0.1 * (0.1 * x / 0.1) / (np.sqrt(0.001 * x**2 / 0.001) + 1e-8)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    cost = sim.cost()
    assert cost.rounds == 1 + K and cost.floats_per_node == K * 2 * p and cost.largest_message == 2 * p


def test_d_gcp_adam_pulls_copies_together_where_d_gc_adam_does_not():
    """Same graph and data: mixing theta keeps the copies closer than D-GC-Adam's unmixed copies."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(10, 2, seed=3))

    def spread(theta):
        return float(tf.reduce_max(tf.abs(theta - tf.reduce_mean(theta, axis=0))))

    gc, _ = train("d-gc-adam", graph, 8, k=2)
    gcp, _ = train("d-gcp-adam", graph, 8, k=2)
    assert spread(gcp) < 0.5 * spread(gc)


@pytest.mark.parametrize("name", ["d-gc-adam", "d-gcp-adam"])
def test_protocol_and_batched_executors_agree_and_count_d_naive_pb_rounds(name):
    gcnn = GCNN((3, 4, 2), ("tanh", "sigmoid"), bias=True)
    graph = Graph.from_networkx(nx.barabasi_albert_graph(10, 2, seed=2))
    n, B, K = graph.num_nodes, 3, 2
    rng = np.random.default_rng(0)
    optimizer = make_optimizer(name, K)
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
    if name == "d-gc-adam":
        assert pb.cost == batched.cost  # the rounds and floats of D-naive-PB with the same K
    else:  # the same rounds; each consensus round carries theta as well as the gradient
        assert batched.cost.rounds == pb.cost.rounds and batched.cost.largest_message == 2 * gcnn.num_params
        assert batched.cost.floats_per_node == pb.cost.floats_per_node + K * gcnn.num_params
