"""Partitions of the node set: METIS and contiguous owner arrays, their counts, and bad input (no MPI)."""

import networkx as nx
import numpy as np
import pytest

from core.distributed.partition import (
    check_owner,
    contiguous_owner,
    edge_pattern,
    partition,
    partition_stats,
)
from core.graph import Graph
from core.ops import to_operator


def ba_graph(n=40, isolated=1, seed=0):
    base = Graph.from_networkx(nx.barabasi_albert_graph(n, 2, seed=seed))
    up = base.senders < base.receivers
    return Graph.from_edge_list(np.stack([base.senders[up], base.receivers[up]], 1), n + isolated)


def brute_force_stats(owner, graph):
    cut, boundary = 0, set()
    for s, r in zip(graph.senders.tolist(), graph.receivers.tolist()):
        if owner[s] != owner[r]:
            boundary.add(s)
            if s < r:
                cut += 1
    return cut, len(boundary)


@pytest.mark.parametrize("method", ["metis", "contiguous"])
@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_owner_array_is_valid_balanced_and_counts_are_right(method, parts):
    graph = ba_graph()
    owner = partition(graph, parts, method)
    assert owner.shape == (graph.num_nodes,) and owner.dtype == np.int64
    assert set(owner.tolist()) == set(range(parts))  # every rank owns a node
    sizes = np.bincount(owner)
    assert sizes.max() - sizes.min() <= (1 if method == "contiguous" else max(2, graph.num_nodes // 10))
    stats = partition_stats(owner, graph)
    cut, boundary = brute_force_stats(owner, graph)
    assert (stats.edge_cut, stats.boundary_nodes) == (cut, boundary)
    assert stats.part_sizes.sum() == graph.num_nodes and stats.part_boundary.sum() == boundary
    assert stats.num_edges == graph.num_edges
    if parts == 1:
        assert stats.edge_cut == 0 and stats.boundary_nodes == 0 and not owner.any()


def test_metis_cuts_fewer_edges_than_contiguous_and_is_deterministic():
    graph = Graph.from_networkx(nx.random_geometric_graph(200, 0.15, seed=1), weight=None)
    metis = partition(graph, 4, "metis", seed=0)
    np.testing.assert_array_equal(metis, partition(graph, 4, "metis", seed=0))
    shuffled = np.random.default_rng(0).permutation(graph.num_nodes)  # ids carry no locality
    relabelled = Graph.from_edge_list(np.stack([shuffled[graph.senders], shuffled[graph.receivers]], 1)[
        graph.senders < graph.receivers], graph.num_nodes)
    assert (partition_stats(partition(relabelled, 4, "metis"), relabelled).edge_cut
            < partition_stats(contiguous_owner(graph.num_nodes, 4), relabelled).edge_cut)


def test_union_of_operators_and_isolated_nodes():
    graph = ba_graph(20, isolated=3)
    shift, mixing = graph.shift_operator("normalized_laplacian"), graph.metropolis_hastings()
    n, receivers, senders = edge_pattern(shift, to_operator(mixing))
    assert n == 23 and len(receivers) == 2 * graph.num_edges and not np.any(receivers == senders)
    owner = partition((shift, mixing), 3)
    assert set(owner.tolist()) == {0, 1, 2}
    # a graph without edges still partitions (contiguously: nothing to cut)
    empty = Graph.from_edge_list(np.zeros((0, 2), int), 5)
    np.testing.assert_array_equal(partition(empty, 2, "metis"), [0, 0, 0, 1, 1])


def test_metis_never_leaves_a_rank_empty():
    graph = ba_graph(12, isolated=0)
    for parts in (10, 11, 12):
        assert np.bincount(partition(graph, parts), minlength=parts).min() == 1


def test_bad_input_is_refused_clearly():
    graph = ba_graph(10, isolated=0)
    with pytest.raises(ValueError, match="cannot split 10 nodes over 11 ranks"):
        partition(graph, 11)
    with pytest.raises(ValueError, match="positive integer"):
        partition(graph, 0)
    with pytest.raises(ValueError, match="unknown partition method"):
        partition(graph, 2, "random")
    with pytest.raises(ValueError, match="different node sets"):
        edge_pattern(graph, ba_graph(12, isolated=0))
    with pytest.raises(ValueError, match="shape"):
        check_owner(np.zeros(3, int), 4)
    with pytest.raises(ValueError, match="only 2 ranks"):
        check_owner(np.array([0, 1, 2]), 3, 2)
