"""The per-rank view of a sparse operator: owned rows, ghost columns, local indices, send and receive plans.

An operator M (:class:`core.graph.SparseOperator` or :class:`core.ops.Operator`) is a list of entries
(row i = receiver, col j = sender, value): ``(M x)_i = sum_k [rows_k = i] values_k x_{cols_k}``. Given an
owner array (:mod:`core.distributed.partition`), rank r computes the rows of the nodes it owns, so it
keeps the entries whose receiver it owns. Their senders are either owned by r or *ghosts*: nodes owned
elsewhere whose rows r must receive before it can compute.

Local numbering (:class:`OperatorView`): the owned nodes (sorted global ids) are local rows
0..n_own-1; the ghosts follow as extended columns n_own..n_own+n_ghost-1, grouped by the rank that owns
them (ranks ascending, ids ascending within a rank). A rank's features are node-major x_own
(n_own, ...) (any trailing shape, (n_own, B, g) in ``core``); the extended block is
``x_ext = [x_own; ghost rows]`` and the local operator (rows, cols into x_ext, values) gives
``(M x)[owned] = local gather + segment sum of x_ext``, exactly the arithmetic of
:func:`core.ops.apply_operator`.

Plans, aligned with the *neighbour list* (the ranks this rank exchanges with; by default those sharing an
edge of the operator, or the list of a communicator built for several operators):

- forward (halo exchange, for M): rank r sends ``x_own[send_index]``, grouped by neighbour with
  ``send_counts`` rows each, and receives ``recv_counts`` rows from each neighbour, which are its ghost
  rows in order. The rows r sends to q are the owned nodes q's entries read, in q's ghost order, so
  the buffers line up without any index being sent.
- reverse (for M^T, the backward pass): ``(M^T x)_j = sum_k [cols_k = j] values_k x_{rows_k}``. Rank r
  forms the contributions of its entries to every extended column, ``contrib = local M^T x_own``
  (n_own + n_ghost rows); the ghost part goes back to the owners (r sends ``recv_counts`` rows to each
  neighbour, receives ``send_counts``), and the owner adds what it receives into the rows
  ``send_index``: ``(M^T x)[owned] = contrib[:n_own] + segment_sum(received, send_index)``. The same
  index arrays serve both directions with the roles of the counts swapped, and the reverse exchange is
  the exact adjoint of the forward one (what the gradient of a halo exchange is).

Everything here is NumPy and needs no MPI: :func:`simulate_propagate` and :func:`simulate_reverse` run
P ranks in one process, routing each buffer segment as ``MPI_Neighbor_alltoallv`` would, and the tests
compare their result with :func:`core.ops.apply_operator`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from core.distributed.partition import check_owner, edge_pattern


class PlanError(ValueError):
    """Views whose plans do not fit together (different operators, partitions or neighbour lists)."""


def _entries(op) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(|V|, rows, cols, values) of a SparseOperator or core.ops.Operator as NumPy arrays."""
    rows = np.asarray(op.rows).astype(np.int64)
    cols = np.asarray(op.cols).astype(np.int64)
    values = np.asarray(op.values)
    if rows.shape != cols.shape or rows.ndim != 1 or values.shape[-1:] != rows.shape or values.ndim > 2:
        raise ValueError(f"operator entries must be rows (nnz,), cols (nnz,) and values (nnz,) or (B, nnz); got "
                         f"{rows.shape}, {cols.shape}, {values.shape}")
    return int(op.num_nodes), rows, cols, values


def fingerprint(*arrays) -> int:
    """A 31-bit CRC of arrays (the same on every rank for the same data): integer arrays as int64,
    floating ones by their exact bytes."""
    crc = 0
    for a in arrays:
        a = np.asarray(a)
        a = a.astype(np.float64) if a.dtype.kind in "fc" else a.astype(np.int64)
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return crc & 0x7FFFFFFF


