"""The authors' loop of App C (apps/link_scheduling/authors.py): batched per-sample gradients against
one GradientTape per sample, the per-sample critic against the centralized one, the replay against a
hand-written loop, the counted messages, the unit-output initialisation and the critic warm-up."""

import numpy as np
import pytest
import tensorflow as tf

from apps.link_scheduling import model
from apps.link_scheduling.authors import AuthorsTask, ConsensusAdam, PerSampleGraphs, Replay, actor_forward
from apps.link_scheduling.task import LinkSchedulingTask
from core.comm import CommSimulator
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import CentralizedAdam, make_optimizer
from core.replicas import flatten, replicate, unflatten

F64 = tf.float64
V, B = 9, 3


@pytest.fixture(scope="module")
def graphs(er_adjacency):
    rng = np.random.default_rng(11)
    adjacency = [er_adjacency(rng, V, p) for p in (0.2, 0.4, 0.6)]
    shifts = [Graph.from_dense(a).shift_operator(model.SHIFT) for a in adjacency]
    mixings = [Graph.from_dense(a).mixing_matrix("mh") for a in adjacency]
    return adjacency, shifts, mixings


@pytest.fixture(scope="module")
def task(er_adjacency):
    rng = np.random.default_rng(5)
    train = np.stack([er_adjacency(rng, V, 0.35) for _ in range(4)])
    test = np.stack([er_adjacency(rng, V, p) for p in (0.2, 0.5)])
    return AuthorsTask(train, test, rng.random((2, 4, V)), batch_size=B, critic_lr=1e-3, seed=1, dtype=F64,
                       critic_warmup=0)


@pytest.mark.parametrize("per_node", [False, True])
def test_per_sample_actor_gradients_equal_one_tape_per_sample(graphs, per_node):
    _, shifts, mixings = graphs
    rng = np.random.default_rng(0)
    theta = flatten(model.ACTOR.init_params(3, "glorot", F64))
    if per_node:  # copies that differ
        theta = replicate(theta, V) + tf.constant(rng.normal(0, 0.1, (V, int(theta.shape[0]))), F64)
    dense = tf.constant(np.stack([s.to_dense() for s in shifts]))
    dz = tf.constant(rng.normal(size=(V, B)), F64)
    z, backward = actor_forward(theta, dense)
    grads = backward(dz).numpy()
    w = np.stack([m.to_dense() for m in mixings])
    mixed = actor_forward(theta, dense)[1](dz, tf.constant(w), 1).numpy() if per_node else None
    for b in range(B):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            z_b = model.actor_output(theta, to_operator(shifts[b], F64))
        np.testing.assert_allclose(z[:, b].numpy(), z_b.numpy(), rtol=1e-12, atol=1e-14)
        expected = tape.gradient(z_b, theta, output_gradients=dz[:, b]).numpy()
        np.testing.assert_allclose(grads[b], expected, rtol=1e-10, atol=1e-13)
        if per_node:
            np.testing.assert_allclose(mixed[b], w[b] @ expected, rtol=1e-10, atol=1e-13)


def test_per_sample_critic_equals_the_centralized_critic_on_each_graph(graphs):
    _, shifts, _ = graphs
    rng = np.random.default_rng(1)
    critic = flatten(model.CRITIC.init_params(4, "glorot", F64))
    z_tilde = tf.constant(rng.random((V, B)), F64)
    dense = tf.constant(np.stack([s.to_dense() for s in shifts]))
    x = tf.transpose(model.critic_input(z_tilde), [1, 0, 2])
    copies = tf.tile(critic[None], [B, 1])
    out, _ = model.CRITIC.forward(unflatten(copies, model.CRITIC.param_shapes()), x, None,
                                  exchange=PerSampleGraphs(dense))
    for b in range(B):
        expected = model.critic_output(critic, z_tilde[:, b:b + 1], to_operator(shifts[b], F64))[:, 0]
        np.testing.assert_allclose(out[b].numpy(), expected.numpy(), rtol=1e-12)


def test_replay_is_the_sequence_of_inner_steps_in_the_given_order():
    rng = np.random.default_rng(2)
    theta = tf.constant(rng.normal(size=(4, 6)), F64)
    grads = tf.constant(rng.normal(size=(3, 4, 6)), F64)
    mixing = tf.constant(np.stack([np.full((4, 4), 0.25), np.eye(4), np.full((4, 4), 0.25)]))
    order = tf.constant([2, 0, 1])
    lr = tf.constant(0.1, F64)
    for inner in (make_optimizer("d-sgd"), make_optimizer("d-adam", authors_variant=True)):
        replay = Replay(inner)
        assert replay.name == inner.name and not replay.centralized and replay.schedule == inner.schedule
        got, _ = replay.step(theta, (grads, mixing, order), None, inner.init_state(theta), lr)
        expected, state = theta, inner.init_state(theta)
        for b in order.numpy():
            expected, state = inner.step(expected, grads[b], tf.linalg.matmul(mixing[b], expected), state, lr)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)
    adam = CentralizedAdam()  # the critic's replay: no mixing
    got, _ = Replay(adam).step(theta[0], (grads[:, 0], None, order), None, adam.init_state(theta[0]), lr)
    expected, state = theta[0], adam.init_state(theta[0])
    for b in order.numpy():
        expected, state = adam.step(expected, grads[b, 0], None, state, lr)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)


