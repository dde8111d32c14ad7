"""Partition the node set V over P ranks: METIS or contiguous blocks, with edge cut and boundary counts.

A partition is an *owner array*: ``owner[i]`` (int64, in 0..P-1) is the rank that holds node i, its
features and its parameter copy. Two methods:

- ``"metis"``: METIS k-way (P > 8) or recursive bisection (P <= 8) through PyMetis, minimising the
  number of cut edges with balanced part sizes, on the *union of the edges the run uses* (every
  off-diagonal entry of every operator passed in, e.g. the shift operator S and the mixing matrix W,
  symmetrised: a halo exchange of M and the reverse exchange of M^T cross the same rank pairs).
  Isolated nodes are ordinary vertices without edges: METIS places them to balance the parts. When
  METIS leaves a part empty (P close to |V|), the highest-id node of the largest part is moved to it, so
  every rank owns at least one node; a graph without any edge gets the contiguous partition.
  Deterministic: METIS is run with a fixed ``seed`` option (default 0), so the same graph, P and seed
  give the same owner array with the same METIS build. Different builds may differ, so an MPI run
  should compute the partition once (e.g. on rank 0) and broadcast it;
  :class:`core.distributed.exchange.MPIExchange` checks that all ranks hold the same one.
- ``"contiguous"``: consecutive blocks of node ids, sizes differing by at most one (``np.array_split``
  order). Good when node ids already follow locality, and the reference partition for tests.

P = 1 gives all zeros with either method; P > |V| raises ValueError (a rank would own no node).
:func:`partition_stats` reports the edge cut (undirected edges whose endpoints are on different ranks),
the boundary nodes (nodes with at least one neighbour on another rank: the rows that are sent) and the
part sizes.

NumPy only; PyMetis is imported when ``method="metis"`` is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("metis", "contiguous")


def edge_pattern(*sources, num_nodes: int | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """The symmetric union of the off-diagonal entries of ``sources``: (|V|, receivers, senders).

    Each source is a :class:`core.graph.Graph` (its edges), a :class:`core.graph.SparseOperator` or a
    :class:`core.ops.Operator` (its entries with row != col), or an (E, 2) integer array of node pairs
    (then ``num_nodes`` is required). The result lists every directed pair (i, j), i != j, for which
    some source has an entry (i, j) or (j, i), once, sorted by receiver then sender (int64).
    """
    n = num_nodes
    rows, cols = [], []
    for src in sources:
        if hasattr(src, "senders") and hasattr(src, "receivers"):  # core.graph.Graph
            r, c, size = np.asarray(src.receivers), np.asarray(src.senders), src.num_nodes
        elif hasattr(src, "rows") and hasattr(src, "cols"):  # SparseOperator or core.ops.Operator
            r, c, size = np.asarray(src.rows), np.asarray(src.cols), src.num_nodes
        else:
            pairs = np.asarray(src)
            if pairs.size == 0:
                pairs = pairs.reshape(0, 2)
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise ValueError(f"an edge array must have shape (E, 2), got {pairs.shape}")
            if num_nodes is None:
                raise ValueError("num_nodes is required when edges are given as an array")
            r, c, size = pairs[:, 0], pairs[:, 1], num_nodes
        size = int(size)
        if n is None:
            n = size
        elif size != n:
            raise ValueError(f"the sources describe different node sets: {size} and {n} nodes")
        rows.append(np.asarray(r, np.int64))
        cols.append(np.asarray(c, np.int64))
    if n is None:
        raise ValueError("edge_pattern needs at least one graph, operator or edge array")
    r = np.concatenate(rows + cols) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols + rows) if rows else np.zeros(0, np.int64)
    if r.size and (min(r.min(), c.min()) < 0 or max(r.max(), c.max()) >= n):
        raise ValueError(f"edge endpoint out of range [0, {n - 1}]")
    keep = r != c
    keys = np.unique(r[keep] * n + c[keep])  # sorted by receiver, then sender
    return int(n), keys // n, keys % n


def partition(sources, num_parts: int, method: str = "metis", *, seed: int = 0,
              num_nodes: int | None = None) -> np.ndarray:
    """Owner array (|V|,) int64 of a P-way partition of the nodes.

    Args:
        sources: what :func:`edge_pattern` accepts: a Graph, an operator, an edge array, or a tuple/list
            of them (the union of the edges the run uses, e.g. ``(shift, mixing)``).
        num_parts: P >= 1, at most |V|.
        method: ``"metis"`` or ``"contiguous"`` (module docstring).
        seed: METIS's random seed (ignored by ``"contiguous"``).
        num_nodes: |V|, only needed when ``sources`` are bare edge arrays.
    """
    if not isinstance(sources, (list, tuple)):
        sources = (sources,)
    n, receivers, senders = edge_pattern(*sources, num_nodes=num_nodes)
    p = _check_parts(num_parts, n)
    if method not in METHODS:
        raise ValueError(f"unknown partition method {method!r}; choose one of {', '.join(METHODS)}")
    if p == 1:
        return np.zeros(n, np.int64)
    if method == "contiguous":
        return contiguous_owner(n, p)
    return _metis_owner(n, receivers, senders, p, seed)


def contiguous_owner(num_nodes: int, num_parts: int) -> np.ndarray:
    """Blocks of consecutive ids: the first |V| mod P parts get one node more (``np.array_split``)."""
    n, p = int(num_nodes), _check_parts(num_parts, num_nodes)
    base, extra = divmod(n, p)
    sizes = np.full(p, base, np.int64)
    sizes[:extra] += 1
    return np.repeat(np.arange(p, dtype=np.int64), sizes)


def _metis_owner(n: int, receivers: np.ndarray, senders: np.ndarray, p: int, seed: int) -> np.ndarray:
    try:
        import pymetis
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("method='metis' needs PyMetis: pip install 'pymetis>=2023.1' (or '.[mpi]')") from err
    if receivers.size == 0:  # no edges at all: nothing to cut, METIS has nothing to work with
        return contiguous_owner(n, p)
    # CSR adjacency of the symmetric pattern: the neighbours of i are senders[xadj[i]:xadj[i+1]]
    xadj = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(receivers, minlength=n), out=xadj[1:])
    adjncy = senders.astype(np.int64)
    options = pymetis.Options(seed=int(seed))
    if hasattr(pymetis, "CSRAdjacency"):  # PyMetis >= 2025.2
        result = pymetis.part_graph(p, pymetis.CSRAdjacency(xadj, adjncy), options=options)
    else:  # older releases take xadj/adjncy directly
        result = pymetis.part_graph(p, xadj=xadj, adjncy=adjncy, options=options)
    return _fill_empty_parts(np.asarray(result[1], dtype=np.int64), p)


def _fill_empty_parts(owner: np.ndarray, p: int) -> np.ndarray:
    """Give every empty part one node: METIS may leave parts empty when P is close to |V|.

    For each empty part in turn, the node with the highest id of the currently largest part moves to it
    (deterministic; a loop over the empty parts, at most P - 1, not over nodes).
    """
    sizes = np.bincount(owner, minlength=p)
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        node = int(np.flatnonzero(owner == donor)[-1])
        owner[node] = empty
        sizes[donor] -= 1
        sizes[empty] += 1
    return owner


def _check_parts(num_parts, num_nodes) -> int:
    if isinstance(num_parts, bool) or int(num_parts) != num_parts or num_parts < 1:
        raise ValueError(f"the number of parts (MPI ranks) must be a positive integer, got {num_parts!r}")
    if num_parts > num_nodes:
        raise ValueError(f"cannot split {num_nodes} nodes over {num_parts} ranks: every rank must own at least "
                         f"one node (run with at most {num_nodes} ranks)")
    return int(num_parts)


@dataclass(frozen=True)
class PartitionStats:
    """What a partition costs in communication.

    Attributes:
        num_parts: P.
        num_nodes: |V|.
        num_edges: undirected edges of the pattern.
        edge_cut: undirected edges whose endpoints are owned by different ranks.
        boundary_nodes: nodes with a neighbour on another rank (their rows are sent in a halo exchange).
        part_sizes: (P,) nodes per rank.
        part_boundary: (P,) boundary nodes per rank.
        ghost_rows: (P,) distinct nodes owned elsewhere that each rank reads (its receive size in rows).
    """

    num_parts: int
    num_nodes: int
    num_edges: int
    edge_cut: int
    boundary_nodes: int
    part_sizes: np.ndarray
    part_boundary: np.ndarray
    ghost_rows: np.ndarray

    @property
    def cut_fraction(self) -> float:
        return self.edge_cut / self.num_edges if self.num_edges else 0.0

    @property
    def boundary_fraction(self) -> float:
        return self.boundary_nodes / self.num_nodes

    def summary(self) -> str:
        return (f"P={self.num_parts}: edge cut {self.edge_cut}/{self.num_edges} ({100 * self.cut_fraction:.2f} %), "
                f"boundary nodes {self.boundary_nodes}/{self.num_nodes} ({100 * self.boundary_fraction:.2f} %), "
                f"part sizes {self.part_sizes.min()}-{self.part_sizes.max()}")


def partition_stats(owner, sources, num_nodes: int | None = None) -> PartitionStats:
    """Edge cut, boundary nodes and part sizes of ``owner`` on the union pattern of ``sources``."""
    if not isinstance(sources, (list, tuple)):
        sources = (sources,)
    n, receivers, senders = edge_pattern(*sources, num_nodes=num_nodes)
    owner = check_owner(owner, n)
    p = int(owner.max()) + 1
    cross = owner[receivers] != owner[senders]  # each cut edge appears in both directions
    boundary = np.zeros(n, bool)
    boundary[senders[cross]] = True
    # ghost rows of rank r: distinct senders owned elsewhere that r's receivers read
    ghost_pairs = np.unique(owner[receivers[cross]] * n + senders[cross])
    return PartitionStats(
        num_parts=p, num_nodes=n, num_edges=int(receivers.size // 2), edge_cut=int(cross.sum() // 2),
        boundary_nodes=int(boundary.sum()), part_sizes=np.bincount(owner, minlength=p),
        part_boundary=np.bincount(owner[boundary], minlength=p), ghost_rows=np.bincount(ghost_pairs // n, minlength=p))


def check_owner(owner, num_nodes: int, num_parts: int | None = None) -> np.ndarray:
    """Validate an owner array: shape (|V|,), integers in [0, P). Returns it as int64."""
    arr = np.asarray(owner)
    if arr.shape != (int(num_nodes),):
        raise ValueError(f"the owner array must have shape ({num_nodes},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"the owner array must hold integer ranks, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"owner ranks must be non-negative, got {arr.min()}")
    if num_parts is not None and arr.size and arr.max() >= num_parts:
        raise ValueError(f"owner array names rank {arr.max()} but there are only {num_parts} ranks")
    return arr
