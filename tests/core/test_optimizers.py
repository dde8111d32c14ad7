"""Optimizer identities of docs/design.md, section 3, NumPy re-computations of the adaptive recursions, lr schedules.

Everything in float64 with fixed seeds. The GCNN steps run eagerly through the batched executor (the
executor tests prove it equal to the literal protocol).
"""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.executors import BatchedExecutor, consensus_update, flatten
from core.gcnn import GCNN, NO_COUNT
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import OPTIMIZERS, LearningRate, make_optimizer
from core.replicas import consensus_model, replicate

DT = tf.float64
NUM_NODES, BATCH = 8, 5
MODEL = GCNN((3, 4, 1), ("tanh", "sigmoid"), bias=(True, False))


def data(seed=0, num_nodes=NUM_NODES, batch=BATCH):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(batch, num_nodes, 3)), DT),
            tf.constant(rng.normal(size=(batch, num_nodes, 1)), DT))


def ba_graph(num_nodes=NUM_NODES):
    return Graph.from_networkx(nx.barabasi_albert_graph(num_nodes, 2, seed=5))


def theta0(seed=1):
    return flatten(MODEL.init_params(seed, "glorot", DT))


def run(name, graph, steps, lr=0.05, theta=None, mixing="mh", seed=0, k=1):
    """``steps`` mini-batches (a new batch each) of optimizer ``name``; returns thetas and costs."""
    opt = make_optimizer(name, k)
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mix = to_operator(graph.mixing_matrix(mixing), DT)
    theta = theta0() if theta is None else theta
    if not opt.centralized and theta.shape.rank == 1:
        theta = replicate(theta, graph.num_nodes)
    state, executor, thetas, costs = opt.init_state(theta), BatchedExecutor(MODEL), [theta], []
    for t in range(steps):
        x, y = data(seed + t, graph.num_nodes)
        result = executor.train_step(theta, state, x, y, shift, mix, opt, tf.constant(lr, DT))
        theta, state = result.theta, result.state
        thetas.append(theta)
        costs.append(result.cost)
    return thetas, costs


def test_complete_graph_mh_weights_are_the_average():
    w = Graph.from_dense(np.ones((6, 6)) - np.eye(6)).metropolis_hastings().to_dense()
    np.testing.assert_allclose(w, np.full((6, 6), 1 / 6), rtol=0, atol=1e-15)


def test_dsgd_on_complete_graph_follows_csgd_from_equal_copies():
    """With W = 11^T/|V| the mixed copies are the C-SGD parameters after every step from equal copies.

    Eq. (17) mixes *before* the local step (theta^i <- W theta - alpha g_i), so after one step the
    copies differ by alpha (g_i - g_bar) while their average (= what W hands every node next) is
    exactly the C-SGD step: the average of the local gradients at equal copies is the centralized
    gradient (eq. 8). Restarting from the mixed copies each step therefore follows C-SGD step by step.
    """
    complete = Graph.from_dense(np.ones((NUM_NODES, NUM_NODES)) - np.eye(NUM_NODES))
    c_thetas, _ = run("c-sgd", complete, steps=4)
    w = to_operator(complete.metropolis_hastings(), DT)
    theta = theta0()
    for t in range(4):
        (_, after), _ = run("d-sgd", complete, steps=1, theta=replicate(theta, NUM_NODES), seed=t)
        assert float(tf.reduce_max(tf.abs(after - replicate(c_thetas[t + 1], NUM_NODES)))) > 1e-6  # copies differ
        mixed = NO_COUNT.propagate(w, after)  # the W of the next step: every node gets the average
        np.testing.assert_allclose(mixed.numpy(), replicate(c_thetas[t + 1], NUM_NODES).numpy(), rtol=0, atol=1e-14)
        theta = mixed[0]


