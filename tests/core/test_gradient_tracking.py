"""D-GT (DIGing / GT-DSGD) and D-GT-Adam (GTAdam): the tracking invariant, identities, NumPy re-computations,
both executors, the counts, and the error floor of D-SGD that gradient tracking removes (docs/design.md, section 13).

Float64, fixed seeds, small graphs; the long runs (a few hundred steps) are compiled with tf.function.
"""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.comm import Schedule
from core.executors import BatchedExecutor, ProtocolExecutor, consensus_update, flatten
from core.gcnn import GCNN, NO_COUNT
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import EXTRA_OPTIMIZERS, OPTIMIZERS, GradientTracking, LearningRate, make_optimizer
from core.replicas import consensus_error, consensus_model, replicate
from core.runs import RunDir
from core.supervised import SupervisedGCNN
from core.trainer import FixedGraph, GraphOps, Trainer, TrainerConfig

DT = tf.float64
MODEL = GCNN((3, 4, 2), ("tanh", "sigmoid"), bias=True)
B1, B2, EPS = 0.9, 0.999, 1e-8


def random_doubly_stochastic(graph: Graph, seed: int):
    """W = I - beta (D_w - A_w) for random symmetric edge weights A_w: symmetric, doubly stochastic, non-negative
    (beta = 0.9 / largest weighted degree), with uneven weights on the graph's links."""
    rng = np.random.default_rng(seed)
    a = graph.adjacency_dense() * rng.uniform(0.2, 1.0, (graph.num_nodes,) * 2)
    weighted = Graph.from_dense(np.triu(a, 1) + np.triu(a, 1).T)
    op = weighted.mixing_matrix("laplacian", beta=0.9 / weighted.weighted_degree.max())
    dense = op.to_dense()
    assert dense.min() >= 0 and np.allclose(dense.sum(0), 1, atol=1e-15) and np.allclose(dense.sum(1), 1, atol=1e-15)
    assert len(np.unique(np.round(dense[dense > 0], 12))) > graph.num_nodes  # not a uniform weighting
    return op


def batch(rng, num_nodes, size=3, features=3, outputs=2):
    return (tf.constant(rng.normal(size=(size, num_nodes, features)), DT),
            tf.constant(rng.normal(size=(size, num_nodes, outputs)), DT))


def test_registry_payload_and_state_layout():
    for name, adam in (("d-gt", False), ("d-gt-adam", True)):
        opt = make_optimizer(name, consensus_rounds=3)  # K is not used: one mixing per mini-batch
        assert isinstance(opt, GradientTracking) and opt.name == name and opt.adam == adam
        assert opt.consensus == "parameter" and opt.schedule == "dopt" and opt.payload_size(7) == 14
        assert name in EXTRA_OPTIMIZERS and name not in OPTIMIZERS  # by name only, never part of "all"
        theta = tf.reshape(tf.range(6, dtype=DT), (2, 3))
        state = opt.init_state(theta)
        assert len(state) == (5 if adam else 2) and all(s.dtype == DT for s in state)
        for s in state[:2] + (state[2:4] if adam else ()):  # y(-1), g(-1) (and m, v) start at zero
            np.testing.assert_array_equal(s.numpy(), np.zeros((2, 3)))
        np.testing.assert_array_equal(opt.payload(theta, state).numpy(), np.concatenate([theta, np.zeros((2, 3))], 1))
        assert opt.init_state(tf.zeros((2, 3), tf.float32))[0].dtype == tf.float32


