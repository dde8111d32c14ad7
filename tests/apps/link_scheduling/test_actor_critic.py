"""Actor-critic pieces of App C (apps/link_scheduling/model.py, task.py) against independent oracles:
the explicit local backpropagation of eqs. 11-14 (core.backprop), the centralized gradient, and critic
targets and inputs worked out by hand."""

import numpy as np
import pytest
import tensorflow as tf

from apps.link_scheduling import model
from apps.link_scheduling.task import LinkSchedulingTask
from core.backprop import local_backprop
from core.comm import CommSimulator
from core.gcnn import NO_COUNT
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import make_optimizer
from core.replicas import flatten, replicate, unflatten

F64 = tf.float64


@pytest.fixture(scope="module")
def task(er_adjacency):
    rng = np.random.default_rng(5)
    train = np.stack([er_adjacency(rng, 12, 0.3) for _ in range(3)])
    test = np.stack([er_adjacency(rng, 12, p) for p in (0.1, 0.4)])
    return LinkSchedulingTask(train, test, rng.random((2, 6, 12)), batch_size=5, critic_lr=1e-3, seed=2, dtype=F64)


def test_actor_gradient_through_critic_is_the_local_backprop_of_eqs_11_to_14(task):
    """Per-node copies that differ: the tape through the counting simulator equals eqs. (11)-(14) fed
    with the critic's dJ/dz, and sends the same messages as the explicit backprop."""
    rng = np.random.default_rng(0)
    theta = replicate(task.initial_theta(), task.num_nodes)
    theta = theta + tf.constant(rng.normal(0, 0.2, theta.shape), F64)
    graph = task.graph_ops(1)
    optimizer = make_optimizer("d-sgd")
    sim = CommSimulator(task.schedule(optimizer, task.batch_size), count_tape_backward=True)
    terms = task._batch_terms(theta, graph, tf.constant(7, tf.int64), per_node=True, exchange=sim)

    # oracle: the server's dJ/dz for the same draws, then the explicit local backprop (no tape)
    params = unflatten(theta, model.ACTOR.param_shapes())
    explicit_sim = CommSimulator(task.schedule(optimizer, task.batch_size))
    z, cache = model.ACTOR.forward(params, tf.ones([task.num_nodes, 1, 1], F64), graph.shift, exchange=explicit_sim)
    z_tilde = tf.tile(z[:, :, 0], [1, task.batch_size]) + task._uniform(
        [task.num_nodes, task.batch_size], tf.constant(7, tf.int64), 0, -0.03, 0.03)
    with tf.GradientTape() as tape:
        tape.watch(z_tilde)
        loss = model.actor_loss(model.critic_output(task.critic_theta, z_tilde, graph.shift), per_node=True)
    dz = tf.reduce_sum(tape.gradient(loss, z_tilde), axis=1)[:, None, None]
    explicit = flatten(local_backprop(model.ACTOR, params, cache, dz, graph.shift, exchange=explicit_sim), True)
    np.testing.assert_allclose(terms["actor_grad"], explicit, rtol=1e-10, atol=1e-13)
    assert float(tf.reduce_max(tf.abs(explicit))) > 1e-6  # a real, non-zero gradient

    # both simulators saw 3 forward and 2 backward exchanges per sample (param consensus added alike)
    for s in (sim, explicit_sim):
        s.propagate(graph.mixing, theta, message=("param", 0))
    cost = sim.cost()
    assert cost == explicit_sim.cost()
    assert cost.rounds == 3 * task.batch_size + 2
    assert cost.floats_per_node == task.batch_size * ((1 + 32 + 32) + (32 + 32)) + theta.shape[1] + 1


