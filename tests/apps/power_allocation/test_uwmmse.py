"""UWMMSE (apps/power_allocation/uwmmse.py, exchange.py): WMMSE-Tr as a special case, per-node copies
against an independent per-GCNN reference, distributed vs centralized gradients, and the counts.

Channels come from the project's generator (docs/design.md, section 7 scales: gains ~1e-7..1e-3, σ² ~ 2e-14 W),
on 6 pairs so that everything runs eagerly in float64 in a few seconds.
"""

import numpy as np
import pytest
import tensorflow as tf

from apps.power_allocation import wmmse as W
from apps.power_allocation.exchange import DenseExchange, complete_operator, dense_apply
from apps.power_allocation.uwmmse import UWMMSE, Channel, unfold
from core.comm import CommSimulator, Schedule
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import apply_operator, to_operator
from core.optimizers import make_optimizer
from core.replicas import replicate, unflatten

F64 = tf.float64
N, B = 6, 5


def perturbed_copies(model, seed, scale=0.3):
    """Per-node copies (N, |θ|) that differ from node to node, float64."""
    theta = model.init_theta(seed, F64)
    rng = np.random.default_rng(seed)
    return replicate(theta, N) + tf.constant(rng.normal(0, scale, (N, model.num_params)), F64)


def reference_rates(model, theta, H, sigma2, pmax):
    """Independent of the stacked run: each GCNN separately through core's GCNN with the gather/segment-sum
    operator, node i applying its own copy, then the dense WMMSE of wmmse.py and its sum-rate."""
    pattern = to_operator(Graph.from_dense(np.ones((N, N))).shift_operator("laplacian"), F64)  # all N² entries
    shift = pattern._replace(values=tf.constant(H[:, pattern.rows.numpy(), pattern.cols.numpy()]))  # S_ij = H_ij
    direct = tf.constant(np.einsum("bii->ib", H))  # node-major (N, B)
    size, coefficients = model.gcnn.num_params, []
    for p in range(len(model.parts)):
        params = unflatten(theta[..., p * size:(p + 1) * size], model.gcnn.param_shapes())
        y, _ = model.gcnn.forward(params, tf.ones((N, B, 1), F64), shift, direct)
        coefficients.append(tf.transpose(y[:, :, 0]))
    pairs = list(zip(coefficients[0::2], coefficients[1::2]))
    p = tf.square(unfold(H, sigma2, pmax, pairs))
    return W.link_rates(H, p, sigma2)


def test_unit_multipliers_reproduce_truncated_wmmse_exactly(channels):
    H, sigma2, pmax = channels
    ones, zeros = tf.ones((B, N), F64), tf.zeros((B, N), F64)
    expected = W.wmmse(H, sigma2, pmax, 4, jit_compile=False).numpy()  # WMMSE-Tr
    v = unfold(H, sigma2, pmax, [(ones, zeros)] * 4)
    np.testing.assert_array_equal(tf.square(v).numpy(), expected)
    # the same through the model: zero weights, output biases +40 (a = sigmoid(40) = 1 in float64) for the
    # a-GCNNs and -800 (b = 0) for the b-GCNNs, every sum a (dense) neighbour exchange
    model = UWMMSE()
    shapes = model.gcnn.param_shapes()
    theta = []
    for part in model.parts:
        params = [np.zeros(s) for s in shapes]
        params[-1][:] = 40.0 if part.startswith("a") else -800.0
        theta += [p.ravel() for p in params]
    theta = tf.constant(np.concatenate(theta), F64)
    rates, p = model.rates(theta, Channel.from_matrices(H), sigma2, pmax)
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-13, atol=0)
    np.testing.assert_allclose(tf.reduce_sum(rates, 1).numpy(), W.sum_rate(H, expected, sigma2).numpy(), rtol=1e-13)
    assert np.all(expected > 0) and np.any(expected < pmax * 0.99)  # a non-trivial allocation


