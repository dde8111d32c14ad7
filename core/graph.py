"""Graph container: validated undirected graphs, graph shift operators and consensus weights.

A :class:`Graph` holds a fixed node set and an undirected, non-negatively weighted edge set without
self-loops. Everything the distributed algorithms need from it is a :class:`SparseOperator`: a list of
(receiver i, sender j, value) entries, so that applying an operator is a gather of sender rows followed
by a segment sum into receivers (see :mod:`core.ops`). Entries with ``i == j`` are the node's own term
and cost no communication.

Shift operators (docs/design.md, section 2): adjacency A, Laplacian L = D - A, normalized adjacency
D^-1/2 A D^-1/2 and normalized Laplacian I - D^-1/2 A D^-1/2, where D is the weighted degree and
D^-1/2 is taken as 0 for an isolated node. Consensus weights: Metropolis-Hastings (eq. 16) and the
paper authors' Laplacian mixing I - beta (D - A) (docs/design.md, section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SHIFT_OPERATORS = ("adjacency", "laplacian", "normalized_adjacency", "normalized_laplacian")
MIXING_RULES = ("mh", "laplacian")


class GraphError(ValueError):
    """Raised for input that does not describe a valid undirected, non-negatively weighted graph."""


@dataclass(frozen=True)
class SparseOperator:
    """A |V| x |V| matrix M stored as entries (rows[k], cols[k], values[k]).

    ``(M x)_i = sum_k [rows[k] == i] values[k] x_{cols[k]}``: node ``cols[k]`` sends, node ``rows[k]``
    receives. Entries are sorted by row, then column. ``values`` has shape (nnz,) or, for an operator
    whose weights change per sample on a fixed sparsity pattern, (B, nnz).
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    num_nodes: int

    @property
    def nnz(self) -> int:
        return int(self.rows.shape[0])

    @property
    def off_diagonal(self) -> np.ndarray:
        """Boolean mask of the entries that need a message (sender differs from receiver)."""
        return self.rows != self.cols

    def diagonal(self) -> np.ndarray:
        """The diagonal M_ii, shape (|V|,) or (B, |V|) for per-sample values."""
        on_diag = ~self.off_diagonal
        out = np.zeros(self.values.shape[:-1] + (self.num_nodes,), dtype=self.values.dtype)
        out[..., self.rows[on_diag]] = self.values[..., on_diag]
        return out

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.values.shape[:-1] + (self.num_nodes, self.num_nodes), dtype=self.values.dtype)
        out[..., self.rows, self.cols] = self.values
        return out

    def with_values(self, values: np.ndarray) -> SparseOperator:
        """Same sparsity pattern, new values of shape (nnz,) or (B, nnz)."""
        values = np.asarray(values)
        if values.shape[-1:] != (self.nnz,):
            raise GraphError(f"operator values must end with dimension nnz={self.nnz}, got shape {values.shape}")
        return SparseOperator(self.rows, self.cols, values, self.num_nodes)