@pytest.mark.parametrize("name", ["d-gt", "d-gt-adam"])
def test_tracking_invariant_mean_y_equals_mean_local_gradient_at_every_step(name):
    """mean_i y^i(t) = mean_i g_i(t) for a random doubly stochastic W on a small graph, from unequal copies,
    step after step (each mini-batch on new data), to float64 rounding; and y itself is not the mean."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(9, 2, seed=4))
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mixing = to_operator(random_doubly_stochastic(graph, seed=1), DT)
    opt, ex, rng = make_optimizer(name), BatchedExecutor(MODEL), np.random.default_rng(2)
    theta = replicate(flatten(MODEL.init_params(0, "glorot", DT)), graph.num_nodes)
    theta += tf.constant(rng.normal(0, 0.1, theta.shape), DT)
    state = opt.init_state(theta)
    for t in range(8):
        x, y = batch(rng, graph.num_nodes)
        grad, _ = ex.local_gradients(theta, x, y, shift)  # g(t) at theta(t), computed independently
        result = ex.train_step(theta, state, x, y, shift, mixing, opt, tf.constant(0.05, DT))
        theta, state = result.theta, result.state
        tracker, g_prev = state[0].numpy(), state[1].numpy()
        np.testing.assert_array_equal(g_prev, grad.numpy())  # the state keeps g(t) for the next step
        scale = np.abs(grad.numpy()).max()
        np.testing.assert_allclose(tracker.mean(0), grad.numpy().mean(0), rtol=0, atol=1e-14 * scale * (t + 1))
        if t == 0:
            np.testing.assert_array_equal(tracker, grad.numpy())  # y(0) = g(0) exactly
        else:  # the copies of y differ: it tracks the mean, it is not the mean
            assert np.abs(tracker - tracker.mean(0)).max() > 1e-3 * scale


def test_first_d_gt_step_is_the_d_sgd_step():
    graph = Graph.from_networkx(nx.barabasi_albert_graph(8, 2, seed=1))
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mixing = to_operator(graph.metropolis_hastings(), DT)
    rng = np.random.default_rng(3)
    theta = replicate(flatten(MODEL.init_params(1, "glorot", DT)), 8) + tf.constant(rng.normal(0, 0.1, (8, 46)), DT)
    x, y = batch(rng, 8)
    ex, gt, sgd = BatchedExecutor(MODEL), make_optimizer("d-gt"), make_optimizer("d-sgd")
    a = ex.train_step(theta, gt.init_state(theta), x, y, shift, mixing, gt, 0.05)
    b = ex.train_step(theta, (), x, y, shift, mixing, sgd, 0.05)
    np.testing.assert_array_equal(a.theta.numpy(), b.theta.numpy())


def circulant_problem(num_nodes=8, seed=5):
    """A vertex-transitive graph (circulant C_n(1, 2)), every node with the same features and targets in
    each sample: with equal copies every node's local gradient is the same (by symmetry)."""
    graph = Graph.from_networkx(nx.circulant_graph(num_nodes, [1, 2]))
    rng = np.random.default_rng(seed)

    def data():
        x = np.repeat(rng.normal(size=(4, 1, 3)), num_nodes, axis=1)
        y = np.repeat(rng.normal(size=(4, 1, 2)), num_nodes, axis=1)
        return tf.constant(x, DT), tf.constant(y, DT)

    return graph, data


def test_identical_local_gradients_make_d_gt_follow_c_sgd():
    """Same local gradients at every node: y stays the common gradient, the copies stay equal (any doubly
    stochastic W keeps equal rows), and D-GT takes C-SGD's steps on the centralized gradient (their mean)."""
    graph, data = circulant_problem()
    n = graph.num_nodes
    shift = to_operator(graph.shift_operator("normalized_adjacency"), DT)
    mixing = to_operator(random_doubly_stochastic(graph, seed=6), DT)
    ex, gt, sgd = BatchedExecutor(MODEL), make_optimizer("d-gt"), make_optimizer("c-sgd")
    th_c = flatten(MODEL.init_params(2, "glorot", DT))
    th_d = replicate(th_c, n)
    state = gt.init_state(th_d)
    for _ in range(10):
        x, y = data()
        grad, _ = ex.local_gradients(th_d, x, y, shift)
        spread = float(tf.reduce_max(tf.abs(grad - grad[:1])))
        assert spread <= 1e-14 * float(tf.reduce_max(tf.abs(grad)))  # the premise: identical local gradients
        th_c = ex.train_step(th_c, (), x, y, shift, None, sgd, 0.2).theta
        result = ex.train_step(th_d, state, x, y, shift, mixing, gt, 0.2)
        th_d, state = result.theta, result.state
        np.testing.assert_allclose(th_d.numpy(), replicate(th_c, n).numpy(), rtol=0, atol=1e-13)
        np.testing.assert_allclose(state[0].numpy(), state[1].numpy(), rtol=0, atol=1e-13)  # y(t) = g(t)
    assert float(tf.reduce_max(tf.abs(th_c - flatten(MODEL.init_params(2, "glorot", DT))))) > 0.05  # it moved