def test_paper_architecture_size():
    model = UWMMSE()
    # per GCNN: Theta0, Theta1 (1x5), bias 5; Theta0, Theta1 (5x1), bias 1 -> 26; 8 GCNNs
    assert model.num_params == 8 * 26 == 208 and model.num_exchanges == 10
    assert model.parts == ("a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4")
    theta = model.init_theta(0, F64).numpy().reshape(8, 26)
    assert np.all(theta[:, [10, 11, 12, 13, 14, 25]] == 0.1)  # biases start at 0.1
    limit = np.sqrt(6 / (1 + 5))  # Glorot-uniform bound of the 1x5 and 5x1 weights
    assert np.all(np.abs(theta[:, :10]) <= limit) and np.all(np.abs(theta[:, 15:25]) <= limit)
    assert len({tuple(row) for row in theta}) == 8  # each GCNN its own draw


def test_per_node_copies_match_independent_reference(channels):
    H, sigma2, pmax = channels
    model = UWMMSE()
    theta = perturbed_copies(model, seed=1)
    channel = Channel.from_matrices(H)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        rates, _ = model.rates(theta, channel, sigma2, pmax)
        expected = reference_rates(model, theta, H, sigma2, pmax)
        loss, expected_loss = -tf.reduce_sum(rates), -tf.reduce_sum(expected)
    np.testing.assert_allclose(rates.numpy(), expected.numpy(), rtol=1e-12)
    grad, expected_grad = tape.gradient(loss, theta), tape.gradient(expected_loss, theta)
    scale = float(tf.reduce_max(tf.abs(expected_grad)))
    assert scale > 0
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=0, atol=1e-11 * scale)


def test_distributed_gradients_with_equal_copies_average_to_the_centralized_gradient(channels):
    H, sigma2, pmax = channels
    model = UWMMSE()
    theta = model.init_theta(2, F64)
    copies = replicate(theta, N)
    channel = Channel.from_matrices(H)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([theta, copies])
        central, _ = model.rates(theta, channel, sigma2, pmax)
        local, _ = model.rates(copies, channel, sigma2, pmax)
        central_objective = -tf.reduce_sum(tf.reduce_mean(central, axis=1))  # sum_b (1/N) sum_i l_i(b)
        distributed_objective = -tf.reduce_sum(local)  # every node's copy gets sum_b sum_j dl_j/dθ^i (8c)
    g_central = tape.gradient(central_objective, theta).numpy()
    g_local = tape.gradient(distributed_objective, copies).numpy()
    np.testing.assert_allclose(local.numpy(), central.numpy(), rtol=1e-14)
    np.testing.assert_allclose(g_local.mean(axis=0), g_central, rtol=1e-12, atol=1e-14 * np.abs(g_central).max())
    assert np.abs(g_local - g_local.mean(axis=0)).max() > 1e-3 * np.abs(g_central).max()  # nodes differ


@pytest.mark.parametrize("transpose", [False, True])
def test_dense_products_equal_core_gather_segment_sum(transpose):
    rng = np.random.default_rng(4)
    op = complete_operator(tf.constant(rng.normal(size=(B, N * N))), N)
    x = tf.constant(rng.normal(size=(3 * N, B, 2)))  # three stacked parts
    got = dense_apply(op, x, transpose)
    core_op = op.transposed() if transpose else op
    for p in range(3):
        np.testing.assert_allclose(got[p * N:(p + 1) * N], apply_operator(core_op, x[p * N:(p + 1) * N]), rtol=1e-13)
    shared = complete_operator(tf.constant(rng.normal(size=N * N)), N)
    np.testing.assert_allclose(dense_apply(shared, x[:N], transpose),
                               apply_operator(shared.transposed() if transpose else shared, x[:N]), rtol=1e-13)
    with pytest.raises(ValueError, match="whole number"):
        dense_apply(op, x[:N + 1])


