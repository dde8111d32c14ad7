"""Neighbour exchanges of App B on the complete per-sample pattern, as dense products, counted.

Every operator of UWMMSE (the GCNN shift S = H, the two WMMSE sums, docs/design.md, section 8) has per-sample
weights on N x N entries: cut links (below the control-channel threshold, docs/design.md, section 7) are zero
weights, not missing entries, so shapes are fixed and nothing retraces. On that pattern the
gather + ``unsorted_segment_sum`` of :func:`core.ops.apply_operator` equals a batched dense product,
and XLA on CPU runs the product much faster than the scatter (a UWMMSE training step of B = 64,
N = 25 took 20 ms with gather + segment sum and 4 ms with dense products on this 2-core machine).

:class:`DenseExchange` therefore computes ``op @ x`` with ``tf.einsum`` and records what is sent
through a :class:`core.comm.CommSimulator`'s public ``record``, with the payload semantics of
``CommSimulator.propagate`` (one payload per sample and exchange, tagged with the pipeline ``part``;
with ``tape_backward`` the transposed exchange of the GradientTape backward pass is recorded as the
``bwd`` payload of the same index). Features of several parts may be stacked on the node axis
(``dense_apply``); one exchange then carries all of them, which is what bundling them in a round
means. tests/apps/power_allocation/test_uwmmse.py checks values, gradients and counts against the
simulator's own gather/segment-sum path.

Imperfect links (docs/design.md, sections 8 and 12). Under a simulator with a link context each exchange
takes the lost mask of its rounds from ``sim.lost_mask`` ((B, N*N) on the complete pattern: sample b's
round in row b; the tape backward's on the reverse links of the ``bwd`` rounds) and records its payloads as
``lossy_handled``. Stacked parts share one packet per link and round, so the (sample, entry) mask applies
to every part. ``zero`` and ``retransmit:R`` (what is still lost after the retransmissions counts as 0) zero
the lost weights and keep the dense product; ``stale`` goes through :func:`core.links.lossy_apply` (gather +
segment sum) with the parts as extra feature columns, so its slot ``(kind, index, part)`` holds (N*N, P*g).
A ``measurement`` exchange (the WMMSE interference and feedback sums of
:class:`apps.power_allocation.uwmmse.NetworkSums`: received powers and feedback that the radio measures on
the channel itself, not messages) is counted as before and never lost.

Under MPI (docs/design.md, section 11) the N pairs are split over the ranks by pair i: rank r holds the
rows of its pairs, and of the stacked copies p*N + i of the GCNNs (apps/power_allocation/uwmmse.py) those
of its pairs, part-major (p*n_own + k for its k-th pair). :class:`RankRowsExchange` is then what moves the
data of every exchange (``DenseExchange(..., transport=...)``, and the consensus rounds through the
trainer's simulator): the rows of the owned pairs go to every other rank in one ``Neighbor_alltoallv``
(on the complete pattern every rank neighbours every other), and each rank computes the rows of its pairs
with the owned rows of the operator, ``M[owned, :] @ x``, as a dense product. The transposed operator (the
backward pass) computes the owned rows' contributions to every column and sends the other ranks' parts back,
to be summed at their owner (the reverse exchange). Under packet loss (``zero`` and ``retransmit:R``) the lost
weights of the global operator are zeroed before its owned rows are taken; under ``stale`` each rank gathers the
whole network's rows and keeps the whole stale buffer (:meth:`DenseExchange._stale`); the simulator's lossy
consensus rounds come through :meth:`RankRowsExchange.propagate_with`. :class:`PairsBackend` is the
:class:`core.backend.MPIBackend` whose transports are these exchanges. The logical counts are recorded as
in-process (the simulator never sees a rank); the bytes really sent are the MPI exchange's counters.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import tensorflow as tf

from core.backend import MPIBackend
from core.comm import CommSimulator, Message
from core.gcnn import Exchange
from core.graph import SparseOperator
from core.links import lossy_apply
from core.ops import Operator


@lru_cache(maxsize=8)
def complete_pattern(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of all N x N entries in row-major order (receiver i = rows[k], sender j = cols[k])."""
    n = int(num_nodes)
    rows, cols = np.repeat(np.arange(n, dtype=np.int32), n), np.tile(np.arange(n, dtype=np.int32), n)
    rows.flags.writeable = cols.flags.writeable = False  # shared by every caller
    return rows, cols


