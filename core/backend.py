"""Where the nodes of a run live: one process (:class:`LocalBackend`) or P MPI ranks (:class:`MPIBackend`).

The :class:`core.trainer.Trainer` and its tasks run the same program on both; the backend supplies what
differs (docs/design.md, section 11):

- ``owned``: the global ids of the nodes this process holds (all of them locally; local row k is node
  ``owned[k]``), :meth:`local_rows` slices node-indexed data to them, :meth:`local_graph` gives the
  operators to run on (the global ones, or this rank's :class:`core.distributed.views.OperatorView`);
- ``transport`` / ``eval_transport``: the :class:`core.gcnn.Exchange` that moves the data of training and
  of evaluation exchanges (``NO_COUNT`` locally; two :class:`core.distributed.exchange.MPIExchange` under
  MPI, so that the bytes of training are counted apart from those of evaluation).
  :class:`core.comm.CommSimulator` keeps counting logical rounds and floats and hands the data to the
  transport; ``under_loss`` is set while the trainer evaluates over imperfect links with its own
  ``eval_transport`` (:meth:`core.trainer.Task.test_links`);
- reductions inside compiled programs: :meth:`consensus_model`, :meth:`consensus_error`,
  :meth:`sum_gradient` (a centralized gradient is the sum of the ranks' parts, each the gradient of its
  nodes' losses divided by the global |V|);
- reductions in Python between calls: :meth:`reduce_metrics` (node-means weighted by owned nodes),
  :meth:`all_true` (the finite flags: one rank never stops while the others wait), :meth:`any_rank` (a stop
  request one rank got: all ranks stop at the same epoch boundary), :meth:`bcast`;
- a server on rank 0 (App C's centralized critic), inside compiled programs: :meth:`gather_to_root` (the
  nodes' rows to rank 0 in global node order), :meth:`scatter_from_root` (each node's row back), and
  :meth:`bcast_tensor`;
- checkpoints: :meth:`gather_rows` (per-node arrays to rank 0 in global node order) and
  :meth:`scatter_rows` (this rank's rows of a global array), so a run checkpointed under P ranks resumes
  under any other P, or in-process.

Sums over ranks are computed with ``Allgather`` and added in rank order on every rank, so all ranks hold
bit-identical results (a shared centralized theta never drifts apart between ranks).
"""

from __future__ import annotations

import os

import numpy as np

from core.gcnn import NO_COUNT

XLA_CPU_AUTOCLUSTER_FLAG = "--tf_xla_cpu_global_jit"


def enable_xla_autoclustering() -> None:
    """XLA for the MPI backend's compiled steps: TensorFlow's auto-clustering compiles each stretch of the step
    between two MPI exchanges (``tf.numpy_function`` calls, which XLA cannot compile, so the step as a whole
    runs without ``jit_compile``) as one XLA cluster. Measured on the D-SGD step at |V| = 10^4: 276 -> 181 ms
    on one rank, on par with the local backend's whole-step XLA (benchmarks/README.md).

    Process-wide: every ``tf.function`` traced afterwards is clustered (``jit_compile=False`` does not opt out),
    so call it once in an MPI rank's process, before its first XLA compilation (TensorFlow reads
    ``TF_XLA_FLAGS``, where the CPU needs ``--tf_xla_cpu_global_jit``, then; later the call has no effect on the
    CPU). Not for programs whose shapes change from call to call (each new shape compiles its clusters anew).
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if XLA_CPU_AUTOCLUSTER_FLAG not in flags.split():
        os.environ["TF_XLA_FLAGS"] = f"{flags} {XLA_CPU_AUTOCLUSTER_FLAG}".strip()
    import tensorflow as tf

    tf.config.optimizer.set_jit("autoclustering")


class LocalBackend:
    """All nodes in this process: today's behaviour (every method is the identity or the plain formula)."""

    distributed = False
    rank, size, is_root = 0, 1, True
    under_loss = False  # (module docstring)

    def __init__(self, num_nodes: int | None = None):
        self.num_nodes = None if num_nodes is None else int(num_nodes)
        self.transport = self.eval_transport = NO_COUNT

    def __reduce__(self):
        # rebuilt in a worker process with the NO_COUNT singleton (code tests `transport is NO_COUNT`)
        if type(self) is not LocalBackend:
            raise TypeError(f"a {type(self).__name__} holds MPI communicators and cannot be sent to another process")
        return LocalBackend, (self.num_nodes,)

    @property
    def owned(self) -> np.ndarray:
        return np.arange(self.num_nodes)

    @property
    def num_owned(self) -> int:
        return self.num_nodes

    def local_rows(self, array, axis: int = 0):
        return array

    def local_graph(self, ops):
        return ops

    def link_view(self, op):
        """The operator whose entries (global ids, in entry order) the link model indexes for ``op``: ``op``
        itself here; under MPI, the registered view a per-call :class:`core.distributed.exchange.TensorView`
        follows."""
        return op

    # compiled programs
    def consensus_model(self, theta):
        from core import replicas

        return replicas.consensus_model(theta)

    def consensus_error(self, theta):
        from core import replicas

        return replicas.consensus_error(theta)

    def sum_gradient(self, grad):
        return grad

    # Python, between calls
    def reduce_metrics(self, metrics: dict, exclude=()) -> dict:
        return dict(metrics)

    def all_true(self, flags) -> np.ndarray:
        return np.asarray(flags, bool)

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (collective under MPI): e.g. a stop request that one rank got."""
        return bool(flag)

    def bcast(self, obj):
        return obj

    def gather_rows(self, array: np.ndarray) -> np.ndarray:
        return array

    def scatter_rows(self, array: np.ndarray) -> np.ndarray:
        return array

    # a centralized component (a server) on rank 0, e.g. App C's critic: TensorFlow ops, collective under MPI
    def gather_to_root(self, x):
        """Every rank's rows (n_own, ...) as one (|V|, ...) tensor in global node order on rank 0 ((0, ...) on
        the others): what the nodes send the server."""
        return x

    def scatter_from_root(self, x):
        """This rank's rows (n_own, ...) of rank 0's (|V|, ...) tensor (the other ranks pass any placeholder of
        the same trailing shape): what the server sends each node."""
        return x

    def bcast_tensor(self, x):
        """Rank 0's tensor on every rank (the others pass a placeholder of the same shape and dtype)."""
        return x

    def counters(self) -> dict:
        return {}

    def reset_counters(self) -> None:
        """Start counting the wire anew (a group run trains its approaches one after the other on one backend,
        and each summary reports its own)."""

    def describe(self) -> dict:
        return {"backend": "local", "ranks": 1}


