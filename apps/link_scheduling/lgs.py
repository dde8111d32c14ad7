"""Local greedy solver (LGS) for maximum weighted independent set (docs/design.md, section 9, paper Section IV-C).

The LGS of Joo & Shroff (paper ref. [24]) is the distributed link scheduler the actor GCNN feeds: given
a conflict graph and vertex weights, every vertex repeatedly compares its priority with those of its
undecided one-hop neighbours. A vertex's priority is the pair (weight, -index): larger weight first,
ties broken in favour of the smaller index, so that priorities form a strict total order and the
result is deterministic.

One synchronous *iteration* (docs/design.md, section 9): every undecided vertex whose priority is the largest in
its closed undecided neighbourhood joins the set, and the undecided neighbours of the joining vertices
leave. This repeats until no vertex is undecided. The result is independent (two adjacent undecided
vertices never join together: the higher-priority one blocks the other) and maximal (a vertex only
leaves when a neighbour has joined). It is the set built by the sequential greedy that scans vertices by
decreasing priority, because a vertex is in the set exactly when none of its higher-priority neighbours
is; `sequential_greedy_mwis` is that oracle.

Everything is NumPy and vectorised over a batch of B weight vectors, on one shared graph (V, V) or on
a batch of graphs (B, V, V) with the same V; the only Python loop is over iterations (2-7 on the
100-vertex Erdos-Renyi graphs of docs/design.md, section 9).
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


def _pack_rows(mask: np.ndarray) -> np.ndarray:
    """Pack the last axis of a boolean (..., V) array into (..., ceil(V/64)) uint64 bit sets.

    Only ever combined (&) with other arrays packed by this function, so the bit order is irrelevant.
    """
    packed = np.packbits(mask, axis=-1, bitorder="little")
    words = -(-mask.shape[-1] // 64)
    out = np.zeros(mask.shape[:-1] + (8 * words,), dtype=np.uint8)
    out[..., : packed.shape[-1]] = packed
    return out.view(np.uint64)


def _intersects(rows: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """(B, V) boolean: does packed row rows[(b,) v] share a bit with the packed set sets[b]?

    rows is (V, W) or (B, V, W), sets is (B, W). A loop over the W = ceil(V/64) words keeps every
    operation a flat (B, V) integer op.
    """
    hit = rows[..., 0] & sets[:, None, 0]
    for k in range(1, rows.shape[-1]):
        hit |= rows[..., k] & sets[:, None, k]
    return hit != 0


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

    Cost: O(K B V^2 / 64) time and O(B V^2 / 64) memory with K iterations: neighbourhoods are bit
    sets of 64-bit words, so an iteration is a few integer ops on (B, V) arrays. No BLAS is involved,
    which keeps the time steady on a CPU shared with other processes (multi-threaded BLAS on tiny
    matrices slows down by 10x there).
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
    undecided = np.ones((batch, num_vertices), dtype=bool)
    in_set = np.zeros((batch, num_vertices), dtype=bool)
    iterations = np.zeros(batch, dtype=np.int64)
    left_in_last = np.zeros(batch, dtype=bool)

    if num_vertices > 0:
        # Priority (weight, -index): a stable sort of -weights lists equal weights by increasing index.
        order = np.argsort(-weights, axis=-1, kind="stable")  # order[b, r] = vertex of rank r
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(num_vertices), order.shape), axis=-1)
        # above[b, r] = bit set of the vertices ranked before r (exclusive prefix OR over the order);
        # higher[b, v] = neighbours of v ranked before v. A vertex joins once none of them is
        # undecided: a decided higher-priority neighbour is necessarily "out" (had it joined, v would
        # have left), so this is docs/design.md, section 9's "largest in its closed undecided neighbourhood".
        singletons = _pack_rows(np.eye(num_vertices, dtype=bool))
        above = np.zeros((batch, num_vertices, singletons.shape[-1]), dtype=np.uint64)
        np.bitwise_or.accumulate(singletons[order[:, :-1]], axis=1, out=above[:, 1:])
        neighbours = _pack_rows(adjacency)  # (V, W) or (B, V, W)
        higher = np.take_along_axis(above, rank[:, :, None], axis=1) & neighbours

    while undecided.any():
        active = undecided.any(axis=1)
        joins = undecided & ~_intersects(higher, _pack_rows(undecided))
        leaves = undecided & ~joins & _intersects(neighbours, _pack_rows(joins))
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
