"""Local greedy solver (LGS) for maximum weighted independent set (DESIGN section 9, paper Section IV-C).

The LGS of Joo & Shroff (paper ref. [24]) is the distributed link scheduler the actor GCNN feeds: given
a conflict graph and vertex weights, every vertex repeatedly compares its priority with those of its
undecided one-hop neighbours. A vertex's priority is the pair (weight, -index): larger weight first,
ties broken in favour of the smaller index, so that priorities form a strict total order and the
result is deterministic.

One synchronous *iteration* (DESIGN section 9): every undecided vertex whose priority is the largest in
its closed undecided neighbourhood joins the set, and the undecided neighbours of the joining vertices
leave. This repeats until no vertex is undecided. The result is independent (two adjacent undecided
vertices never join together: the higher-priority one blocks the other) and maximal (a vertex only
leaves when a neighbour has joined). It is the set built by the sequential greedy that scans vertices by
decreasing priority, because a vertex is in the set exactly when none of its higher-priority neighbours
is; `sequential_greedy_mwis` is that oracle.

Everything is NumPy and vectorised over a batch of B weight vectors, on one shared graph (V, V) or on
a batch of graphs (B, V, V) with the same V; the only Python loop is over iterations (about 4-6 on the
100-vertex Erdos-Renyi graphs of DESIGN section 9).
"""

from __future__ import annotations

import numpy as np

__all__ = ["adjacency_from_edges", "local_greedy_mwis", "sequential_greedy_mwis"]


def adjacency_from_edges(senders, receivers, num_vertices: int) -> np.ndarray:
    """Dense symmetric boolean adjacency (V, V) of an undirected graph given as an edge list.

    `senders[k]`-`receivers[k]` is an edge; each undirected edge may be listed once or in both
    directions (the core's sender/receiver arrays list both). Self-loops and out-of-range indices are
    rejected, since a conflict graph has neither.
    """
    senders = np.asarray(senders)
    receivers = np.asarray(receivers)
    if senders.shape != receivers.shape or senders.ndim != 1:
        raise ValueError(
            f"senders and receivers must be 1-D of equal length, got shapes {senders.shape} and "
            f"{receivers.shape}"
        )
    if senders.size and not (np.issubdtype(senders.dtype, np.integer)
                             and np.issubdtype(receivers.dtype, np.integer)):
        raise ValueError("senders and receivers must be integer vertex indices")
    if senders.size and (min(senders.min(), receivers.min()) < 0
                         or max(senders.max(), receivers.max()) >= num_vertices):
        raise ValueError(f"edge endpoints must lie in [0, {num_vertices - 1}]")
    if np.any(senders == receivers):
        raise ValueError("edge list contains a self-loop, which a conflict graph cannot have")
    senders, receivers = senders.astype(np.intp), receivers.astype(np.intp)  # [] arrives as float64
    adjacency = np.zeros((num_vertices, num_vertices), dtype=bool)
    adjacency[senders, receivers] = True
    adjacency[receivers, senders] = True
    return adjacency


def _check_adjacency(adjacency) -> np.ndarray:
    """Validate a (V, V) or (B, V, V) 0/1 adjacency and return it as a boolean array."""
    adjacency = np.asarray(adjacency)
    if adjacency.ndim not in (2, 3) or adjacency.shape[-1] != adjacency.shape[-2]:
        raise ValueError(
            f"adjacency must be square, of shape (V, V) or (B, V, V); got shape {adjacency.shape}"
        )
    if adjacency.dtype != bool:
        if not (np.issubdtype(adjacency.dtype, np.number) and np.isin(adjacency, (0, 1)).all()):
            raise ValueError("adjacency entries must be boolean or 0/1")
        adjacency = adjacency.astype(bool)
    if not np.array_equal(adjacency, np.swapaxes(adjacency, -1, -2)):
        raise ValueError("adjacency is not symmetric: the conflict graph must be undirected")
    if np.diagonal(adjacency, axis1=-2, axis2=-1).any():
        raise ValueError("adjacency has self-loops (non-zero diagonal)")
    return adjacency


def _check_weights(weights, num_vertices: int) -> np.ndarray:
    """Validate (V,) or (B, V) finite non-negative weights and return them as a float64 array."""
    weights = np.asarray(weights)
    if weights.ndim not in (1, 2) or weights.shape[-1] != num_vertices:
        raise ValueError(
            f"weights must have shape (V,) or (B, V) with V = {num_vertices}; got shape {weights.shape}"
        )
    if not (np.issubdtype(weights.dtype, np.floating) or np.issubdtype(weights.dtype, np.integer)):
        raise ValueError(f"weights must be real numbers, got dtype {weights.dtype}")
    weights = weights.astype(np.float64, copy=False)
    if not np.isfinite(weights).all():
        raise ValueError("weights must be finite (found NaN or inf)")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    return weights


def _priority_rank(weights: np.ndarray) -> np.ndarray:
    """Rank of every vertex by (weight, -index), 0 = highest priority; shape as `weights` (B, V).

    A stable sort of -weights orders equal weights by increasing index, which is the tie rule.
    """
    order = np.argsort(-weights, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(weights.shape[-1]), order.shape), axis=-1)
    return rank