def test_dsgd_on_complete_graph_with_symmetric_nodes_follows_csgd_exactly():
    """When every node sees the same data on the complete graph all local gradients are equal, so the
    copies stay equal and D-SGD is C-SGD over many steps."""
    complete = Graph.from_dense(np.ones((NUM_NODES, NUM_NODES)) - np.eye(NUM_NODES))
    opt_c, opt_d = make_optimizer("c-sgd"), make_optimizer("d-sgd")
    shift = to_operator(complete.shift_operator("normalized_laplacian"), DT)
    mix = to_operator(complete.metropolis_hastings(), DT)
    ex = BatchedExecutor(MODEL)
    th_c = theta0()
    th_d = replicate(th_c, NUM_NODES)
    rng = np.random.default_rng(3)
    for _ in range(6):
        x = tf.constant(np.repeat(rng.normal(size=(BATCH, 1, 3)), NUM_NODES, axis=1), DT)
        y = tf.constant(np.repeat(rng.normal(size=(BATCH, 1, 1)), NUM_NODES, axis=1), DT)
        th_c = ex.train_step(th_c, (), x, y, shift, mix, opt_c, 0.1).theta
        th_d = ex.train_step(th_d, (), x, y, shift, mix, opt_d, 0.1).theta
        np.testing.assert_allclose(th_d.numpy(), replicate(th_c, NUM_NODES).numpy(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("mixing", ["mh", "laplacian"])
def test_consensus_leaves_equal_copies_unchanged(mixing):
    graph = ba_graph(20)
    w = to_operator(graph.mixing_matrix(mixing, beta=0.05), DT)
    equal = replicate(tf.constant(np.random.default_rng(0).normal(size=37), DT), 20)
    np.testing.assert_allclose(NO_COUNT.propagate(w, equal).numpy(), equal.numpy(), rtol=1e-15, atol=1e-15)
    for name in ("d-sgd", "d-adam", "d-amsgrad"):  # zero gradients: the step is the consensus alone
        opt = make_optimizer(name)
        state = opt.init_state(equal)
        theta, _ = consensus_update(opt, equal, state, tf.zeros_like(equal), w, 0.1, NO_COUNT)
        np.testing.assert_allclose(theta.numpy(), equal.numpy(), rtol=1e-15, atol=1e-15)


def test_node_average_of_dsgd_follows_csgd_on_the_average_gradient():
    """theta_bar(t+1) = theta_bar(t) - alpha mean_i g_i(t) for unequal copies, any doubly stochastic W."""
    graph = ba_graph()
    opt, ex = make_optimizer("d-sgd"), BatchedExecutor(MODEL)
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mix = to_operator(graph.metropolis_hastings(), DT)
    rng = np.random.default_rng(7)
    theta = replicate(theta0(), NUM_NODES) + tf.constant(rng.normal(0, 0.1, (NUM_NODES, MODEL.num_params)), DT)
    for t in range(5):
        x, y = data(10 + t)
        grad, _ = ex.local_gradients(theta, x, y, shift)
        new = ex.train_step(theta, (), x, y, shift, mix, opt, 0.05).theta
        expected = consensus_model(theta) - 0.05 * tf.reduce_mean(grad, axis=0)
        np.testing.assert_allclose(consensus_model(new).numpy(), expected.numpy(), rtol=0, atol=1e-14)
        theta = new


def test_dnaive_and_dnaive_pb_give_identical_parameters_and_differ_in_rounds():
    """Same update, different schedules: 400 vs 202 rounds for L = 2, B = 100, K = 1 (Table I)."""
    graph = ba_graph(10)
    opt_n, opt_p = make_optimizer("d-naive", 1), make_optimizer("d-naive-pb", 1)
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mix = to_operator(graph.metropolis_hastings(), DT)
    model = GCNN((3, 4, 1), "sigmoid")
    ex = BatchedExecutor(model)
    th_n = th_p = replicate(flatten(model.init_params(2, "uniform", DT)), 10)
    for t in range(3):
        x, y = data(20 + t, num_nodes=10, batch=100)
        a = ex.train_step(th_n, (), x, y, shift, mix, opt_n, 1e-3)
        b = ex.train_step(th_p, (), x, y, shift, mix, opt_p, 1e-3)
        th_n, th_p = a.theta, b.theta
        np.testing.assert_allclose(th_n.numpy(), th_p.numpy(), rtol=0, atol=1e-14)
    assert (a.cost.rounds, b.cost.rounds) == (400, 202)
    assert float(tf.reduce_max(tf.abs(th_n - replicate(flatten(model.init_params(2, "uniform", DT)), 10)))) > 1e-4


def numpy_w(graph):
    return graph.metropolis_hastings().to_dense()


def test_dadam_matches_numpy_recursion():
    """m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; v^ <- max(v^, v); theta <- W theta - a m/(sqrt(v^)+eps)."""
    graph, rng = ba_graph(), np.random.default_rng(11)
    w, mix = numpy_w(graph), to_operator(graph.metropolis_hastings(), DT)
    opt = make_optimizer("d-adam")
    theta = rng.normal(size=(NUM_NODES, 6))
    th, state = tf.constant(theta, DT), opt.init_state(tf.constant(theta, DT))
    m = v = vmax = np.zeros_like(theta)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    for t in range(5):
        g = rng.normal(size=theta.shape) * (t + 1)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        vmax = np.maximum(vmax, v)
        theta = w @ theta - lr * m / (np.sqrt(vmax) + eps)
        th, state = consensus_update(opt, th, state, tf.constant(g, DT), mix, lr, NO_COUNT)
        np.testing.assert_allclose(th.numpy(), theta, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(state[2].numpy(), vmax, rtol=1e-14)


def test_dadam_authors_variant_is_bias_corrected_local_adam():
    graph, rng = ba_graph(), np.random.default_rng(12)
    w, mix = numpy_w(graph), to_operator(graph.metropolis_hastings(), DT)
    opt = make_optimizer("d-adam", authors_variant=True)
    theta = rng.normal(size=(NUM_NODES, 4))
    th, state = tf.constant(theta, DT), opt.init_state(tf.constant(theta, DT))
    m = v = np.zeros_like(theta)
    for t in range(1, 4):
        g = rng.normal(size=theta.shape)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        theta = w @ theta - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-7)
        th, state = consensus_update(opt, th, state, tf.constant(g, DT), mix, 0.01, NO_COUNT)
        np.testing.assert_allclose(th.numpy(), theta, rtol=1e-13, atol=1e-15)


def test_damsgrad_matches_numpy_recursion():
    """docs/design.md, section 3: v^(0) = u~(1) = eps; u = max(u~, eps); theta <- W theta - a m / sqrt(u);
    u~ <- W u~ - v^(t-1) + v^(t); no bias correction, so the first step is ~ a * g / sqrt(eps) large."""
    graph, rng = ba_graph(), np.random.default_rng(13)
    w, mix = numpy_w(graph), to_operator(graph.metropolis_hastings(), DT)
    opt = make_optimizer("d-amsgrad")
    theta = rng.normal(size=(NUM_NODES, 6))
    th, state = tf.constant(theta, DT), opt.init_state(tf.constant(theta, DT))
    eps, lr = 1e-8, 1e-3
    m = v = np.zeros_like(theta)
    vhat = u_tilde = np.full_like(theta, eps)
    first = None
    for _ in range(6):
        g = rng.normal(size=theta.shape)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        vhat_new = np.maximum(vhat, v)
        u = np.maximum(u_tilde, eps)
        step = lr * m / np.sqrt(u)
        theta = w @ theta - step
        u_tilde = w @ u_tilde - vhat + vhat_new
        vhat = vhat_new
        first = step if first is None else first
        th, state = consensus_update(opt, th, state, tf.constant(g, DT), mix, lr, NO_COUNT)
        np.testing.assert_allclose(th.numpy(), theta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state[3].numpy(), u_tilde, rtol=1e-12, atol=1e-16)
    assert np.max(np.abs(first)) > 100 * lr  # the authors' first-epoch jump (u = eps at t = 1)


def test_centralized_adam_matches_numpy():
    rng = np.random.default_rng(14)
    opt = make_optimizer("c-adam")
    theta = rng.normal(size=9)
    th, state = tf.constant(theta, DT), opt.init_state(tf.constant(theta, DT))
    m = v = np.zeros_like(theta)
    for t in range(1, 5):
        g = rng.normal(size=9)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        theta = theta - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        th, state = consensus_update(opt, th, state, tf.constant(g, DT), None, 0.01, NO_COUNT)
        np.testing.assert_allclose(th.numpy(), theta, rtol=1e-13)


def test_damsgrad_payload_counts_one_extra_theta_sized_message():
    graph = ba_graph()
    (_, th), (cost,) = run("d-amsgrad", graph, steps=1)
    (_, _), (cost_sgd,) = run("d-sgd", graph, steps=1)
    assert cost.rounds == cost_sgd.rounds == MODEL.num_layers * BATCH + MODEL.num_layers - 1
    assert cost.floats_per_node - cost_sgd.floats_per_node == MODEL.num_params


def test_laplacian_mixing_runs_dsgd_with_the_authors_weights():
    graph = ba_graph()
    a = run("d-sgd", graph, steps=2, mixing="laplacian")[0][-1]
    b = run("d-sgd", graph, steps=2, mixing="mh")[0][-1]
    assert float(tf.reduce_max(tf.abs(a - b))) > 1e-6
    # I - beta L keeps the node average's update: the mean still moves by -alpha mean_i g_i
    np.testing.assert_allclose(graph.mixing_matrix("laplacian", 1e-3).to_dense().sum(axis=0), 1.0, atol=1e-15)


def test_learning_rate_schedules():
    const = LearningRate(1e-3)
    assert const.value(0) == const.value(10_000) == 1e-3
    assert float(const(7, DT)) == 1e-3
    decay = LearningRate(0.1, "exponential", decay_rate=0.5, decay_steps=10)
    assert decay.value(0) == 0.1
    assert decay.value(10) == pytest.approx(0.05, rel=1e-15)
    assert decay.value(5) == pytest.approx(0.1 * 0.5**0.5, rel=1e-15)
    assert float(decay(tf.constant(25, tf.int64), DT)) == pytest.approx(decay.value(25), rel=1e-15)
    stair = LearningRate(0.1, "exponential", decay_rate=0.5, decay_steps=10, staircase=True)
    assert stair.value(19) == stair.value(10) == pytest.approx(0.05)
    assert float(stair(tf.constant(19, tf.int64), DT)) == pytest.approx(0.05, rel=1e-15)


@pytest.mark.parametrize("kwargs", [dict(alpha=0.0), dict(alpha=-1e-3), dict(alpha=float("nan")),
                                    dict(alpha=1e-3, schedule="cosine"), dict(alpha=1e-3, decay_rate=1.5),
                                    dict(alpha=1e-3, decay_steps=0)])
def test_learning_rate_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        LearningRate(**kwargs)


def test_make_optimizer_names_and_errors():
    for name in OPTIMIZERS:
        assert make_optimizer(name).name == name
    assert make_optimizer("d-naive", 3).consensus_rounds == 3
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("d-sgdd")
    with pytest.raises(ValueError, match="K must be"):
        make_optimizer("d-naive", 0)


def test_damsgrad_initial_state_is_exactly_eps_in_the_parameters_dtype():
    """v^(0) = u~(1) = eps built in theta's dtype: exactly 1e-8 in float64 (not float32's 9.99999993922529e-09)."""
    opt = make_optimizer("d-amsgrad")
    for dtype, eps in ((tf.float64, np.float64(1e-8)), (tf.float32, np.float32(1e-8))):
        state = opt.init_state(tf.zeros((3, 4), dtype))
        assert [s.dtype for s in state] == [dtype] * 4
        for s, expected in zip(state, (0.0, 0.0, eps, eps), strict=True):
            np.testing.assert_array_equal(s.numpy(), np.full((3, 4), expected, dtype.as_numpy_dtype))
    assert opt.init_state(tf.zeros((2,), tf.float64))[2].numpy()[0] == 1e-8


def test_damsgrad_first_step_is_exact_in_float64():
    """With u~ = eps exactly, the first step theta <- W theta - alpha m / sqrt(max(u~, eps)) on a complete
    graph with W = 11^T/|V| and equal copies matches NumPy float64 to the last bits."""
    opt = make_optimizer("d-amsgrad")
    theta = np.full((4, 3), 0.5)
    g = np.random.default_rng(15).normal(size=(4, 3))
    state = opt.init_state(tf.constant(theta, DT))
    mixed = tf.concat([tf.constant(theta, DT), state[3]], axis=-1)  # W theta = theta for equal copies, W eps = eps
    th, new_state = opt.step(tf.constant(theta, DT), tf.constant(g, DT), mixed, state, tf.constant(1e-3, DT))
    m, v = 0.9 * 0.0 + (1 - 0.9) * g, 0.999 * 0.0 + (1 - 0.999) * g * g  # the optimizer's order of operations
    np.testing.assert_array_equal(th.numpy(), theta - 1e-3 * m / np.sqrt(1e-8))
    np.testing.assert_array_equal(new_state[2].numpy(), np.maximum(1e-8, v))
    np.testing.assert_array_equal(new_state[3].numpy(), 1e-8 - 1e-8 + np.maximum(1e-8, v))