def test_dense_exchange_counts_and_computes_what_the_core_simulator_does(channels):
    """One GCNN on S = H, differentiated by GradientTape: values, gradients and counts agree."""
    H, _, _ = channels
    gcnn = GCNN((1, 3, 2, 1), ("relu", "tanh", "sigmoid"), bias=True)
    params = [replicate(p, N) for p in gcnn.init_params(5, "glorot", F64, bias_init=0.1)]
    shift = Channel.from_matrices(H * 1e5).shift
    direct = tf.constant(np.einsum("bii->ib", H * 1e5))
    schedule = Schedule("dopt", gcnn.num_layers, B, param_size=gcnn.num_params)
    results = []
    for make in (lambda s: s, lambda s: DenseExchange(s, tape_backward=True)):
        sim = CommSimulator(schedule, count_tape_backward=True)
        with tf.GradientTape() as tape:
            tape.watch(params)
            y, _ = gcnn.forward(params, tf.ones((N, B, 1), F64), shift, direct, exchange=make(sim).view(0, "a"))
            loss = tf.reduce_sum(tf.sin(y))
        grads = tape.gradient(loss, params)
        sim.propagate(to_operator(Graph.from_dense(np.ones((N, N))).metropolis_hastings(), F64),
                      tf.zeros((N, gcnn.num_params), F64), message=("param", 0))
        results.append((y, grads, sim.cost()))
    (y1, g1, c1), (y2, g2, c2) = results
    np.testing.assert_allclose(y2, y1, rtol=1e-13)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    assert c1 == c2 and c1.rounds == 3 * B + 2


def count(optimizer_name, exchanges_only=False):
    """The simulator's cost of one mini-batch of UWMMSE (B samples) under the optimizer's schedule."""
    model = UWMMSE()
    optimizer = make_optimizer(optimizer_name)
    rng = np.random.default_rng(0)
    H = rng.uniform(0.5, 1.0, (B, N, N))
    schedule = Schedule(optimizer.schedule, model.num_exchanges, B, optimizer.consensus_rounds,
                        optimizer.payload_size(model.num_params))
    sim = CommSimulator(schedule)
    theta = model.init_theta(0, F64)
    if not optimizer.centralized:
        theta = replicate(theta, N)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        rates, _ = model.rates(theta, Channel.from_matrices(H), 1.0, 1.0,
                               DenseExchange(sim, tape_backward=not optimizer.centralized))
        loss = -tf.reduce_sum(rates)
    tape.gradient(loss, theta)
    mixing = to_operator(Graph.from_dense(np.ones((N, N))).metropolis_hastings(), F64)
    if optimizer.consensus == "parameter":
        sim.propagate(mixing, optimizer.payload(theta, optimizer.init_state(theta)), message=("param", 0))
    return sim.cost()


def test_counts_per_mini_batch():
    # L = 10 exchanges per sample (2 GCNN rounds, then feedback/interference of 4 layers);
    # forward floats per sample: 8 GCNNs x (1 + 5) + 1 (v0) + 8 WMMSE sums = 57; backward: 8 x 5 + 8 = 48
    L, forward, backward = 10, 57, 48
    central = count("c-adam")
    assert (central.rounds, central.floats_per_node) == (L * B, B * forward)
    assert central.largest_message == 8 * 5  # round 2: the hidden features of the 8 GCNNs
    dadam = count("d-adam")
    assert dadam.rounds == L * B + L - 1  # Table I, eq. (17) row: LB + L - 1
    assert dadam.floats_per_node == B * (forward + backward) + 208 + 1  # + θ and the degree, piggybacked
    # the fullest rounds carry the 8 GCNNs' hidden features (forward round 2, or the backward of exchange 2
    # riding on forward round 9) plus one WMMSE float, plus a piece of θ
    assert 8 * 5 + 1 <= dadam.largest_message <= 8 * 5 + 1 + -(-209 // (L * B))
    assert count("d-amsgrad").floats_per_node == dadam.floats_per_node + 208  # u~ rides along too