@pytest.mark.parametrize("name", ["d-gt", "d-gt-adam"])
def test_steps_match_a_numpy_float64_recursion(name):
    """y(t) = W y(t-1) + g(t) - g(t-1), y(-1) = g(-1) = 0; D-GT: theta <- W theta - a y; D-GT-Adam: m, v from y,
    theta <- W theta - a m^/(sqrt(v^) + eps), bias-corrected; the first steps of a random sequence of
    gradients, through consensus_update (the exchange computes W [theta, y])."""
    graph, rng = Graph.from_networkx(nx.barabasi_albert_graph(7, 2, seed=2)), np.random.default_rng(7)
    w_op = random_doubly_stochastic(graph, seed=3)
    w, mixing = w_op.to_dense(), to_operator(w_op, DT)
    opt = make_optimizer(name)
    theta = rng.normal(size=(7, 5))
    th, state = tf.constant(theta, DT), opt.init_state(tf.constant(theta, DT))
    y = g_prev = m = v = np.zeros_like(theta)
    lr = 0.01
    for t in range(1, 6):
        g = rng.normal(size=theta.shape) * t
        y = w @ y + (g - g_prev)
        if name == "d-gt":
            theta = w @ theta - lr * y
        else:
            m = B1 * m + (1 - B1) * y
            v = B2 * v + (1 - B2) * y * y
            direction = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
            if t == 1:  # m^ = y, v^ = y^2: the first Adam step is alpha y / (|y| + eps), about alpha sign(g)
                np.testing.assert_allclose(direction, g / (np.abs(g) + EPS), rtol=1e-12)
            theta = w @ theta - lr * direction
        g_prev = g
        th, state = consensus_update(opt, th, state, tf.constant(g, DT), mixing, lr, NO_COUNT)
        np.testing.assert_allclose(th.numpy(), theta, rtol=1e-12, atol=1e-14)
        expected = (y, g) + ((m, v, t) if name == "d-gt-adam" else ())
        for got, want in zip(state, expected, strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["d-gt", "d-gt-adam"])