def local_greedy_mwis(adjacency, weights, *, validate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run the local greedy solver (LGS) on a batch of weight vectors.

    Args:
      adjacency: (V, V) symmetric 0/1 or boolean adjacency of the conflict graph shared by the batch,
        or (B, V, V) for one graph per sample. No self-loops.
      weights: (B, V) (or (V,)) finite non-negative vertex weights; a (V,) vector with a (B, V, V)
        adjacency is used for every graph.
      validate: check the inputs (shape, symmetry, self-loops, finiteness, sign). Callers in a hot
        loop that build the inputs themselves may pass False.

    Returns:
      (in_set, rounds):
      in_set: boolean (B, V) indicator of the independent set ((V,) for unbatched inputs).
      rounds: int64 (B,) (a scalar for unbatched inputs) number of message-passing rounds the
        distributed LGS needs for that sample, where **one round is one synchronous exchange in
        which every vertex sends (weight, state) to its one-hop neighbours, state in {undecided,
        in, out}, followed by a local update**: an undecided vertex that hears an "in" neighbour
        becomes "out"; otherwise, if every higher-priority neighbour it heard is "out", it becomes
        "in". Neighbours learn a join one round later, so each LGS iteration (join, then the
        neighbours leave) costs two rounds, except that the last iteration costs one when nobody
        leaves in it. With K iterations: rounds = 2K - 1 + [some vertex left in iteration K], and
        rounds = 0 for V = 0. Examples: an edgeless graph takes 1 round, a complete graph (V >= 2)
        takes 2, a path whose weights increase along it takes V (the decision travels one hop per
        round).

    Cost: O(K B V^2) time and O(B V^2) memory (a dense float32 "higher-priority neighbour" matrix per
    sample makes each iteration one batched matrix-vector product through BLAS).
    """
    if validate:
        adjacency = _check_adjacency(adjacency)
        weights = _check_weights(weights, adjacency.shape[-1])
    else:
        adjacency = np.asarray(adjacency, dtype=bool)
        weights = np.asarray(weights, dtype=np.float64)
    unbatched = adjacency.ndim == 2 and weights.ndim == 1
    if adjacency.ndim == 3:
        if weights.ndim == 2 and weights.shape[0] != adjacency.shape[0]:
            raise ValueError(
                f"batch sizes differ: adjacency has {adjacency.shape[0]} graphs, weights has "
                f"{weights.shape[0]} rows"
            )
        weights = np.broadcast_to(weights, adjacency.shape[:2])
    elif weights.ndim == 1:
        weights = weights[None, :]

    batch, num_vertices = weights.shape
    rank = _priority_rank(weights)  # (B, V)
    # The (B, V, V) comparison below dominates the set-up cost; the narrowest integer type halves it.
    rank = rank.astype(np.int16 if num_vertices <= np.iinfo(np.int16).max else np.int32)
    # higher[b, v, u] = 1 when u is a neighbour of v with higher priority in sample b. A vertex joins
    # once none of these is undecided (a decided higher neighbour must be "out": had it joined, v
    # would have left), so the blocking count is one matrix-vector product per iteration. float32
    # counts are exact up to 2^24 neighbours.
    higher = (adjacency & (rank[:, None, :] < rank[:, :, None])).astype(np.float32)
    adjacency_f = adjacency.astype(np.float32)

    undecided = np.ones((batch, num_vertices), dtype=bool)
    in_set = np.zeros((batch, num_vertices), dtype=bool)
    iterations = np.zeros(batch, dtype=np.int64)
    left_in_last = np.zeros(batch, dtype=bool)
    while undecided.any():
        active = undecided.any(axis=1)
        blocking = np.matmul(higher, undecided[:, :, None].astype(np.float32))[:, :, 0]
        joins = undecided & (blocking == 0)
        joins_f = joins.astype(np.float32)
        if adjacency.ndim == 2:
            hears_join = joins_f @ adjacency_f  # symmetric adjacency: (J A)[b, v] = sum_u J[b, u] A[u, v]
        else:
            hears_join = np.matmul(adjacency_f, joins_f[:, :, None])[:, :, 0]
        leaves = undecided & ~joins & (hears_join > 0)
        in_set |= joins
        undecided &= ~(joins | leaves)
        iterations += active
        left_in_last = np.where(active, leaves.any(axis=1), left_in_last)

    rounds = np.where(iterations > 0, 2 * iterations - 1 + left_in_last, 0).astype(np.int64)
    if unbatched:
        return in_set[0], rounds[0]
    return in_set, rounds


def sequential_greedy_mwis(adjacency, weights) -> np.ndarray:
    """Reference sequential greedy MWIS on one graph: the test oracle for `local_greedy_mwis`.

    Scans vertices by decreasing weight, equal weights by increasing index, and adds a vertex when no
    neighbour is already in the set. adjacency (V, V), weights (V,); returns a boolean (V,) indicator.
    """
    adjacency = _check_adjacency(adjacency)
    if adjacency.ndim != 2:
        raise ValueError(f"sequential_greedy_mwis takes one graph (V, V), got shape {adjacency.shape}")
    weights = _check_weights(weights, adjacency.shape[0])
    if weights.ndim != 1:
        raise ValueError(f"sequential_greedy_mwis takes one weight vector (V,), got shape {weights.shape}")
    in_set = np.zeros(adjacency.shape[0], dtype=bool)
    for vertex in np.argsort(-weights, kind="stable"):
        if not (adjacency[vertex] & in_set).any():
            in_set[vertex] = True
    return in_set