def test_consensus_adam_is_adam_on_the_mixed_gradient():
    rng = np.random.default_rng(3)
    theta, grad, mixed = (tf.constant(rng.normal(size=(4, 5)), F64) for _ in range(3))
    optimizer = ConsensusAdam()
    assert (optimizer.name, optimizer.consensus, optimizer.schedule) == ("d-adam", "gradient", "naive")
    got, _ = optimizer.step(theta, grad, mixed, optimizer.init_state(theta), 0.01)
    adam = CentralizedAdam(eps=1e-7)
    expected, _ = adam.step(theta, mixed, None, adam.init_state(theta), 0.01)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name, rounds", [("c-adam", 3 * B), ("d-adam", B * 5 + B), ("d-sgd", 3 * B + 2)])
def test_a_mini_batch_counts_its_messages_and_moves_actor_and_critic(task, name, rounds):
    from apps.link_scheduling.experiment import make_actor_optimizer

    optimizer = make_actor_optimizer(name, "authors")
    theta = task.initial_theta() if optimizer.centralized else replicate(task.initial_theta(), V)
    state = optimizer.init_state(theta)
    sim = CommSimulator(task.schedule(optimizer, B))
    critic0 = task.critic_theta.numpy()
    graph = task.draw_graph(np.random.default_rng(0))
    assert graph.shift.shape == (B, V, V)
    grad, metrics = task.gradients(theta, None, graph, optimizer, sim)
    new_theta, new_state = optimizer.step(theta, grad, None, state, tf.constant(1e-3, F64))
    assert sim.cost().rounds == rounds
    assert not np.allclose(new_theta.numpy(), theta.numpy())
    assert not np.allclose(task.critic_theta.numpy(), critic0)
    if name != "d-sgd":
        assert int(new_state[-1].numpy()) == B  # B Adam steps (Adam's step counter)
    assert 0 < float(metrics["train_ratio"]) < 3 and float(metrics["critic_loss"]) > 0


def test_critic_warmup_keeps_the_actor_while_the_critic_learns(task):
    rng = np.random.default_rng(5)
    warm = AuthorsTask(task.train_adjacency, task.test_adjacency, task.test_weights, batch_size=B,
                       critic_lr=1e-3, seed=1, dtype=F64, critic_warmup=1)
    optimizer = Replay(CentralizedAdam())
    grad, _ = warm.gradients(warm.initial_theta(), None, warm.draw_graph(rng), optimizer, None)
    assert np.all(grad[0].numpy() == 0)
    grad, _ = warm.gradients(warm.initial_theta(), None, warm.draw_graph(rng), optimizer, None)
    assert np.any(grad[0].numpy() != 0)


def test_unit_output_scales_z_to_mean_one_and_keeps_the_policy(task):
    args = (task.train_adjacency, task.test_adjacency, task.test_weights)
    plain = LinkSchedulingTask(*args, batch_size=B, critic_lr=1e-3, seed=1, dtype=F64)
    unit = LinkSchedulingTask(*args, batch_size=B, critic_lr=1e-3, seed=1, dtype=F64, unit_output=True)
    z_plain = model.actor_output(plain.initial_theta(), plain.graph_ops(0).shift).numpy()
    z_unit = model.actor_output(unit.initial_theta(), unit.graph_ops(0).shift).numpy()
    assert np.mean(z_unit) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(z_unit, z_plain / np.mean(z_plain), rtol=1e-10)
    assert float(unit.evaluate(unit.initial_theta(), None, "test")["test_ratio"]) == pytest.approx(
        float(plain.evaluate(plain.initial_theta(), None, "test")["test_ratio"]), rel=1e-12)


def test_scale_free_critic_input_ignores_the_scale_of_z():
    rng = np.random.default_rng(6)
    z_tilde = tf.constant(rng.random((V, B)) + 0.1, F64)
    scaled = z_tilde * tf.constant([[0.5, 3.0, 40.0]], F64)  # another scale per sample
    np.testing.assert_allclose(model.critic_input(scaled, scale_free=True).numpy(),
                               model.critic_input(z_tilde, scale_free=True).numpy(), rtol=1e-12)
    assert not np.allclose(model.critic_input(scaled).numpy(), model.critic_input(z_tilde).numpy())