def test_protocol_and_batched_executors_agree_over_several_steps(name):
    """Parameters, every state tensor (y, g_prev, m, v, t) and the counts, for unequal copies over three
    mini-batches (so that the tracker in the payload is not zero)."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(10, 2, seed=2))
    n, B = graph.num_nodes, 3
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mixing = to_operator(random_doubly_stochastic(graph, seed=4), DT)
    opt, rng = make_optimizer(name), np.random.default_rng(0)
    theta = replicate(flatten(MODEL.init_params(0, "glorot", DT)), n) + tf.constant(rng.normal(0, 0.05, (n, 46)), DT)
    tb, sb, tp, sp = theta, opt.init_state(theta), theta, opt.init_state(theta)
    for _ in range(3):
        x, y = batch(rng, n, size=B)
        batched = BatchedExecutor(MODEL).train_step(tb, sb, x, y, shift, mixing, opt, 0.05)
        protocol = ProtocolExecutor(MODEL).train_step(tp, sp, x, y, shift, mixing, opt, 0.05)
        tb, sb, tp, sp = batched.theta, batched.state, protocol.theta, protocol.state
        np.testing.assert_allclose(tb.numpy(), tp.numpy(), rtol=1e-10, atol=1e-14)
        assert len(sb) == len(sp)
        for a, b in zip(sb, sp, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-14)
        assert batched.cost == protocol.cost
    assert float(tf.reduce_max(tf.abs(sb[0]))) > 0.1 and float(tf.reduce_max(tf.abs(tb - theta))) > 1e-3
    L, widths = MODEL.num_layers, MODEL.widths
    assert batched.cost.rounds == L * B + L - 1
    assert batched.cost.floats_per_node == B * sum(widths[:L]) + B * sum(widths[1:L]) + 2 * MODEL.num_params + 1


def test_counts_at_the_node_regression_setting():
    """L = 2, B = 100, g = (10, 10, 1), |theta| = 220 (App A): 201 rounds (LB + L - 1, the eq. (17) row of
    Table I); floats per node 2 000 forward (X^0, X^1 of 10 floats for 100 samples) + 1 000 backward
    (Theta1^2 Q^2, 10 floats) + 441 = 2|theta| + 1 ([d_i, theta^i, y^i] pieced over the 200 forward rounds)
    = 3 441, D-SGD's 3 221 plus |theta| (D-AMSGrad's count too); the largest round carries 10 + 10 + a
    3-float piece (the first 441 mod 200 = 41 pieces have 3 floats)."""
    model = GCNN((10, 10, 1), ("relu", "identity"), bias=False)
    assert model.num_params == 220
    graph = Graph.from_networkx(nx.barabasi_albert_graph(6, 2, seed=0))
    shift = to_operator(graph.shift_operator("normalized_laplacian"), DT)
    mixing = to_operator(graph.metropolis_hastings(), DT)
    rng = np.random.default_rng(1)
    x, y = tf.constant(rng.normal(size=(100, 6, 10)), DT), tf.constant(rng.normal(size=(100, 6, 1)), DT)
    theta = replicate(flatten(model.init_params(0, "glorot", DT)), 6)
    costs = {}
    for name in ("d-gt", "d-gt-adam", "d-sgd", "d-amsgrad"):
        opt = make_optimizer(name)
        step = BatchedExecutor(model).train_step(theta, opt.init_state(theta), x, y, shift, mixing, opt, 1e-3)
        costs[name] = step.cost
        assert costs[name].rounds == 201 == Schedule("dopt", 2, 100).num_rounds
    assert costs["d-gt"] == costs["d-gt-adam"] == costs["d-amsgrad"]
    assert (costs["d-gt"].floats_per_node, costs["d-gt"].largest_message) == (3441, 23)
    assert costs["d-gt"].floats_per_node == costs["d-sgd"].floats_per_node + 220


def heterogeneous_least_squares(num_nodes=8, batch_size=6, features=2, seed=0):
    """A 1-layer linear GCNN (bias, identity activation) on a path graph: node i's loss depends on theta^i
    only, l_i(theta) = sum_b ||phi_i(b) theta - y_i(b)||^2 with phi_i(b) = [x_i(b), (S x(b))_i, 1], a least
    squares problem. Nodes differ in feature scale (0.3 to 1.5) and in their teacher parameters, so the
    local minimisers and curvatures differ: heterogeneous local gradients at the global optimum. Returns the
    pieces and F* = min over a shared theta of the node- and sample-mean loss (by lstsq)."""
    model = GCNN((features, 1), ("identity",), bias=True)
    graph = Graph.from_networkx(nx.path_graph(num_nodes))
    s = graph.shift_operator("normalized_laplacian")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, num_nodes, features)) * np.linspace(0.3, 1.5, num_nodes)[None, :, None]
    phi = np.concatenate([x, np.einsum("ij,bjg->big", s.to_dense(), x), np.ones((batch_size, num_nodes, 1))], -1)
    y = np.einsum("bnk,nk->bn", phi, rng.normal(size=(num_nodes, 2 * features + 1)))[..., None]
    a, target = phi.reshape(-1, phi.shape[-1]), y.reshape(-1)
    f_star = float(np.mean((a @ np.linalg.lstsq(a, target, rcond=None)[0] - target) ** 2))
    hessians = [2 * phi[:, i].T @ phi[:, i] for i in range(num_nodes)]
    largest = max(np.linalg.eigvalsh(h).max() for h in hessians)
    ops = GraphOps(to_operator(s, DT), to_operator(graph.metropolis_hastings(), DT))
    return model, ops, tf.constant(x, DT), tf.constant(y, DT), f_star, largest


def test_d_gt_removes_the_constant_step_error_floor_of_d_sgd():
    """Full-batch (the same mini-batch every step: no sampling noise), constant alpha = 0.3 / largest local
    curvature for both. D-SGD stalls at a floor: the consensus model's loss F(theta_bar) stays above F* by the
    same amount from step 400 to 1000, the copies disagreeing; D-GT converges to F* and consensus."""
    model, ops, x, y, f_star, largest = heterogeneous_least_squares()
    ex, lr = BatchedExecutor(model), tf.constant(0.3 / largest, DT)

    def gap(theta):  # F(theta_bar) - F*, F the node- and sample-mean loss of the shared consensus model
        return float(ex.centralized_gradient(consensus_model(theta), x, y, ops.shift, None, NO_COUNT)[1]) - f_star

    results = {}
    for name in ("d-sgd", "d-gt"):
        opt = make_optimizer(name)

        @tf.function
        def steps(theta, state, count, opt=opt):
            for _ in tf.range(count):
                result = ex.train_step(theta, state, x, y, ops.shift, ops.mixing, opt, lr)
                theta, state = result.theta, tuple(result.state)
            return theta, state

        theta = replicate(flatten(model.init_params(0, "glorot", DT)), ops.shift.num_nodes)
        theta, state = steps(theta, opt.init_state(theta), tf.constant(400))
        at_400 = gap(theta)
        theta, state = steps(theta, state, tf.constant(600))
        results[name] = (at_400, gap(theta), float(consensus_error(theta)))
    sgd, gt = results["d-sgd"], results["d-gt"]
    assert sgd[1] > 1e-2 and abs(sgd[1] - sgd[0]) < 0.05 * sgd[1] and sgd[2] > 0.1  # a floor, not slow progress
    assert gt[1] < 1e-5 and gt[1] < 1e-3 * sgd[1] and gt[2] < 1e-3 and gt[1] < gt[0]
    assert min(sgd[1], gt[1]) > -1e-9  # F* is the minimum over shared models


def test_trainer_resumes_d_gt_adam_exactly(tmp_path):
    """The state (y, g_prev, m, v, t) is checkpointed like any optimizer state: a run resumed after two
    epochs ends with the parameters, state and rows of an uninterrupted one; the counts are LB + L - 1."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(8, 2, seed=3))
    ops = GraphOps(to_operator(graph.shift_operator("normalized_laplacian"), DT),
                   to_operator(graph.metropolis_hastings(), DT))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 3))
    target = np.tanh(x.sum(-1, keepdims=True))
    model = GCNN((3, 4, 1), ("tanh", "identity"))
    task = SupervisedGCNN(model, flatten(model.init_params(1, "glorot", DT)), x[:12], target[:12], x[12:],
                          target[12:], DT)

    def trainer(run):
        config = TrainerConfig(epochs=4, batch_size=4, seed=2, checkpoint_every=1, jit=False, quiet=True)
        return Trainer(task, make_optimizer("d-gt-adam"), LearningRate(0.01), FixedGraph(ops), config, run)

    full = trainer(RunDir(tmp_path / "full")).run()
    trainer(RunDir(tmp_path / "part")).run(until_epoch=2)
    resumed_trainer = trainer(RunDir(tmp_path / "part", create=False))
    resumed = resumed_trainer.run(resume=True)
    np.testing.assert_array_equal(resumed.theta.numpy(), full.theta.numpy())
    for a, b in zip(resumed.state, full.state, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(full.state[4]) == 4 * 3  # t: 3 mini-batches per epoch
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in full.rows]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in resumed.rows] == strip
    assert resumed_trainer.cost.rounds == 2 * 4 + 1
    assert resumed_trainer.cost.floats_per_node == 4 * (3 + 4) + 4 * 4 + 2 * model.num_params + 1