def complete_operator(values: tf.Tensor, num_nodes: int, pattern=None) -> Operator:
    """An :class:`core.ops.Operator` on all N x N entries in row-major order: S_ij = values[..., i*N + j].

    ``values`` is (N*N,) for one operator or (B, N*N) per sample; e.g. ``tf.reshape(M, [B, N*N])`` for
    per-sample matrices M (B, N, N). The diagonal entries are each node's own term (no message).
    ``pattern`` may pass (rows, cols) tensors of :func:`complete_pattern` made once, to save converting
    them on every call.
    """
    n = int(num_nodes)
    if values.shape[-1] != n * n:
        raise ValueError(f"a complete operator on {n} nodes needs {n * n} values per sample, got {values.shape}")
    rows, cols = complete_pattern(n) if pattern is None else pattern
    return Operator(tf.convert_to_tensor(rows), tf.convert_to_tensor(cols), values, n)


def complete_sparse_operator(num_nodes: int) -> SparseOperator:
    """The complete pattern (all N x N entries, unit values) as a NumPy operator: what the MPI backend
    partitions and builds its communicator and exchange plans on."""
    rows, cols = complete_pattern(num_nodes)
    n = int(num_nodes)
    return SparseOperator(rows.astype(np.int64), cols.astype(np.int64), np.ones(n * n), n)


def stacked_parts(op: Operator, x: tf.Tensor, num_nodes: int | None = None) -> int:
    """How many parts x stacks on its node axis: x is (P*n, B, g), part-major (rows p*n .. p*n + n - 1),
    with n = ``num_nodes`` (default the operator's N; under MPI the rank's pairs)."""
    rows, n = int(x.shape[0]), op.num_nodes if num_nodes is None else int(num_nodes)
    if rows % n:
        raise ValueError(f"{rows} feature rows are not a whole number of copies of the {n} nodes")
    return rows // n


def dense_apply(op: Operator, x: tf.Tensor, transpose: bool = False) -> tf.Tensor:
    """``op @ x`` (or ``op^T @ x``) for a :func:`complete_operator` and node-major x (N, B, g).

    x may stack P parts on its node axis, (P*N, B, g) part-major: each part is multiplied by the same
    operator (a GCNN run on P copies of the node set, see apps/power_allocation/uwmmse.py).
    """
    n, parts = op.num_nodes, stacked_parts(op, x)
    x = tf.reshape(x, [parts, n, -1, x.shape[-1]])
    if op.per_sample:
        matrices = tf.reshape(op.values, [-1, n, n])
        y = tf.einsum("bji,pjbg->pibg" if transpose else "bij,pjbg->pibg", matrices, x)
    else:
        matrix = tf.reshape(op.values, [n, n])
        y = tf.einsum("ji,pjbg->pibg" if transpose else "ij,pjbg->pibg", matrix, x)
    return tf.reshape(y, [parts * n, -1, y.shape[-1]])


