"""Communication counts measured by the simulator against Table I, and protocol vs batched executor."""

import math

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.comm import CommSimulator, Message, Schedule, ScheduleError
from core.executors import BatchedExecutor, ProtocolExecutor
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import OPTIMIZERS, GradientConsensus, make_optimizer
from core.replicas import flatten, replicate

F64 = tf.float64


def table_one_rounds(scheme, L, B, K):
    """Table I, column 'Total Msg. Rounds' (written out independently of core.comm)."""
    return {
        "forward": L * B,
        "naive": B * (2 * L - 1) + B * K,
        "batch": 2 * B * L - B + K,
        "piggyback": L * B + L - 1 + K,
        "dopt": L * B + L - 1,
    }[scheme]


def optimizer_for(scheme, K):
    return {
        "forward": make_optimizer("c-sgd"),
        "naive": make_optimizer("d-naive", K),
        "batch": GradientConsensus(K, "batch"),
        "piggyback": make_optimizer("d-naive-pb", K),
        "dopt": make_optimizer("d-sgd"),
    }[scheme]


def run_batched(gcnn, graph, optimizer, batch_size, seed=0):
    n = graph.num_nodes
    rng = np.random.default_rng(seed)
    shift = to_operator(graph.shift_operator("normalized_laplacian"), F64)
    mixing = to_operator(graph.metropolis_hastings(), F64)
    theta = flatten(gcnn.init_params(seed, "glorot", F64))
    if not optimizer.centralized:
        theta = replicate(theta, n) + tf.constant(rng.normal(0, 0.05, (n, theta.shape[0])), F64)
    x = tf.constant(rng.normal(size=(batch_size, n, gcnn.widths[0])), F64)
    y = tf.constant(rng.normal(size=(batch_size, n, gcnn.widths[-1])), F64)
    args = (theta, optimizer.init_state(theta), x, y, shift, mixing, optimizer, 0.05)
    return args, BatchedExecutor(gcnn).train_step(*args)


PAPER_GCNN = GCNN((10, 10, 1), "sigmoid")  # App A student: |theta| = 220
PAPER_GRAPH = Graph.from_networkx(nx.barabasi_albert_graph(100, 2, seed=3))


@pytest.mark.parametrize("scheme, expected", [("forward", 200), ("naive", 400), ("batch", 301),
                                              ("piggyback", 202), ("dopt", 201)])
def test_table_one_paper_setting(scheme, expected):
    """L = 2, B = 100, K = 1 (Section IV-A): 200 / 400 / 301 / 202 / 201 rounds per mini-batch."""
    _, result = run_batched(PAPER_GCNN, PAPER_GRAPH, optimizer_for(scheme, 1), 100)
    assert result.cost.rounds == expected == table_one_rounds(scheme, 2, 100, 1)


def test_dopt_floats_and_largest_message_paper_setting():
    # B(g0 + g1) forward + B g1 backward + |theta| + degree = 3221 floats (docs/design.md, section 4)
    _, result = run_batched(PAPER_GCNN, PAPER_GRAPH, make_optimizer("d-sgd"), 100)
    assert result.cost.floats_per_node == 100 * 20 + 100 * 10 + 220 + 1 == 3221
    # g_l + g_{L-l-1} + |theta|/(LB), the pieces rounded up: 10 + 10 + ceil(221 / 200)
    assert result.cost.largest_message == 22
    _, amsgrad = run_batched(PAPER_GCNN, PAPER_GRAPH, make_optimizer("d-amsgrad"), 100)
    assert amsgrad.cost.rounds == 201  # u~ rides on the same rounds: Table I omits it, we count it
    assert amsgrad.cost.floats_per_node == 3221 + 220


def largest_message_bounds(scheme, widths, B, theta_size, payload_size):
    """Table I, column 'Message size', as bounds on the largest message of any round."""
    L = len(widths) - 1
    fwd = max(widths[:L])  # X^{l-1} for l = 1..L
    if scheme == "forward":
        return fwd, fwd
    if scheme in ("naive", "batch"):
        return max(fwd, theta_size), max(fwd, theta_size)
    bundled = max([widths[L - 1]] + [widths[r - 1] + widths[L - r] for r in range(1, L)])  # g_l + g_{L-l-1}
    if B == 1:
        bundled = max(max(widths[:L]), max(widths[1:L], default=0))
    if scheme == "piggyback":
        return max(bundled, theta_size), max(bundled, theta_size)
    pieces = (payload_size + 1) / (L * B)  # |theta|/(LB), plus the degree
    return bundled + math.floor(pieces), bundled + math.ceil(pieces)


