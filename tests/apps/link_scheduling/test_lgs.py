"""Tests of the local greedy MWIS solver (apps/link_scheduling/lgs.py, docs/design.md, section 9).

Oracles written here, independent of the module: a brute-force MWIS over all subsets (V <= 12) and a
vertex-by-vertex simulation of the one-exchange-per-round message-passing protocol that the round
count of `local_greedy_mwis` is defined by.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.link_scheduling.lgs import adjacency_from_edges, local_greedy_mwis, sequential_greedy_mwis

# Deterministic property tests: the same examples on every run and machine, no deadline flakiness on
# a shared CPU.
PROPERTY = settings(derandomize=True, max_examples=60, deadline=None)


def random_graph(rng, num_vertices, edge_prob):
    upper = np.triu(rng.random((num_vertices, num_vertices)) < edge_prob, 1)
    return upper | upper.T


@st.composite
def graph_and_weights(draw, max_vertices=20, max_batch=4, tied=False):
    """An Erdos-Renyi graph and a batch of weights; `tied` draws small integers so ties are common."""
    num_vertices = draw(st.integers(1, max_vertices))
    edge_prob = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6, 1.0]))
    batch = draw(st.integers(1, max_batch))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    adjacency = random_graph(rng, num_vertices, edge_prob)
    if tied:
        weights = rng.integers(0, 3, size=(batch, num_vertices)).astype(float)
    else:
        weights = rng.random((batch, num_vertices))
    return adjacency, weights


def brute_force_mwis_value(adjacency, weights):
    """Largest total weight of an independent set, by enumerating all 2^V subsets."""
    num_vertices = len(weights)
    subsets = np.array(list(itertools.product([0, 1], repeat=num_vertices)), dtype=float)
    edges_inside = np.einsum("sv,vu,su->s", subsets, adjacency.astype(float), subsets)
    return (subsets[edges_inside == 0] @ weights).max()


def protocol_simulation(adjacency, weights):
    """LGS as the distributed protocol: per round every vertex sends (weight, state), then updates.

    Returns (in_set, number of rounds until every vertex has decided). Loops over vertices; slow but
    literal, so it checks the closed-form round count of `local_greedy_mwis`.
    """
    num_vertices = len(weights)
    undecided, in_set, out = 0, 1, 2
    state = [undecided] * num_vertices

    def higher(u, v):  # priority (weight, -index) of u above that of v
        return (weights[u], -u) > (weights[v], -v)

    rounds = 0
    while undecided in state:
        heard = list(state)  # the exchange: everyone sees the neighbours' states of this round
        rounds += 1
        for v in range(num_vertices):
            if heard[v] != undecided:
                continue
            neighbours = np.flatnonzero(adjacency[v])
            if any(heard[u] == in_set for u in neighbours):
                state[v] = out
            elif all(heard[u] == out for u in neighbours if higher(u, v)):
                state[v] = in_set
    return np.array([s == in_set for s in state], dtype=bool), rounds


def is_independent(adjacency, in_set):
    return not (adjacency & np.outer(in_set, in_set)).any()


def is_maximal(adjacency, in_set):
    # every vertex outside the set has a neighbour inside it
    return bool(np.all(in_set | (adjacency.astype(int) @ in_set.astype(int) > 0)))


@PROPERTY
@given(graph_and_weights())
def test_result_is_independent_and_maximal(case):
    adjacency, weights = case
    in_set, _ = local_greedy_mwis(adjacency, weights)
    assert in_set.shape == weights.shape and in_set.dtype == bool
    for sample in in_set:
        assert is_independent(adjacency, sample)
        assert is_maximal(adjacency, sample)


@PROPERTY
@given(graph_and_weights())
def test_equals_sequential_greedy_on_distinct_weights(case):
    adjacency, weights = case
    in_set, _ = local_greedy_mwis(adjacency, weights)
    for b in range(len(weights)):
        assert len(np.unique(weights[b])) == weights.shape[1]  # continuous draws: distinct
        np.testing.assert_array_equal(in_set[b], sequential_greedy_mwis(adjacency, weights[b]))


@PROPERTY
@given(graph_and_weights(tied=True))
def test_equals_sequential_greedy_with_ties_broken_by_index(case):
    adjacency, weights = case
    in_set, _ = local_greedy_mwis(adjacency, weights)
    for b in range(len(weights)):
        np.testing.assert_array_equal(in_set[b], sequential_greedy_mwis(adjacency, weights[b]))


@PROPERTY
@given(graph_and_weights(max_vertices=14, tied=True) | graph_and_weights(max_vertices=14))
def test_set_and_round_count_match_the_message_passing_protocol(case):
    adjacency, weights = case
    in_set, rounds = local_greedy_mwis(adjacency, weights)
    for b in range(len(weights)):
        expected_set, expected_rounds = protocol_simulation(adjacency, weights[b])
        np.testing.assert_array_equal(in_set[b], expected_set)
        assert rounds[b] == expected_rounds


@PROPERTY
@given(graph_and_weights(max_vertices=12, max_batch=2))
def test_bounded_by_brute_force_optimum(case):
    adjacency, weights = case
    in_set, _ = local_greedy_mwis(adjacency, weights)
    max_degree = adjacency.sum(axis=1).max()
    for b in range(len(weights)):
        optimum = brute_force_mwis_value(adjacency, weights[b])
        utility = weights[b] @ in_set[b]
        assert utility <= optimum + 1e-12
        # Greedy by decreasing weight: each chosen vertex outweighs the at most max_degree optimal
        # vertices it excludes, so it is a 1/max_degree approximation (exact when there are no edges).
        assert utility >= optimum / max(max_degree, 1) - 1e-12


def test_equal_weights_lower_index_wins():
    edge = np.array([[0, 1], [1, 0]])
    in_set, rounds = local_greedy_mwis(edge, np.array([0.5, 0.5]))
    np.testing.assert_array_equal(in_set, [True, False])
    assert rounds == 2  # vertex 0 joins after round 1, vertex 1 hears it and leaves after round 2
    # a strictly larger weight beats the lower index
    in_set, _ = local_greedy_mwis(edge, np.array([0.5, 0.7]))
    np.testing.assert_array_equal(in_set, [False, True])
    # path 0-1-2-3 with equal weights: 0 wins, 1 leaves, then 2 wins and 3 leaves
    path = adjacency_from_edges([0, 1, 2], [1, 2, 3], 4)
    in_set, _ = local_greedy_mwis(path, np.ones(4))
    np.testing.assert_array_equal(in_set, [True, False, True, False])
    # all-zero weights (an actor output z = 0 everywhere) fall back to index order as well
    in_set, _ = local_greedy_mwis(path, np.zeros(4))
    np.testing.assert_array_equal(in_set, [True, False, True, False])


@pytest.mark.parametrize("num_vertices", [1, 2, 3, 4, 7, 10, 25])
def test_round_count_on_a_path_with_increasing_weights(num_vertices):
    # Path 0-1-...-(V-1), weight increasing with the index. Iteration k: vertex V+1-2k joins and
    # V-2k leaves, so K = ceil(V/2) iterations. For even V the last iteration has a leaver (vertex 0):
    # 2K = V rounds; for odd V it has none (vertex 0 joins): 2K - 1 = V rounds. Either way V rounds:
    # the decision travels one hop per exchange from the heaviest end.
    path = adjacency_from_edges(np.arange(num_vertices - 1), np.arange(1, num_vertices), num_vertices)
    weights = np.arange(1, num_vertices + 1) / num_vertices
    in_set, rounds = local_greedy_mwis(path, weights)
    expected = np.zeros(num_vertices, dtype=bool)
    expected[num_vertices - 1 :: -2] = True
    np.testing.assert_array_equal(in_set, expected)
    assert rounds == num_vertices
    # decreasing weights mirror the process from vertex 0: also V rounds
    assert local_greedy_mwis(path, weights[::-1])[1] == num_vertices


def test_round_count_on_edgeless_and_complete_graphs():
    weights = np.array([[0.3, 0.9, 0.1, 0.5]])
    in_set, rounds = local_greedy_mwis(np.zeros((4, 4), dtype=bool), weights)
    assert in_set.all() and rounds.tolist() == [1]  # everyone is a local maximum after one exchange
    in_set, rounds = local_greedy_mwis(~np.eye(4, dtype=bool), weights)
    np.testing.assert_array_equal(in_set, [[False, True, False, False]])
    assert rounds.tolist() == [2]  # vertex 1 joins in round 1, the rest hear it and leave in round 2
    in_set, rounds = local_greedy_mwis(np.zeros((0, 0), dtype=bool), np.zeros((3, 0)))
    assert in_set.shape == (3, 0) and rounds.tolist() == [0, 0, 0]


def test_batch_equals_per_sample_on_shared_and_per_sample_graphs():
    rng = np.random.default_rng(7)
    num_vertices, batch = 30, 16
    weights = rng.random((batch, num_vertices))
    shared = random_graph(rng, num_vertices, 0.2)
    in_set, rounds = local_greedy_mwis(shared, weights)
    graphs = np.stack([random_graph(rng, num_vertices, p) for p in np.linspace(0.0, 0.6, batch)])
    in_set_g, rounds_g = local_greedy_mwis(graphs, weights)
    for b in range(batch):
        one_set, one_rounds = local_greedy_mwis(shared, weights[b])
        np.testing.assert_array_equal(in_set[b], one_set)
        assert rounds[b] == one_rounds
        one_set, one_rounds = local_greedy_mwis(graphs[b], weights[b])
        np.testing.assert_array_equal(in_set_g[b], one_set)
        assert rounds_g[b] == one_rounds
    # a (V,) weight vector with a batch of graphs is shared by every graph
    in_set_w, _ = local_greedy_mwis(graphs, weights[0])
    for b in range(batch):
        np.testing.assert_array_equal(in_set_w[b], sequential_greedy_mwis(graphs[b], weights[0]))
    # 0/1 integer adjacency and validate=False give the same answer as the boolean one
    np.testing.assert_array_equal(local_greedy_mwis(shared.astype(np.int8), weights)[0], in_set)
    np.testing.assert_array_equal(local_greedy_mwis(shared, weights, validate=False)[0], in_set)


@pytest.mark.parametrize("mean_degree", [2, 10, 25])
def test_training_scale_graph_matches_sequential_greedy(mean_degree):
    # The workload of docs/design.md, section 9: B = 100 samples on a 100-vertex ER graph.
    rng = np.random.default_rng(mean_degree)
    adjacency = random_graph(rng, 100, mean_degree / 99)
    weights = rng.random((100, 100))
    in_set, rounds = local_greedy_mwis(adjacency, weights)
    for b in range(0, 100, 9):
        np.testing.assert_array_equal(in_set[b], sequential_greedy_mwis(adjacency, weights[b]))
    _, protocol_rounds = protocol_simulation(adjacency, weights[0])
    assert rounds[0] == protocol_rounds
    assert rounds.min() >= 1 and rounds.max() <= 2 * 100


@pytest.mark.parametrize("num_vertices", [63, 64, 65, 130])
def test_neighbourhoods_spanning_several_64_bit_words(num_vertices):
    # Neighbourhoods are packed into ceil(V/64) words; check the word boundaries, per-sample graphs.
    rng = np.random.default_rng(num_vertices)
    graphs = np.stack([random_graph(rng, num_vertices, p) for p in (0.02, 0.1, 0.3)])
    weights = rng.random((3, num_vertices))
    weights[2] = np.round(weights[2] * 3)  # ties across words
    in_set, rounds = local_greedy_mwis(graphs, weights)
    for b in range(3):
        np.testing.assert_array_equal(in_set[b], sequential_greedy_mwis(graphs[b], weights[b]))
        assert rounds[b] == protocol_simulation(graphs[b], weights[b])[1]


def test_adjacency_from_edges():
    adjacency = adjacency_from_edges([0, 2, 1], [1, 1, 0], 4)  # (1, 0) repeats (0, 1)
    expected = np.zeros((4, 4), dtype=bool)
    expected[[0, 1, 1, 2], [1, 0, 2, 1]] = True
    np.testing.assert_array_equal(adjacency, expected)
    assert not adjacency_from_edges([], [], 3).any()
    with pytest.raises(ValueError, match="self-loop"):
        adjacency_from_edges([0, 1], [1, 1], 3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        adjacency_from_edges([0], [3], 3)
    with pytest.raises(ValueError, match="equal length"):
        adjacency_from_edges([0, 1], [1], 3)


@pytest.mark.parametrize(
    ("adjacency", "weights", "message"),
    [
        (np.zeros((3, 4)), np.ones(3), "square"),
        (np.zeros((2, 3, 3, 3)), np.ones(3), "square"),
        (np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]]), np.ones(3), "not symmetric"),
        (np.eye(3), np.ones(3), "self-loops"),
        (np.array([[0, 2], [2, 0]]), np.ones(2), "0/1"),
        (np.zeros((3, 3)), np.ones(4), "shape"),
        (np.zeros((3, 3)), np.ones((2, 2, 3)), "shape"),
        (np.zeros((3, 3)), np.array([1.0, -0.1, 2.0]), "non-negative"),
        (np.zeros((3, 3)), np.array([1.0, np.nan, 2.0]), "finite"),
        (np.zeros((3, 3)), np.array([1.0, np.inf, 2.0]), "finite"),
        (np.zeros((2, 3, 3)), np.ones((4, 3)), "batch sizes differ"),
    ],
)
def test_invalid_inputs_raise_clear_errors(adjacency, weights, message):
    with pytest.raises(ValueError, match=message):
        local_greedy_mwis(adjacency, weights)


def test_sequential_greedy_rejects_batches():
    with pytest.raises(ValueError, match="one graph"):
        sequential_greedy_mwis(np.zeros((2, 3, 3)), np.ones(3))
    with pytest.raises(ValueError, match="one weight vector"):
        sequential_greedy_mwis(np.zeros((3, 3)), np.ones((2, 3)))