def rank_neighbours(owner: np.ndarray, receivers: np.ndarray, senders: np.ndarray, rank: int) -> np.ndarray:
    """Sorted ranks q != rank owning an endpoint of an edge (either direction) whose other end ``rank`` owns."""
    a, b = owner[receivers], owner[senders]
    other = np.concatenate([b[(a == rank) & (b != rank)], a[(b == rank) & (a != rank)]])
    return np.unique(other)


def is_symmetric(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> bool:
    """Whether the entries (rows, cols, values) of a |V| x |V| operator equal their transpose exactly: the same
    pattern and, at (i, j) and (j, i), the same value (for (B, nnz) values, in every sample). False for a
    pattern that repeats an entry (its transpose's values would be ambiguous)."""
    key = rows.astype(np.int64) * n + cols
    key_t = cols.astype(np.int64) * n + rows
    order, order_t = np.argsort(key, kind="stable"), np.argsort(key_t, kind="stable")
    if not np.array_equal(key[order], key_t[order_t]) or np.any(np.diff(key[order]) == 0):
        return False
    return bool(np.array_equal(values[..., order], values[..., order_t]))


def _displacements(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


@dataclass(frozen=True, eq=False)  # eq=False: hashable by identity (exchanges cache tensors per view)
class OperatorView:
    """Rank ``rank``'s part of an operator and its exchange plans (module docstring).

    Attributes:
        rank, num_ranks: this rank and P.
        global_num_nodes: |V|.
        owned: (n_own,) global ids of the owned nodes, sorted; local row k is node ``owned[k]``.
        ghosts: (n_ghost,) global ids of the ghost nodes, grouped by owner (ascending), then by id;
            extended column n_own + k is node ``ghosts[k]``.
        ghost_owner: (n_ghost,) the rank owning each ghost.
        rows: (nnz_local,) int32 local row (receiver) of each kept entry, in 0..n_own-1.
        cols: (nnz_local,) int32 extended column (sender) of each kept entry, in 0..n_own+n_ghost-1.
        values: (nnz_local,) or (B, nnz_local) values of the kept entries.
        entries: (nnz_local,) positions of the kept entries in the global entry list (to slice
            new per-sample values of the same pattern: :meth:`localize`).
        neighbours: (k,) ranks of the neighbour list, ascending.
        send_index: (n_send,) int32 local rows sent in the forward exchange, grouped by neighbour.
        send_counts: (k,) rows sent to each neighbour (forward) = rows received from it (reverse).
        recv_counts: (k,) ghost rows received from each neighbour (forward) = rows sent to it (reverse).
        key: fingerprint of the global operator (pattern and values) and the owner array, equal on all
            ranks: the debug mode compares it, so that exchanging S on one rank and W (same pattern) on
            another is caught. :meth:`with_values` derives the new key from the old one only.
        symmetric: the global operator equals its transpose exactly (pattern and values; every sample's
            values for per-sample ones), the same on every rank. Then ``(M^T x)[owned] = (M x)[owned]``,
            so an exchange may run the reverse exchange as a forward one (it is cheaper: no scatter-add of
            returned contributions); :meth:`with_values` clears it (local values cannot show symmetry).
    """

    rank: int
    num_ranks: int
    global_num_nodes: int
    owned: np.ndarray
    ghosts: np.ndarray
    ghost_owner: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    entries: np.ndarray
    neighbours: np.ndarray
    send_index: np.ndarray
    send_counts: np.ndarray
    recv_counts: np.ndarray
    key: int
    symmetric: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, op, owner, rank: int, num_ranks: int | None = None, neighbours=None) -> OperatorView:
        """The view of ``op`` on ``rank`` for the partition ``owner``.

        Args:
            op: a :class:`core.graph.SparseOperator` or :class:`core.ops.Operator` (global).
            owner: (|V|,) owner array.
            rank: the rank whose view this is.
            num_ranks: P (default: the largest rank in ``owner`` plus one; pass the communicator size
                when some rank owns no node).
            neighbours: the neighbour list to align the plans with (ascending ranks, e.g. a communicator's
                built on several operators); default: the ranks sharing an edge of ``op`` with ``rank``.
                A rank ``op`` needs that is missing from it raises :class:`PlanError`.
        """
        n, rows, cols, values = _entries(op)
        owner = check_owner(owner, n, num_ranks)
        p = int(owner.max()) + 1 if num_ranks is None else int(num_ranks)
        rank = int(rank)
        if not 0 <= rank < p:
            raise ValueError(f"rank {rank} is outside 0..{p - 1}")
        row_owner, col_owner = owner[rows], owner[cols]

        owned = np.flatnonzero(owner == rank)
        n_own = owned.size
        local_of = np.full(n, -1, np.int64)
        local_of[owned] = np.arange(n_own)

        # entries whose receiver this rank owns, and the ghosts they read (senders owned elsewhere)
        mine = np.flatnonzero(row_owner == rank)
        remote = col_owner[mine] != rank
        ghost_ids = np.unique(cols[mine][remote])
        ghosts = ghost_ids[np.lexsort((ghost_ids, owner[ghost_ids]))]
        ghost_owner = owner[ghosts]
        local_of[ghosts] = n_own + np.arange(ghosts.size)

        # rows to send: owned senders of entries whose receiver rank q != rank owns, once per (q, sender),
        # ordered by q then id: exactly q's ghosts owned by this rank, in q's ghost order
        out = np.flatnonzero((col_owner == rank) & (row_owner != rank))
        pairs = np.unique(row_owner[out] * n + cols[out])
        send_rank, send_node = pairs // n, pairs % n

        needed = np.union1d(np.unique(ghost_owner), np.unique(send_rank))
        if neighbours is None:
            neighbours = rank_neighbours(owner, *edge_pattern(op)[1:], rank)
        neighbours = np.asarray(neighbours, np.int64).reshape(-1)
        if np.any(np.diff(neighbours) <= 0) or (neighbours.size and (neighbours.min() < 0 or neighbours.max() >= p)):
            raise PlanError(f"the neighbour list must hold distinct ranks in 0..{p - 1}, ascending: {neighbours}")
        if rank in neighbours:
            raise PlanError(f"rank {rank} cannot be its own neighbour")
        missing = np.setdiff1d(needed, neighbours)
        if missing.size:
            raise PlanError(f"rank {rank} exchanges with ranks {missing.tolist()} for this operator, but they are not "
                            f"in its neighbour list {neighbours.tolist()} (build the communicator on every operator "
                            f"the run uses)")
        k = neighbours.size
        send_counts = np.bincount(np.searchsorted(neighbours, send_rank), minlength=k).astype(np.int64)
        recv_counts = np.bincount(np.searchsorted(neighbours, ghost_owner), minlength=k).astype(np.int64)

        return cls(
            rank=rank, num_ranks=p, global_num_nodes=n, owned=owned, ghosts=ghosts, ghost_owner=ghost_owner,
            rows=local_of[rows[mine]].astype(np.int32), cols=local_of[cols[mine]].astype(np.int32),
            values=values[..., mine], entries=mine, neighbours=neighbours,
            send_index=local_of[send_node].astype(np.int32), send_counts=send_counts, recv_counts=recv_counts,
            key=fingerprint([n], rows, cols, owner, values), symmetric=is_symmetric(rows, cols, values, n),
        )

    # ------------------------------------------------------------------ sizes and derived plans
    @property
    def num_owned(self) -> int:
        return int(self.owned.size)

    @property
    def num_ghosts(self) -> int:
        return int(self.ghosts.size)

    @property
    def num_nodes(self) -> int:
        """Rows of this rank's output, n_own: what ``Operator.num_nodes`` means to node-local code
        (the number of nodes whose features this rank holds). |V| is :attr:`global_num_nodes`."""
        return self.num_owned

    @property
    def num_sent(self) -> int:
        """Rows sent in a forward exchange (boundary rows, counted once per neighbour rank)."""
        return int(self.send_index.size)

    @property
    def per_sample(self) -> bool:
        return self.values.ndim == 2

    @property
    def send_displs(self) -> np.ndarray:
        return _displacements(self.send_counts)

    @property
    def recv_displs(self) -> np.ndarray:
        return _displacements(self.recv_counts)

    def counts(self, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows sent to, rows received from) each neighbour in the forward or reverse exchange."""
        return (self.recv_counts, self.send_counts) if reverse else (self.send_counts, self.recv_counts)

    @property
    def boundary(self) -> np.ndarray:
        """Local ids of the owned nodes that some other rank reads (sorted, each once)."""
        return np.unique(self.send_index)

    # ------------------------------------------------------------------ values
    def localize(self, global_values) -> np.ndarray:
        """This rank's slice ``global_values[..., entries]`` of values (nnz,) or (B, nnz) on the same pattern."""
        return np.asarray(global_values)[..., self.entries]

    def with_values(self, local_values) -> OperatorView:
        """The same view with new local values (nnz_local,) or (B, nnz_local) (e.g. from :meth:`localize`)."""
        local_values = np.asarray(local_values)
        if local_values.shape[-1:] != self.rows.shape or local_values.ndim > 2:
            raise ValueError(f"local values must have shape ({self.rows.size},) or (B, {self.rows.size}), "
                             f"got {local_values.shape}")
        return replace(self, values=local_values, key=fingerprint([self.key, 1]), symmetric=False)

    def diagonal(self) -> np.ndarray:
        """M_ii of the owned nodes, (n_own,) or (B, n_own) for per-sample values (an own term, no message).

        Owned nodes are both local row k and extended column k, so a diagonal entry has rows == cols.
        """
        on_diag = self.rows == self.cols
        out = np.zeros(self.values.shape[:-1] + (self.num_owned,), self.values.dtype)
        out[..., self.rows[on_diag]] = self.values[..., on_diag]
        return out

    def transposed(self) -> TransposedView:
        """M^T on the same data: exchanges run it as the reverse exchange."""
        return TransposedView(self)


@dataclass(frozen=True, eq=False)
class TransposedView:
    """M^T for an :class:`OperatorView` of M: the reverse exchange (module docstring)."""

    base: OperatorView

    def transposed(self) -> OperatorView:
        return self.base

    @property
    def num_nodes(self) -> int:
        return self.base.num_owned

    @property
    def per_sample(self) -> bool:
        return self.base.per_sample

    @property
    def values(self) -> np.ndarray:
        return self.base.values

    def diagonal(self) -> np.ndarray:
        return self.base.diagonal()


# ---------------------------------------------------------------------------- local arithmetic (NumPy)
def _weights(view: OperatorView, ndim: int) -> np.ndarray:
    if view.per_sample:  # (B, nnz) -> (nnz, B, 1...) against messages (nnz, B, g...)
        return np.moveaxis(view.values, 0, 1).reshape(view.rows.size, view.values.shape[0], *([1] * (ndim - 2)))
    return view.values.reshape(-1, *([1] * (ndim - 1)))


def local_apply(view: OperatorView, x_ext: np.ndarray) -> np.ndarray:
    """(M x)[owned] from the extended block x_ext = [x_own; ghost rows] (gather + segment sum)."""
    x_ext = np.asarray(x_ext)
    out = np.zeros((view.num_owned,) + x_ext.shape[1:], np.result_type(x_ext, view.values))
    np.add.at(out, view.rows, x_ext[view.cols] * _weights(view, x_ext.ndim))
    return out


def local_contributions(view: OperatorView, x_own: np.ndarray) -> np.ndarray:
    """The contributions of this rank's entries to (M^T x) on every extended column, (n_own + n_ghost, ...)."""
    x_own = np.asarray(x_own)
    out = np.zeros((view.num_owned + view.num_ghosts,) + x_own.shape[1:], np.result_type(x_own, view.values))
    np.add.at(out, view.cols, x_own[view.rows] * _weights(view, x_own.ndim))
    return out


def accumulate_reverse(view: OperatorView, contributions: np.ndarray, received: np.ndarray) -> np.ndarray:
    """(M^T x)[owned]: own contributions plus the received ghost contributions added at ``send_index``."""
    out = np.array(contributions[:view.num_owned])
    np.add.at(out, view.send_index, received)
    return out


# ---------------------------------------------------------------------------- P ranks in one process
def check_plans(views) -> None:
    """Check that the views of ranks 0..P-1 fit together: symmetric neighbour lists and matching counts.

    What rank r sends to q (``send_counts``) must be what q expects from r (``recv_counts``), for the
    same operator and partition (equal ``key``).
    """
    views = list(views)
    p = len(views)
    for r, v in enumerate(views):
        if v.rank != r or v.num_ranks != p:
            raise PlanError(f"view {r} is rank {v.rank} of {v.num_ranks}, expected rank {r} of {p}")
        if v.key != views[0].key:
            raise PlanError(f"ranks 0 and {r} hold views of different operators or partitions")
    for r, v in enumerate(views):
        for pos, q in enumerate(v.neighbours):
            w = views[q]
            back = np.searchsorted(w.neighbours, r)
            if back >= w.neighbours.size or w.neighbours[back] != r:
                raise PlanError(f"rank {r} lists rank {q} as a neighbour but rank {q} does not list rank {r}")
            if v.send_counts[pos] != w.recv_counts[back]:
                raise PlanError(f"rank {r} sends {v.send_counts[pos]} rows to rank {q}, which expects "
                                f"{w.recv_counts[back]}")


def route(views, send_buffers, reverse: bool = False) -> list[np.ndarray]:
    """What ``MPI_Neighbor_alltoallv`` delivers: rank r's receive buffer, given every rank's send buffer.

    Buffers are row blocks grouped by neighbour (the forward or reverse plan of each view); segment ``pos``
    of rank r's send buffer goes to ``neighbours[pos]`` and lands in that rank's segment for r.
    """
    views = list(views)
    check_plans(views)
    received = []
    for r, v in enumerate(views):
        _, recv_counts = v.counts(reverse)
        parts = []
        for q in v.neighbours:
            w = views[q]
            sent, _ = w.counts(reverse)
            pos = int(np.searchsorted(w.neighbours, r))
            start = int(sent[:pos].sum())
            parts.append(send_buffers[q][start:start + int(sent[pos])])
        shape = (0,) + send_buffers[r].shape[1:]
        received.append(np.concatenate(parts) if parts else np.zeros(shape, send_buffers[r].dtype))
        if received[-1].shape[0] != int(recv_counts.sum()):
            raise PlanError(f"rank {r} received {received[-1].shape[0]} rows, expected {int(recv_counts.sum())}")
    return received


def simulate_propagate(views, x) -> np.ndarray:
    """M x for global node-major x, computed by P simulated ranks (halo exchange + local products)."""
    views = list(views)
    x = np.asarray(x)
    owned = [x[v.owned] for v in views]
    ghosts = route(views, [xo[v.send_index] for v, xo in zip(views, owned)])
    out = np.zeros((views[0].global_num_nodes,) + x.shape[1:], np.result_type(x, views[0].values))
    for v, xo, g in zip(views, owned, ghosts):
        out[v.owned] = local_apply(v, np.concatenate([xo, g]))
    return out


def simulate_reverse(views, x) -> np.ndarray:
    """M^T x for global node-major x, computed by P simulated ranks (local contributions + reverse exchange)."""
    views = list(views)
    x = np.asarray(x)
    contribs = [local_contributions(v, x[v.owned]) for v in views]
    received = route(views, [c[v.num_owned:] for v, c in zip(views, contribs)], reverse=True)
    out = np.zeros((views[0].global_num_nodes,) + x.shape[1:], np.result_type(x, views[0].values))
    for v, c, got in zip(views, contribs, received):
        out[v.owned] = accumulate_reverse(v, c, got)
    return out


def build_views(op, owner, num_ranks: int | None = None, neighbours=None) -> list[OperatorView]:
    """The views of every rank 0..P-1 (for simulations and tests); ``neighbours`` is a per-rank list."""
    owner = np.asarray(owner)
    p = int(owner.max()) + 1 if num_ranks is None else int(num_ranks)
    return [OperatorView.build(op, owner, r, p, None if neighbours is None else neighbours[r]) for r in range(p)]