class Graph:
    """An undirected graph on nodes 0..|V|-1 with non-negative edge weights and no self-loops.

    Construct it with :meth:`from_dense`, :meth:`from_sparse`, :meth:`from_networkx` or
    :meth:`from_edge_list`; each validates its input and drops self-loops.

    Attributes:
        num_nodes: |V|.
        senders, receivers: int32 arrays of the directed edge list (each undirected edge appears in
            both directions), sorted by receiver then sender.
        weights: float64 edge weights aligned with ``senders``/``receivers``.
    """

    def __init__(self, num_nodes: int, senders: np.ndarray, receivers: np.ndarray, weights: np.ndarray):
        order = np.lexsort((senders, receivers))
        self.num_nodes = int(num_nodes)
        self.senders = np.asarray(senders, dtype=np.int32)[order]
        self.receivers = np.asarray(receivers, dtype=np.int32)[order]
        self.weights = np.asarray(weights, dtype=np.float64)[order]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, adjacency, *, atol: float = 0.0) -> Graph:
        """From a dense symmetric |V| x |V| weight matrix (zero = no edge). The diagonal is dropped.

        ``atol``: how far A may be from A^T; such a nearly symmetric A is symmetrised, (A + A^T) / 2, so that the
        graph's operators are symmetric."""
        a = _as_real_matrix(adjacency)
        if not np.allclose(a, a.T, rtol=0.0, atol=atol):
            i, j = np.argwhere(~np.isclose(a, a.T, rtol=0.0, atol=atol))[0]
            raise GraphError(
                f"adjacency must be symmetric (undirected graph): A[{i},{j}]={a[i, j]} but A[{j},{i}]={a[j, i]}"
            )
        a = (a + a.T) / 2 if atol else a
        np.fill_diagonal(a, 0.0)
        receivers, senders = np.nonzero(a)
        return cls(a.shape[0], senders, receivers, a[receivers, senders])

    @classmethod
    def from_sparse(cls, adjacency, *, atol: float = 0.0) -> Graph:
        """From a SciPy sparse symmetric weight matrix (duplicate entries are summed, the diagonal is dropped;
        with ``atol`` > 0 a nearly symmetric matrix is symmetrised as in :meth:`from_dense`)."""
        if not sp.issparse(adjacency):
            raise GraphError(f"expected a scipy.sparse matrix, got {type(adjacency).__name__}")
        m = sp.coo_matrix(adjacency)
        if m.shape[0] != m.shape[1]:
            raise GraphError(f"adjacency must be square, got shape {m.shape}")
        if m.shape[0] == 0:
            raise GraphError("graph has no nodes")
        # duplicates summed before the check: COO input may hold an entry in parts (networkx writes a self-loop
        # as parts that include a negative one)
        m = sp.coo_matrix(sp.csr_matrix(m, dtype=np.float64))
        _check_values(m.data)
        m.eliminate_zeros()
        diff = abs(m - m.T)
        if diff.nnz and diff.max() > atol:
            r, c = sp.find(diff > atol)[:2]
            raise GraphError(f"adjacency must be symmetric (undirected graph): entry ({r[0]},{c[0]}) differs")
        if atol and diff.nnz:
            m = sp.coo_matrix((m + m.T) / 2)
        keep = m.row != m.col
        return cls(m.shape[0], m.col[keep], m.row[keep], m.data[keep])

    @classmethod
    def from_networkx(cls, graph, weight: str | None = "weight") -> Graph:
        """From an undirected networkx graph; nodes are numbered in ``graph.nodes`` order.

        Edges without the ``weight`` attribute (or all edges, with ``weight=None``) get weight 1.
        """
        import networkx as nx

        if graph.is_directed():
            raise GraphError("expected an undirected networkx graph, got a directed one")
        if graph.number_of_nodes() == 0:
            raise GraphError("graph has no nodes")
        m = nx.to_scipy_sparse_array(graph, weight=weight, format="coo", dtype=np.float64)
        return cls.from_sparse(sp.coo_matrix(m))

    @classmethod
    def from_edge_list(cls, edges, num_nodes: int, weights=None) -> Graph:
        """From undirected edges given once each, as an (E, 2) integer array, with optional weights."""
        if int(num_nodes) != num_nodes or num_nodes < 1:
            raise GraphError(f"num_nodes must be a positive integer, got {num_nodes!r}")
        e = np.asarray(edges)
        if e.size == 0:
            e = e.reshape(0, 2).astype(np.int64)  # [] is a float array
        if e.ndim != 2 or e.shape[1] != 2:
            raise GraphError(f"edges must have shape (E, 2), got {e.shape}")
        if not np.issubdtype(e.dtype, np.integer):
            raise GraphError(f"edge endpoints must be integers, got dtype {e.dtype}")
        if e.size and (e.min() < 0 or e.max() >= num_nodes):
            raise GraphError(f"edge endpoint out of range [0, {num_nodes - 1}]: {e.min()}..{e.max()}")
        w = np.ones(len(e)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(e),):
            raise GraphError(f"weights must have shape ({len(e)},), got {w.shape}")
        _check_values(w)
        keep = e[:, 0] != e[:, 1]
        e, w = e[keep], w[keep]
        pairs = np.sort(e, axis=1)
        if len(np.unique(pairs, axis=0)) != len(pairs):
            raise GraphError("edge list contains the same undirected edge more than once")
        nz = w != 0
        e, w = e[nz], w[nz]
        senders = np.concatenate([e[:, 0], e[:, 1]])
        receivers = np.concatenate([e[:, 1], e[:, 0]])
        return cls(num_nodes, senders, receivers, np.concatenate([w, w]))

    # ------------------------------------------------------------------ structure
    @property
    def num_edges(self) -> int:
        """Number of undirected edges."""
        return int(self.senders.shape[0] // 2)

    @property
    def degree(self) -> np.ndarray:
        """Number of neighbours d(i) (unweighted), as used by eq. (16)."""
        return np.bincount(self.receivers, minlength=self.num_nodes).astype(np.int64)

    @property
    def weighted_degree(self) -> np.ndarray:
        """Sum of incident edge weights, the D of the Laplacian."""
        return np.bincount(self.receivers, weights=self.weights, minlength=self.num_nodes)

    def adjacency_dense(self) -> np.ndarray:
        a = np.zeros((self.num_nodes, self.num_nodes))
        a[self.receivers, self.senders] = self.weights
        return a

    def to_networkx(self):
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(self.num_nodes))
        up = self.senders < self.receivers
        g.add_weighted_edges_from(zip(self.senders[up].tolist(), self.receivers[up].tolist(), self.weights[up]))
        return g

    def is_connected(self) -> bool:
        return self.num_components() == 1

    def num_components(self) -> int:
        """Connected components (an isolated node is one): consensus mixes within each only (eq. (16))."""
        return int(sp.csgraph.connected_components(self._csr(), directed=False)[0])

    def component_sizes(self) -> np.ndarray:
        """Nodes per connected component, largest first."""
        labels = sp.csgraph.connected_components(self._csr(), directed=False)[1]
        return np.sort(np.bincount(labels, minlength=1))[::-1] if self.num_nodes else np.zeros(0, np.int64)

    def _csr(self):
        return sp.csr_matrix((self.weights, (self.receivers, self.senders)), shape=(self.num_nodes,) * 2)

    # ------------------------------------------------------------------ operators
    def _operator(self, off_values: np.ndarray, diag: np.ndarray | None) -> SparseOperator:
        """Operator with the edge pattern plus (where ``diag`` is given) every diagonal entry."""
        rows, cols, vals = self.receivers, self.senders, off_values
        if diag is not None:
            nodes = np.arange(self.num_nodes, dtype=np.int32)
            rows = np.concatenate([rows, nodes])
            cols = np.concatenate([cols, nodes])
            vals = np.concatenate([vals, diag])
        order = np.lexsort((cols, rows))
        return SparseOperator(rows[order], cols[order], vals[order], self.num_nodes)

    def shift_operator(self, kind: str = "normalized_laplacian") -> SparseOperator:
        """The graph shift operator S of eq. (9): one of :data:`SHIFT_OPERATORS`."""
        w = self.weights
        if kind == "adjacency":
            return self._operator(w, None)
        if kind == "laplacian":
            return self._operator(-w, self.weighted_degree)
        deg = self.weighted_degree
        inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
        norm = (inv_sqrt[self.receivers] * inv_sqrt[self.senders]) * w  # this order: exactly symmetric
        if kind == "normalized_adjacency":
            return self._operator(norm, None)
        if kind == "normalized_laplacian":
            return self._operator(-norm, np.ones(self.num_nodes))
        raise GraphError(f"unknown shift operator {kind!r}; choose one of {', '.join(SHIFT_OPERATORS)}")

    def metropolis_hastings(self) -> SparseOperator:
        """Metropolis-Hastings consensus weights W of eq. (16): symmetric and doubly stochastic."""
        d = self.degree
        off = 1.0 / (1.0 + np.maximum(d[self.receivers], d[self.senders]))
        self_weight = 1.0 - np.bincount(self.receivers, weights=off, minlength=self.num_nodes)
        return self._operator(off, self_weight)

    def mixing_matrix(self, rule: str = "mh", beta: float = 1e-3) -> SparseOperator:
        """Consensus weights: ``"mh"`` (eq. 16) or ``"laplacian"``: I - beta (D - A) on the raw adjacency.

        The Laplacian rule is the paper authors' published variant (docs/design.md, section 4); it is doubly
        stochastic too but mixes slowly for small beta.
        """
        if rule == "mh":
            return self.metropolis_hastings()
        if rule == "laplacian":
            if not beta > 0:
                raise GraphError(f"mixing beta must be positive, got {beta}")
            lap = self.shift_operator("laplacian")
            vals = -beta * lap.values
            vals[~lap.off_diagonal] += 1.0
            if np.any(vals < -1e-12):  # a negative self weight: W is no longer an averaging matrix
                largest = float(self.weighted_degree.max())
                raise GraphError(f"mixing beta {beta} is above 1 / max weighted degree = {1 / largest:.6g}: "
                                 "W = I - beta L would have a negative self weight")
            return lap.with_values(vals)
        raise GraphError(f"unknown mixing rule {rule!r}; choose one of {', '.join(MIXING_RULES)}")


def _check_values(values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise GraphError("edge weights must be finite (found NaN or inf)")
    if np.any(values < 0):
        raise GraphError(f"edge weights must be non-negative (found {values[values < 0].min()})")


def _as_real_matrix(adjacency) -> np.ndarray:
    if sp.issparse(adjacency):
        raise GraphError("got a scipy.sparse matrix: use Graph.from_sparse")
    a = np.asarray(adjacency)
    if a.dtype == bool:
        a = a.astype(np.float64)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise GraphError(f"adjacency must be real-valued (bool, int or float), got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise GraphError(f"adjacency must be a square 2-D matrix, got shape {a.shape}")
    if a.shape[0] == 0:
        raise GraphError("graph has no nodes")
    a = a.astype(np.float64)
    _check_values(a)
    return a