class DenseExchange(Exchange):
    """Computes exchanges on :func:`complete_operator` operators densely; counts them on ``sim``.

    Args:
        sim: the simulator that records the payloads (None: compute only, e.g. for evaluation); under its link
            context (``sim.lossy``) the exchanges lose the packets of its plan (module docstring).
        tape_backward: also record the ``bwd`` payload when GradientTape differentiates through a
            ``fwd`` exchange (distributed training: a network running that backward pass sends it).
        offset, part: as :meth:`core.comm.CommSimulator.view`: forward/backward payload l is recorded
            as index l + offset, tagged ``part`` (parallel parts share the round).
        transport: what moves and computes the data: None for :func:`dense_apply` on the whole network,
            or a :class:`RankRowsExchange` for the pairs of this MPI rank (features hold its rows only).
        measurement: the payloads are physical measurements of the channel (the WMMSE sums), not messages:
            counted in their rounds, never lost.
    """

    def __init__(self, sim: CommSimulator | None, tape_backward: bool = False, offset: int = 0, part: str = "",
                 transport: RankRowsExchange | None = None, measurement: bool = False):
        self.sim, self.tape_backward, self.offset, self.part = sim, bool(tape_backward), int(offset), part
        self.transport, self.measurement = transport, bool(measurement)

    def view(self, offset: int = 0, part: str = "", measurement: bool | None = None) -> DenseExchange:
        """The same exchange, numbering payloads from ``offset``, tagging them ``part`` (and, with
        ``measurement``, as physical measurements that are never lost)."""
        return DenseExchange(self.sim, self.tape_backward, self.offset + offset, part, self.transport,
                             self.measurement if measurement is None else measurement)

    @property
    def lossy(self) -> bool:
        """Whether this exchange loses packets: messages under a simulator with a link context."""
        return self.sim is not None and self.sim.lossy and not self.measurement

    def _apply(self, op: Operator, x: tf.Tensor, transpose: bool = False) -> tf.Tensor:
        if self.transport is None:
            return dense_apply(op, x, transpose)
        return self.transport.apply(op, x, transpose)

    def _parts(self, op: Operator, x: tf.Tensor) -> int:
        return stacked_parts(op, x, None if self.transport is None else self.transport.num_owned)

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        if message is None:
            raise ValueError("every exchange must name its payload, e.g. ('fwd', 1)")
        kind, index = message
        if kind not in ("fwd", "bwd"):
            raise ValueError(f"DenseExchange carries fwd/bwd payloads only, got {kind!r}")
        index += self.offset
        self._record(kind, index, self._parts(op, x) * int(x.shape[-1]))  # stacked parts travel together
        if self.tape_backward and kind == "fwd":
            return self._with_counted_backward(op, x, index)
        return self._exchange(op, x, kind, index)

    def _record(self, kind: str, index: int, size: int) -> None:
        if self.sim is not None:  # batched: the B per-sample payloads of this exchange
            # under a link context: the loss is applied by _exchange, or deliberately not (a measurement)
            for b in range(self.sim.schedule.B):
                self.sim.record(Message(kind, b, index, self.part), size, lossy_handled=self.sim.lossy)

    def _exchange(self, op: Operator, x: tf.Tensor, kind: str, index: int, transpose: bool = False) -> tf.Tensor:
        """``op @ x`` (``op^T @ x`` with ``transpose``), under loss without the packets of its rounds."""
        if not self.lossy:
            return self._apply(op, x, transpose)
        sent = op.transposed() if transpose else op  # the backward travels on the reverse links
        mask = self.sim.lost_mask(sent, (kind, index))  # (B, N*N), aligned with op's entries either way
        policy = self.sim.links.policy
        if policy.kind == "stale":
            return self._stale(sent, x, mask, (kind, index, self.part))
        # zero, or retransmit:R (the mask is what is still lost): a lost term counts as 0
        values = op.values if op.per_sample else tf.broadcast_to(op.values[None, :], tf.shape(mask))
        return self._apply(op._replace(values=tf.where(mask, tf.zeros_like(values), values)), x, transpose)

    def _stale(self, sent: Operator, x: tf.Tensor, mask: tf.Tensor, slot) -> tf.Tensor:
        """:func:`core.links.lossy_apply` under ``stale`` with the P stacked parts as feature columns: one packet
        per link and round carries every part, so the (sample, entry) mask loses all of them together.

        Under MPI every rank gathers the whole network's rows and runs this on the global operator and stale
        buffer, keeping its own rows: every rank then holds the same buffer (the same bits; the in-process one to
        rounding), at N / n_own times the arithmetic of its rows (App B's N is small)."""
        if self.transport is not None:
            return self.transport.own_rows(self._stale_on(sent, self.transport.gathered(x), mask, slot))
        return self._stale_on(sent, x, mask, slot)

    def _stale_on(self, sent: Operator, x: tf.Tensor, mask: tf.Tensor, slot) -> tf.Tensor:
        n = sent.num_nodes
        parts, g = stacked_parts(sent, x), int(x.shape[-1])
        columns = tf.reshape(tf.transpose(tf.reshape(x, [parts, n, -1, g]), [1, 2, 0, 3]), [n, -1, parts * g])
        y = lossy_apply(sent, columns, mask, self.sim.links.policy, self.sim.links.stale, slot)
        return tf.reshape(tf.transpose(tf.reshape(y, [n, -1, parts, g]), [2, 0, 1, 3]), [parts * n, -1, g])

    def _with_counted_backward(self, op: Operator, x: tf.Tensor, index: int) -> tf.Tensor:
        """op @ x whose gradient op^T dy (eq. 14's kind of message) is recorded as ``bwd`` ``index``.

        The gradient is taken with respect to x only: operator weights are channel data, not trained.
        Under loss both directions lose their packets, the backward those of its ``bwd`` rounds.
        """

        @tf.custom_gradient
        def exchange(x):
            def backward(dy):
                self._record("bwd", index, self._parts(op, dy) * int(dy.shape[-1]))
                return self._exchange(op, dy, "bwd", index, transpose=True)

            return self._exchange(op, x, "fwd", index), backward

        return exchange(x)