LOCAL = LocalBackend()


class MPIBackend(LocalBackend):
    """The nodes split over the ranks of ``comm`` by ``owner`` (construction is collective).

    Args:
        owner: (|V|,) owner array, the same on every rank.
        operators: the global operators the run exchanges along (e.g. S and W).
        comm: default ``MPI.COMM_WORLD``.
        debug: the exchanges' sequence-number checks (default ``FDTRAIN_MPI_DEBUG``).
        partition: the method's name, recorded by :meth:`describe`.
    """

    distributed = True

    def __init__(self, owner, operators, comm=None, *, debug: bool | None = None, partition: str = ""):
        from core.distributed.exchange import MPIExchange, mpi

        MPI = mpi()
        comm = MPI.COMM_WORLD if comm is None else comm
        self.MPI = MPI
        self.comm = comm.Dup()  # reductions and broadcasts apart from the exchanges' communicators
        if not isinstance(operators, (list, tuple)):
            operators = (operators,)
        self.operators = [op for op in operators if op is not None]
        self.transport = MPIExchange(owner, self.operators, comm, debug=debug)
        self.eval_transport = MPIExchange(owner, self.operators, comm, debug=debug)
        self.rank, self.size = self.transport.rank, self.transport.size
        self.is_root = self.rank == 0
        self.num_nodes = self.transport.num_nodes
        self.owner = self.transport.owner
        self._owned = self.transport.owned
        self.partition = partition
        self._views = {}

    @property
    def owned(self) -> np.ndarray:
        return self._owned

    @property
    def num_owned(self) -> int:
        return int(self._owned.size)

    def local_rows(self, array, axis: int = 0):
        return np.take(np.asarray(array), self._owned, axis=axis)

    def view(self, op):
        """This rank's view of a global operator (cached by identity)."""
        if op is None:
            return None
        key = id(op)
        if key not in self._views:
            self._views[key] = (op, self.transport.view(op))
        return self._views[key][1]

    def local_graph(self, ops):
        """This rank's views of the graph's exchange operators (S and W; ``observed`` stays whole)."""
        return ops._replace(shift=self.view(ops.shift), mixing=self.view(ops.mixing))

    def link_view(self, op):
        return None if op is None else self.transport.registered_view(op)

    # ------------------------------------------------------------------ reductions over ranks
    def _allgather(self, a: np.ndarray) -> np.ndarray:
        """(P, *a.shape): every rank's ``a`` in rank order."""
        a = np.asarray(a)
        everyone = np.empty((self.size, a.size), a.dtype)
        self.comm.Allgather(np.ascontiguousarray(a.reshape(-1)), everyone)
        return everyone.reshape((self.size,) + a.shape)

    def _gather_sum(self, a: np.ndarray) -> np.ndarray:
        everyone = self._allgather(a)
        out = everyone[0].copy()
        for r in range(1, self.size):  # in rank order on every rank: the same bits everywhere
            out = out + everyone[r]
        return out

    def _gather_max(self, a: np.ndarray) -> np.ndarray:
        return self._allgather(a).max(axis=0)

    def _tf(self, fn, x):
        import tensorflow as tf

        y = tf.numpy_function(lambda a: fn(np.asarray(a)).astype(a.dtype), [x], x.dtype, stateful=True,
                              name="mpi_allreduce")
        y.set_shape(x.shape)
        return y

    def consensus_model(self, theta):
        import tensorflow as tf

        return self._tf(self._gather_sum, tf.reduce_sum(theta, axis=0)) / tf.cast(self.num_nodes, theta.dtype)

    def consensus_error(self, theta):
        import tensorflow as tf

        mean = self.consensus_model(theta)
        local = tf.reduce_max(tf.norm(theta - mean[None], axis=1)) if self.num_owned else tf.zeros([], theta.dtype)
        spread = self._tf(self._gather_max, local)
        return spread / tf.maximum(tf.norm(mean), tf.constant(1e-30, theta.dtype))

    def sum_gradient(self, grad):
        return self._tf(self._gather_sum, grad)

    def reduce_metrics(self, metrics: dict, exclude=()) -> dict:
        keys = [k for k in metrics if k not in exclude]
        values = np.array([float(metrics[k]) * self.num_owned for k in keys] + [float(self.num_owned)], np.float64)
        total = self._gather_sum(values)
        out = dict(metrics)
        out.update({k: float(v / total[-1]) for k, v in zip(keys, total[:-1])})
        return out

    def all_true(self, flags) -> np.ndarray:
        flags = np.asarray(flags, bool)
        return self._gather_sum((~flags).astype(np.int64)) == 0

    def any_rank(self, flag: bool) -> bool:
        return bool(self._gather_sum(np.array([int(bool(flag))], np.int64))[0] > 0)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def gather_rows(self, array: np.ndarray):
        """(n_own, ...) rows of every rank as one (|V|, ...) array on rank 0 (None on the others)."""
        parts = self.comm.gather((self._owned, np.asarray(array)), root=0)
        if not self.is_root:
            return None
        first = parts[0][1]
        full = np.empty((self.num_nodes,) + first.shape[1:], first.dtype)
        for owned, rows in parts:
            full[owned] = rows
        return full

    def scatter_rows(self, array: np.ndarray) -> np.ndarray:
        """This rank's rows of a global (|V|, ...) array that every rank holds (e.g. after :meth:`bcast`)."""
        return np.asarray(array)[self._owned]

    def _collective_tf(self, fn, x, shape, name: str):
        import tensorflow as tf

        y = tf.numpy_function(lambda a: np.asarray(fn(np.asarray(a)), a.dtype), [x], x.dtype, stateful=True, name=name)
        y.set_shape(shape)
        return y

    def gather_to_root(self, x):
        def gather(a):
            full = self.gather_rows(a)
            return full if self.is_root else np.zeros((0,) + a.shape[1:], a.dtype)

        return self._collective_tf(gather, x, [self.num_nodes if self.is_root else 0] + x.shape[1:].as_list(),
                                   "mpi_gather_to_root")

    def scatter_from_root(self, x):
        def scatter(a):
            parts = [a[self.owner == r] for r in range(self.size)] if self.is_root else None
            return self.comm.scatter(parts, root=0)

        return self._collective_tf(scatter, x, [self.num_owned] + x.shape[1:].as_list(), "mpi_scatter_from_root")

    def bcast_tensor(self, x):
        return self._collective_tf(lambda a: self.comm.bcast(a if self.is_root else None, root=0), x, x.shape,
                                   "mpi_bcast")

    def counters(self) -> dict:
        """Per-rank (lists, rank order) counters of the training exchanges (collective)."""
        mine = self.transport.counters.as_dict()
        everyone = self.comm.allgather(mine)
        return {k: [c[k] for c in everyone] for k in mine}

    def reset_counters(self) -> None:
        for exchange in (self.transport, self.eval_transport):
            exchange.counters.reset()

    def describe(self) -> dict:
        from core.distributed.partition import partition_stats

        stats = partition_stats(self.owner, self.operators)
        return {"backend": "mpi", "ranks": self.size, "partition": self.partition, "edge_cut": stats.edge_cut,
                "num_edges": stats.num_edges, "boundary_nodes": stats.boundary_nodes,
                "part_sizes": stats.part_sizes.tolist()}