def test_equal_copies_average_to_the_centralized_gradient(task):
    """docs/design.md, section 3: with equal copies the node average of the local gradients is the centralized
    gradient of the node-mean objective, for the same draws."""
    graph, counter = task.graph_ops(2), tf.constant(3, tf.int64)
    shared = task.initial_theta()
    central = task._batch_terms(shared, graph, counter, per_node=False, exchange=None)
    local = task._batch_terms(replicate(shared, task.num_nodes), graph, counter, per_node=True, exchange=None)
    np.testing.assert_allclose(tf.reduce_mean(local["actor_grad"], axis=0), central["actor_grad"],
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(local["critic_grad"], central["critic_grad"], rtol=1e-10, atol=1e-16)
    assert float(local["critic_loss"]) == pytest.approx(float(central["critic_loss"]), rel=1e-12)


def test_critic_targets_on_a_path_by_hand():
    """Path 0-1-2-3 with w' = (0.6, 0.5, 0.4, 0.9). Sample 1: z' = z~ + noise = (1, 1, 2, 0.5) gives
    priorities (0.6, 0.5, 0.8, 0.45): 2 joins first and blocks 1 and 3, then 0 joins. Sample 2:
    z' = (0.5, 1, 0, -0.2) gives (0.3, 0.5, 0, -0.18 clipped to 0): 1 joins and blocks 0 and 2, then 3
    (priority 0, its only neighbour 2 has left) joins."""
    adjacency = np.zeros((4, 4), bool)
    for i in range(3):
        adjacency[i, i + 1] = adjacency[i + 1, i] = True
    z_tilde = np.array([[1.0, 1.05, 2.0, 0.5], [0.5, 1.0, 0.0, 0.0]])
    noise = np.array([[0.0, -0.05, 0.0, 0.0], [0.0, 0.0, 0.0, -0.2]])
    weights = np.array([[0.6, 0.5, 0.4, 0.9], [0.6, 0.5, 0.4, 0.9]])
    target, rounds = model.critic_targets(adjacency, z_tilde, weights, noise)
    share = np.array([[0.6, 0.0, 0.4, 0.0], [0.0, 0.5, 0.0, 0.9]])
    np.testing.assert_allclose(target[..., 0], share)
    np.testing.assert_allclose(target[..., 1], 1.0 - share)
    assert rounds.shape == (2,) and (rounds >= 1).all()


def test_critic_input_normalisation_by_hand():
    """x = [1, z~] of one sample with z~ = (0, 1, 2): one mean and one std over all six entries."""
    z_tilde = tf.constant([[0.0], [1.0], [2.0]], F64)  # (|V|, B=1)
    x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    expected = (x - x.mean()) / (6 * x.std()) + 0.5
    np.testing.assert_allclose(model.critic_input(z_tilde)[:, 0, :], expected, rtol=1e-14)


def test_actor_loss_is_minus_the_predicted_utility_share():
    out = tf.constant(np.random.default_rng(1).dirichlet([1, 1], size=(4, 3)), F64)  # (|V|, B, 2)
    assert float(model.actor_loss(out, per_node=True)) == pytest.approx(-float(tf.reduce_sum(out[..., 0])))
    assert float(model.actor_loss(out, per_node=False)) == pytest.approx(-float(tf.reduce_sum(out[..., 0])) / 4)


def test_critic_loss_is_root_mse_per_sample_plus_kernel_l2():
    rng = np.random.default_rng(2)
    critic = flatten(model.CRITIC.init_params(0, "glorot", F64))
    critic = critic + tf.constant(rng.normal(0, 0.1, critic.shape), F64)  # non-zero biases too
    out, target = (tf.constant(rng.random((5, 3, 2)), F64) for _ in range(2))
    layers = model.CRITIC.unpack(unflatten(critic, model.CRITIC.param_shapes()))
    l2 = sum(float(tf.reduce_sum(layer.theta0 ** 2) + tf.reduce_sum(layer.theta1 ** 2)) for layer in layers)
    rmse = np.mean([np.sqrt(np.mean((out.numpy()[:, b] - target.numpy()[:, b]) ** 2)) for b in range(3)])
    assert float(model.critic_loss(out, target, critic)) == pytest.approx(rmse + 5e-4 * l2, rel=1e-12)


def test_test_ratio_uses_each_nodes_own_copy(task):
    """The block-diagonal test evaluation equals running each test graph alone with per-node copies."""
    rng = np.random.default_rng(3)
    theta = replicate(task.initial_theta(), task.num_nodes)
    theta = theta + tf.constant(rng.normal(0, 0.3, theta.shape), F64)
    ratios = []
    for adjacency, weights in zip(task.test_adjacency, task.test_weights):
        shift = to_operator(Graph.from_dense(adjacency).shift_operator(model.SHIFT), F64)
        z = model.actor_output(theta, shift, NO_COUNT).numpy()
        ratios.append(model.utility_ratio(adjacency, np.broadcast_to(z, weights.shape), weights))
    assert float(task.evaluate(theta, None, "test")["test_ratio"]) == pytest.approx(np.mean(ratios), rel=1e-12)


def test_untrained_actor_outputs_positive_scalings(task):
    z = model.actor_output(task.initial_theta(), task.graph_ops(0).shift).numpy()
    assert np.mean(z > 0) >= 0.5
