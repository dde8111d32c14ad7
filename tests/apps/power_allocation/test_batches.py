"""Training batches streamed as graphs (apps/power_allocation/batches.py): the consensus graph of a batch,
the operators handed to the trainer, the per-epoch order drawn from the trainer's generator."""

import numpy as np
import pytest
import tensorflow as tf

from apps.power_allocation.batches import TrainingBatches, consensus_adjacency, mixing_values
from core.graph import Graph
from datasets import power_allocation as pa

N, B, LAYOUTS, PER_LAYOUT = 7, 16, 3, 2


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pa.h5"
    pa.generate(pa.PowerAllocationConfig(pairs=N, batch_size=B, layouts=LAYOUTS, batches_per_layout=PER_LAYOUT,
                                         test_batches=1, seed=5), path)
    return path


def test_layout_is_fixed_per_batch_but_the_thresholded_graph_is_not(dataset_path):
    """The premise of the consensus-graph rule: fading moves entries across the threshold within a batch."""
    varies = []
    with pa.PowerAllocationDataset(dataset_path) as data:
        for k in range(data.num_batches("train")):
            batch = data.batch("train", k)
            same_layout = data.batch("train", k - k % PER_LAYOUT)
            np.testing.assert_array_equal(batch.tx_pos, same_layout.tx_pos)  # one layout per PER_LAYOUT batches
            nonzero = batch.H != 0
            varies.append(bool(np.any(nonzero != nonzero[0])))
            adjacency = consensus_adjacency(batch.H)
            expected = np.all(nonzero & nonzero.transpose(0, 2, 1), axis=0) & ~np.eye(N, dtype=bool)
            np.testing.assert_array_equal(adjacency, expected)
            assert np.array_equal(adjacency, adjacency.T)
    assert any(varies)


def test_consensus_graph_and_mixing_weights_by_hand():
    # sample 0 links {0,1}, {1,2} both ways; sample 1 loses 2 -> 1, so {1, 2} is not up all batch long
    H = np.ones((2, 3, 3))
    H[:, 0, 2] = H[:, 2, 0] = 0
    H[1, 2, 1] = 0
    adjacency = consensus_adjacency(H)
    np.testing.assert_array_equal(adjacency, [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # Metropolis-Hastings (eq. 16): W_01 = 1 / (1 + max(1, 1)) = 1/2; node 2 isolated keeps itself
    W = mixing_values(H, "mh", 1e-3).reshape(3, 3)
    np.testing.assert_allclose(W, [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    W = mixing_values(H, "laplacian", 0.1).reshape(3, 3)  # I - beta (D - A)
    np.testing.assert_allclose(W, [[0.9, 0.1, 0], [0.1, 0.9, 0], [0, 0, 1]])


@pytest.mark.parametrize("rule, beta", [("mh", 1e-3), ("laplacian", 0.05)])
def test_dense_mixing_weights_equal_the_core_graph_ones(rule, beta):
    rng = np.random.default_rng(11)
    for density in (0.1, 0.5, 0.9, 1.0):
        H = (rng.random((4, 12, 12)) < density ** 0.25) * rng.random((4, 12, 12))  # some isolated nodes too
        expected = Graph.from_dense(consensus_adjacency(H)).mixing_matrix(rule, beta).to_dense()
        np.testing.assert_allclose(mixing_values(H, rule, beta).reshape(12, 12), expected, rtol=1e-15, atol=1e-16)
    with pytest.raises(ValueError, match="unknown mixing rule"):
        mixing_values(H, "ring", 1.0)


def draw_epochs(path, seed, epochs, mixing="mh"):
    rng = np.random.default_rng(seed)
    with pa.PowerAllocationDataset(path) as data, TrainingBatches(data, tf.float64, mixing, prefetch=2) as batches:
        return [[batches.draw(rng) for _ in range(batches.num_batches)] for _ in range(epochs)], rng


def test_draws_stream_every_batch_once_per_epoch_in_the_generators_order(dataset_path):
    epochs, rng = draw_epochs(dataset_path, seed=3, epochs=2)
    order_rng = np.random.default_rng(3)
    with pa.PowerAllocationDataset(dataset_path) as data:
        for ops_of_epoch in epochs:
            order = order_rng.permutation(LAYOUTS * PER_LAYOUT)  # drawn at the first draw of the epoch
            for ops, index in zip(ops_of_epoch, order):
                H = data.batch("train", int(index)).H
                assert ops.shift.num_nodes == N and ops.shift.values.dtype == tf.float64
                np.testing.assert_array_equal(ops.shift.values.numpy().reshape(B, N, N), H)  # S_ij = H[b, i, j]
                W = ops.mixing.values.numpy().reshape(N, N)
                np.testing.assert_allclose(W, mixing_values(H, "mh", 1e-3).reshape(N, N))
                np.testing.assert_allclose(W.sum(axis=0), 1)  # doubly stochastic and symmetric
                np.testing.assert_allclose(W, W.T)
                assert np.all(W[~consensus_adjacency(H) & ~np.eye(N, dtype=bool)] == 0)
    assert rng.bit_generator.state == order_rng.bit_generator.state


def test_same_generator_state_gives_the_same_batches_and_centralized_draws_have_no_mixing(dataset_path):
    first, _ = draw_epochs(dataset_path, seed=9, epochs=1, mixing=None)
    again, _ = draw_epochs(dataset_path, seed=9, epochs=1, mixing=None)
    assert all(ops.mixing is None for ops in first[0])
    for a, b in zip(first[0], again[0]):
        np.testing.assert_array_equal(a.shift.values, b.shift.values)
    other, _ = draw_epochs(dataset_path, seed=10, epochs=1, mixing=None)
    assert any(not np.array_equal(a.shift.values, b.shift.values) for a, b in zip(first[0], other[0]))