class RankRowsExchange(Exchange):
    """``op @ x`` (and ``op^T @ x``) for this MPI rank's pairs, on :func:`complete_operator` operators.

    Args:
        mpi: a :class:`core.distributed.exchange.MPIExchange` built (collectively) on
            :func:`complete_sparse_operator` and the owner array of the pairs: its communicator links
            every rank with every other, and it counts the bytes and messages really sent.

    Operators are the global ones (every rank holds the whole mini-batch's H and W): values (N*N,) or
    per sample (B, N*N), row-major (:func:`complete_operator`; not ``Operator.transposed()``: ask for the
    transpose with ``transpose=True``). Features are this rank's rows: (n_own, ...) for one part, or
    (P*n_own, B, g) for P stacked parts, part-major (module docstring).

    Forward, ``(M x)[owned]``: send the owned rows to every other rank, receive theirs (the ghost rows),
    reorder them into global order, multiply by ``M[owned, :]`` (per sample: ``einsum("bij,jpbg->pibg")``,
    the product :func:`dense_apply` computes on the whole network). Transposed, ``(M^T x)[owned]``:
    ``M[owned, :]^T x_own`` gives this rank's contributions to every pair's row; the other ranks' parts
    go back to them (the reverse exchange) and each rank adds what it receives to its own part. Each
    direction is a ``tf.custom_gradient`` whose backward is the other one, so ``tf.GradientTape``
    through an exchange is exact (the reverse exchange is the adjoint of the forward one); the operator's
    values get no gradient (channel data). No XLA on this path (the communication is a
    ``tf.numpy_function``).
    """

    def __init__(self, mpi):
        self.mpi = mpi
        self.num_nodes = n = int(mpi.num_nodes)
        self.plan = plan = mpi.view(complete_sparse_operator(n))
        self.owned = plan.owned
        self.num_owned = plan.num_owned
        if plan.num_owned + plan.num_ghosts != n:  # a rank without pairs would read nothing
            raise ValueError(f"rank {plan.rank} owns {plan.num_owned} of {n} pairs and reads {plan.num_ghosts} "
                             f"others: every rank must own at least one pair")
        extended = np.concatenate([plan.owned, plan.ghosts])  # the global pair of each extended row
        with tf.init_scope():  # eager constants, even when first used while tracing a tf.function
            self._owned = tf.constant(plan.owned, tf.int32)
            self._send = tf.constant(plan.send_index, tf.int32)
            self._extended = tf.constant(extended, tf.int32)  # global order -> extended rows
            self._to_global = tf.constant(np.argsort(extended), tf.int32)  # extended rows -> global order

    @property
    def counters(self):
        """What this rank really sent and received (:class:`core.distributed.exchange.ExchangeCounters`)."""
        return self.mpi.counters

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        del message  # the logical counts are the simulator's; this class moves the data
        return self.apply(op, x)

    def propagate_with(self, op: Operator, x: tf.Tensor, local) -> tf.Tensor:
        """``(M x)[owned]`` where ``local(operator, block)`` does the arithmetic on the whole network's operator:
        what :class:`core.comm.CommSimulator` calls for an exchange under a link context (the consensus rounds of
        eqs. 15 and 17; its lost masks are on the global entries of ``op``, as the trainer draws them on every
        rank). Every rank's rows go to every other, then each rank applies ``local`` to the global operator and
        all N rows and keeps its own: N / n_own times the arithmetic of the rank's rows, a few thousand
        multiply-adds for App B's consensus payloads. Not differentiable (consensus rounds are not)."""
        n = self.num_nodes
        if op.num_nodes != n or op.values.shape[-1] != n * n:
            raise ValueError(f"RankRowsExchange needs complete operators on the {n} pairs (values (..., {n * n})), "
                             f"got {op.num_nodes} nodes and values {op.values.shape}")
        x = tf.convert_to_tensor(x)
        ghosts = self.mpi.communicate(self.plan, tf.gather(x, self._send))
        with tf.control_dependencies([ghosts]):  # the collective runs on every rank, even without ghosts
            full = tf.gather(tf.concat([x, ghosts], axis=0), self._to_global)  # (N, ...) in pair order
            return tf.gather(local(op, full), self._owned)

    def gathered(self, x: tf.Tensor) -> tf.Tensor:
        """Every pair's rows of part-major features: this rank's (parts * n_own, ...) in, (parts * N, ...) in pair
        order out, the other ranks' rows received in one exchange (not differentiable)."""
        rows = self._node_first(tf.convert_to_tensor(x))
        ghosts = self.mpi.communicate(self.plan, tf.gather(rows, self._send))
        with tf.control_dependencies([ghosts]):  # the collective runs on every rank, even without ghosts
            return self._part_major(tf.gather(tf.concat([rows, ghosts], axis=0), self._to_global))

    def own_rows(self, y: tf.Tensor) -> tf.Tensor:
        """This rank's rows (parts * n_own, ...) of part-major features of every pair (parts * N, ...)."""
        parts = int(y.shape[0]) // self.num_nodes
        return _merge_rows(tf.gather(_split_rows(y, parts, self.num_nodes), self._owned, axis=1))

    def allreduce_sum(self, value):
        """The sum over ranks (the trainer's link counts; :class:`core.distributed.exchange.MPIExchange`'s)."""
        return self.mpi.allreduce_sum(value)

    def allreduce_max(self, value):
        """The maximum over ranks (the trainer's extra rounds of retransmissions)."""
        return self.mpi.allreduce_max(value)

    def apply(self, op: Operator, x: tf.Tensor, transpose: bool = False) -> tf.Tensor:
        """``(M x)[owned]``, or ``(M^T x)[owned]`` with ``transpose`` (class docstring)."""
        n = self.num_nodes
        if op.num_nodes != n or op.values.shape[-1] != n * n:
            raise ValueError(f"RankRowsExchange needs complete operators on the {n} pairs (values (..., {n * n})), "
                             f"got {op.num_nodes} nodes and values {op.values.shape}")
        own_rows = tf.gather(tf.reshape(op.values, [-1, n, n] if op.per_sample else [n, n]), self._owned,
                             axis=-2)  # M[owned, :]: (B, n_own, N) or (n_own, N)
        return self._exchange(own_rows, tf.convert_to_tensor(x), bool(transpose))

    def _exchange(self, own_rows: tf.Tensor, x: tf.Tensor, transpose: bool) -> tf.Tensor:
        @tf.custom_gradient
        def exchange(x):
            y = self._reverse(own_rows, x) if transpose else self._forward(own_rows, x)
            return y, lambda dy: self._exchange(own_rows, dy, not transpose)

        return exchange(x)

    # node-first rows (n_own, parts, ...) <-> the part-major features (parts * n_own, ...)
    def _node_first(self, x: tf.Tensor) -> tf.Tensor:
        rows, n_own = int(x.shape[0]), self.num_owned
        if rows % n_own:
            raise ValueError(f"{rows} feature rows are not a whole number of copies of this rank's {n_own} pairs")
        x = _split_rows(x, rows // n_own, n_own)
        return tf.transpose(x, [1, 0, *range(2, x.shape.rank)])

    @staticmethod
    def _part_major(y: tf.Tensor) -> tf.Tensor:
        return _merge_rows(tf.transpose(y, [1, 0, *range(2, y.shape.rank)]))

    def _forward(self, own_rows: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        rows = self._node_first(x)
        ghosts = self.mpi.communicate(self.plan, tf.gather(rows, self._send))
        with tf.control_dependencies([ghosts]):  # the collective runs on every rank, even without ghosts
            full = tf.gather(tf.concat([rows, ghosts], axis=0), self._to_global)  # (N, parts, ...) in pair order
            if own_rows.shape.rank == 3:  # per sample: full is (N, parts, B, g)
                return _merge_rows(tf.einsum("bij,jpbg->pibg", own_rows, full))
            return self._part_major(tf.tensordot(own_rows, full, axes=[[1], [0]]))

    def _reverse(self, own_rows: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        rows = self._node_first(x)
        if own_rows.shape.rank == 3:  # contributions M_ij x_i of the owned i to every pair j: (N, parts, B, g)
            contributions = tf.einsum("bij,ipbg->jpbg", own_rows, rows)
        else:
            contributions = tf.tensordot(own_rows, rows, axes=[[0], [0]])
        extended = tf.gather(contributions, self._extended)  # owned pairs first, then the others' (by rank)
        n_own = self.num_owned
        back = self.mpi.communicate(self.plan, extended[n_own:], reverse=True)
        with tf.control_dependencies([back]):  # the collective runs on every rank, even without ghosts
            y = extended[:n_own] + tf.math.unsorted_segment_sum(back, self._send, n_own)
        return self._part_major(y)


def _split_rows(x: tf.Tensor, a: int, b: int) -> tf.Tensor:
    """(a*b, ...) -> (a, b, ...), keeping the static trailing shape (some of it may be unknown)."""
    y = tf.reshape(x, tf.concat([[a, b], tf.shape(x)[1:]], axis=0))
    y.set_shape([a, b, *x.shape[1:]])
    return y


def _merge_rows(y: tf.Tensor) -> tf.Tensor:
    """(a, b, ...) -> (a*b, ...), keeping the static trailing shape."""
    a, b = y.shape[0], y.shape[1]
    x = tf.reshape(y, tf.concat([[-1], tf.shape(y)[2:]], axis=0))
    x.set_shape([a * b if a is not None and b is not None else None, *y.shape[2:]])
    return x


class PairsBackend(MPIBackend):
    """The :class:`core.backend.MPIBackend` of App B: the pairs split over the ranks by ``owner`` (N,),
    on the complete pattern, with :class:`RankRowsExchange` transports for training and evaluation
    (construction is collective)."""

    def __init__(self, owner, comm=None, *, debug: bool | None = None, partition: str = ""):
        owner = np.asarray(owner)
        super().__init__(owner, [complete_sparse_operator(owner.size)], comm, debug=debug, partition=partition)
        self.transport = RankRowsExchange(self.transport)
        self.eval_transport = RankRowsExchange(self.eval_transport)

    def link_view(self, op):
        """``op`` itself: every rank runs on the global operators (the link model draws their entries' links)."""
        return op