@pytest.mark.parametrize("scheme", ["forward", "naive", "batch", "piggyback", "dopt"])
@pytest.mark.parametrize("widths, B, K", [((3, 5, 2), 7, 2), ((4, 2, 6, 1), 5, 3), ((2, 3), 4, 1),
                                          ((3, 4, 5, 3, 1), 3, 2), ((6, 6, 1), 1, 1)])
def test_table_one_counts_general(scheme, widths, B, K):
    gcnn = GCNN(widths, "tanh")
    graph = Graph.from_networkx(nx.erdos_renyi_graph(9, 0.4, seed=B))
    optimizer = optimizer_for(scheme, K)
    _, result = run_batched(gcnn, graph, optimizer, B)
    L = gcnn.num_layers
    assert result.cost.rounds == table_one_rounds(scheme, L, B, K)
    low, high = largest_message_bounds(scheme, widths, B, gcnn.num_params,
                                       optimizer.payload_size(gcnn.num_params))
    assert low <= result.cost.largest_message <= high


CONFIGS = [((3, 4, 2), 3, 2, "ba"), ((2, 5, 3, 1), 4, 1, "isolated"), ((3, 2), 2, 3, "ba")]


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("widths, B, K, graph_kind", CONFIGS)
def test_protocol_and_batched_executors_agree(name, widths, B, K, graph_kind):
    gcnn = GCNN(widths, ("tanh",) * (len(widths) - 2) + ("sigmoid",), bias=True)
    if graph_kind == "ba":
        graph = Graph.from_networkx(nx.barabasi_albert_graph(10, 2, seed=K))
    else:
        g = nx.erdos_renyi_graph(10, 0.3, seed=1)
        g.remove_edges_from(list(g.edges(4)))
        graph = Graph.from_networkx(g)
    optimizer = make_optimizer(name, K)
    args, batched = run_batched(gcnn, graph, optimizer, B, seed=B)
    protocol = ProtocolExecutor(gcnn).train_step(*args)
    scale = float(tf.reduce_max(tf.abs(batched.theta)))
    assert float(tf.reduce_max(tf.abs(batched.theta - protocol.theta))) <= 1e-10 * scale
    for a, b in zip(batched.state, protocol.state):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert batched.cost == protocol.cost
    assert float(batched.loss) == pytest.approx(float(protocol.loss), rel=1e-12)


def test_protocol_executor_with_per_sample_shift_and_self_factor():
    n, B = 5, 3
    rng = np.random.default_rng(2)
    h = rng.uniform(0.1, 1.0, (B, n, n))
    base = Graph.from_dense(np.ones((n, n))).shift_operator("adjacency")
    shift = to_operator(base.with_values(h[:, base.rows, base.cols]), F64)
    mixing = to_operator(Graph.from_dense(np.ones((n, n))).metropolis_hastings(), F64)
    self_factor = tf.constant(np.einsum("bii->bi", h), F64)  # sample-major (B, |V|)
    gcnn = GCNN((1, 4, 1), ("relu", "sigmoid"), bias=True)
    optimizer = make_optimizer("d-amsgrad")
    theta = replicate(flatten(gcnn.init_params(2, "glorot", F64)), n)
    x = tf.ones((B, n, 1), F64)
    y = tf.constant(rng.normal(size=(B, n, 1)), F64)
    args = (theta, optimizer.init_state(theta), x, y, shift, mixing, optimizer, 0.01, self_factor)
    a = BatchedExecutor(gcnn).train_step(*args)
    b = ProtocolExecutor(gcnn).train_step(*args)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10, atol=1e-14)
    assert a.cost == b.cost


def test_simulator_rejects_double_missing_and_misplaced_payloads():
    schedule = Schedule("piggyback", num_layers=2, batch_size=2, consensus_rounds=1)
    sim = CommSimulator(schedule)
    sim.record(Message("fwd", 0, 1), 3)
    with pytest.raises(ScheduleError, match="twice"):
        sim.record(Message("fwd", 0, 1), 3)
    with pytest.raises(ScheduleError, match="no round"):
        sim.record(Message("param", None, 0), 3)
    with pytest.raises(ScheduleError, match="never sent"):
        sim.cost()
    op = to_operator(Graph.from_networkx(nx.path_graph(3)).metropolis_hastings(), F64)
    with pytest.raises(ScheduleError, match="belongs to round"):
        sim.exchange_round(0, [(Message("fwd", 1, 1), op, tf.ones((3, 1, 2), F64))])


def test_timeline_respects_dependencies():
    """Backward round r of sample b rides on forward round r of sample b+1, after b's forward pass."""
    s = Schedule("dopt", num_layers=3, batch_size=4, param_size=10)
    for b in range(4):
        last_forward = s.round_of(Message("fwd", b, 3))
        backward = [s.round_of(Message("bwd", b, l)) for l in (3, 2)]
        assert last_forward < backward[0] < backward[1]
    assert len(s.timeline()) == s.num_rounds == 3 * 4 + 2
    assert all(len(r) >= 1 for r in s.timeline())


def test_tape_backward_is_counted_like_the_explicit_backprop():
    """A GCNN differentiated by GradientTape through a counting simulator sends what eq. (14) sends."""
    gcnn = GCNN((3, 4, 5, 1), "tanh", bias=True)
    graph = Graph.from_networkx(nx.barabasi_albert_graph(9, 2, seed=3))
    optimizer = make_optimizer("d-sgd")
    args, explicit = run_batched(gcnn, graph, optimizer, 4, seed=3)
    theta, _, x, y, shift, *_ = args
    sim = CommSimulator(BatchedExecutor(gcnn).schedule_for(optimizer, 4), count_tape_backward=True)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        params = [tf.reshape(p, (9, *s)) for p, s in zip(
            tf.split(theta, [int(np.prod(s)) for s in gcnn.param_shapes()], axis=1), gcnn.param_shapes())]
        y_hat, _ = gcnn.forward(params, x, shift, exchange=sim, sample_major=True)
        loss = tf.reduce_sum((y_hat - y) ** 2)
    grad = tape.gradient(loss, theta)
    local, _ = BatchedExecutor(gcnn).local_gradients(theta, x, y, shift)
    np.testing.assert_allclose(grad, local, rtol=1e-10, atol=1e-13)
    sim.propagate(to_operator(graph.metropolis_hastings(), F64), theta, message=("param", 0))
    assert sim.cost() == explicit.cost


def test_pipeline_stages_bundle_parallel_parts():
    """Two stages, each with two parallel 2-layer GCNNs: L = 4 sequential exchanges per sample."""
    n, B = 7, 3
    graph = Graph.from_networkx(nx.cycle_graph(n))
    shift = to_operator(graph.shift_operator("normalized_adjacency"), F64)
    gcnn = GCNN((1, 3, 1), ("relu", "sigmoid"), bias=True)
    params = {part: [replicate(p, n) for p in gcnn.init_params(seed, "glorot", F64)]
              for seed, part in enumerate("ab")}
    schedule = Schedule("dopt", num_layers=4, batch_size=B, param_size=8)
    sim = CommSimulator(schedule, count_tape_backward=True)
    with tf.GradientTape() as tape:
        tape.watch(params)
        h = tf.ones((n, B, 1), F64)
        for stage in range(2):
            a, _ = gcnn.forward(params["a"], h, shift, exchange=sim.view(offset=2 * stage, part="a"))
            b, _ = gcnn.forward(params["b"], h, shift, exchange=sim.view(offset=2 * stage, part="b"))
            h = a * h + b
        loss = tf.reduce_sum(h)
    tape.gradient(loss, params)
    sim.propagate(to_operator(graph.metropolis_hastings(), F64), tf.zeros((n, 8), F64), message=("param", 0))
    cost = sim.cost()
    assert cost.rounds == 4 * B + 3 == schedule.num_rounds
    # per sample: 4 forward rounds with two 1-or-3-float messages, 3 backward rounds likewise
    per_sample = 2 * (1 + 3 + 1 + 3) + 2 * (3 + 1 + 3)
    assert cost.floats_per_node == B * per_sample + 8 + 1
