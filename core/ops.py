"""Message-passing primitives in TensorFlow: applying a sparse operator to node-major features.

All distributed computations in ``core`` keep node features *node-major*, shape (|V|, B, g): node
axis first, then the B samples of a mini-batch, then features. In that layout a neighbour exchange
is a gather of the senders' rows followed by ``tf.math.unsorted_segment_sum`` into the receivers
(both compile under XLA, which has no sparse-dense matmul kernel), and the per-node products with
per-node parameter copies are one batched ``tf.linalg.matmul`` over the node axis, with no transposes.
On large fixed graphs an exchange can instead be one CSR sparse-dense product over the (|V|, B g) view
(:func:`csr_apply`, TensorFlow's CPU kernel, outside XLA; docs/design.md, section 2).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from core.graph import SparseOperator


class Operator(NamedTuple):
    """A :class:`core.graph.SparseOperator` as TensorFlow tensors (a valid ``tf.function`` argument).

    ``values`` has shape (nnz,) for one operator shared by all samples, or (B, nnz) for per-sample
    weights on a common sparsity pattern.
    """

    rows: tf.Tensor
    cols: tf.Tensor
    values: tf.Tensor
    num_nodes: int

    @property
    def per_sample(self) -> bool:
        return self.values.shape.rank == 2

    def diagonal(self) -> tf.Tensor:
        """M_ii as (|V|,) or, for per-sample values, node-major (|V|, B)."""
        on_diag = tf.cast(tf.equal(self.rows, self.cols), self.values.dtype)
        if self.per_sample:
            return tf.math.unsorted_segment_sum(tf.transpose(self.values) * on_diag[:, None], self.rows,
                                                self.num_nodes)
        return tf.math.unsorted_segment_sum(self.values * on_diag, self.rows, self.num_nodes)

    def transposed(self) -> Operator:
        return Operator(self.cols, self.rows, self.values, self.num_nodes)


def to_operator(op: SparseOperator | Operator, dtype=tf.float32) -> Operator:
    """Convert a NumPy :class:`SparseOperator` (or pass through an :class:`Operator`) to tensors."""
    if isinstance(op, Operator):
        return op
    return Operator(
        rows=tf.constant(op.rows, tf.int32),
        cols=tf.constant(op.cols, tf.int32),
        values=tf.constant(np.asarray(op.values), dtype),
        num_nodes=int(op.num_nodes),
    )


def apply_operator(op: Operator, x: tf.Tensor) -> tf.Tensor:
    """``y_i = sum_k [rows_k = i] values_k x_{cols_k}`` for node-major x of shape (|V|, B, g) or (|V|, g).

    For per-sample values (B, nnz), x must be (|V|, B, g).
    """
    messages = tf.gather(x, op.cols)  # (nnz, B, g): what each sender broadcast, seen per edge
    if op.per_sample:
        weights = tf.transpose(op.values)[:, :, None]  # (nnz, B, 1)
    else:
        weights = tf.reshape(op.values, [-1] + [1] * (x.shape.rank - 1))
    return tf.math.unsorted_segment_sum(messages * weights, op.rows, op.num_nodes)


# ------------------------------------------------------------------ compressed sparse row kernels (no XLA)
CSR_MIN_NODES = 1000
"""From this many nodes the trainer's ``kernel="auto"`` runs the exchanges of a fixed graph as CSR products
(:func:`csr_apply`) outside XLA instead of XLA's gather + segment sum (benchmarks/README.md,
``bench_scaling.py``: 1.6x-1.8x faster per D-SGD step at 10^3-10^5 nodes, slower at 10^2)."""


class CSRLayout(NamedTuple):
    """Where each entry of an operator goes in compressed-sparse-row order: ``order`` sorts its entries by
    (row, col), ``order_t`` by (col, row) (its transpose's rows). Computed once per pattern in NumPy; the CSR
    matrices are then built from the operator's own values inside the program (:func:`csr_apply`), so an
    operator with other values on the same pattern (e.g. S restricted to surviving links) uses it too."""

    order: tf.Tensor
    order_t: tf.Tensor
    num_rows: int
    num_cols: int


def csr_layout(op: SparseOperator | Operator, num_cols: int | None = None) -> CSRLayout | None:
    """The :class:`CSRLayout` of an operator shared by all samples (eager; NumPy or concrete tensors), square
    (|V| x |V|) or with ``num_cols`` columns (an MPI rank's owned rows x [owned; ghost] columns); None for
    per-sample values or a pattern that repeats an entry (the CSR kernel needs each (row, col) once)."""
    rows, cols, values = (np.asarray(tf.get_static_value(t) if isinstance(t, tf.Tensor) else t)
                          for t in (op.rows, op.cols, op.values))
    if values.ndim != 1:
        return None
    n_rows = int(op.num_nodes)
    n_cols = n_rows if num_cols is None else int(num_cols)
    key = rows.astype(np.int64) * n_cols + cols
    if np.unique(key).size != key.size:
        return None
    with tf.init_scope():  # eager constants even when first asked for while tracing
        return CSRLayout(tf.constant(np.argsort(key, kind="stable"), tf.int64),
                         tf.constant(np.argsort(cols.astype(np.int64) * n_rows + rows, kind="stable"), tf.int64),
                         n_rows, n_cols)


def _csr_matrix(rows: tf.Tensor, cols: tf.Tensor, values: tf.Tensor, order: tf.Tensor, shape) -> tf.Tensor:
    indices = tf.stack([tf.gather(tf.cast(rows, tf.int64), order), tf.gather(tf.cast(cols, tf.int64), order)], 1)
    return tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=indices, values=tf.gather(values, order),
                                                    dense_shape=tf.constant(shape, tf.int64))


def _csr_product(matrix: tf.Tensor, x: tf.Tensor, num_rows: int) -> tf.Tensor:
    shape = tf.shape(x)
    y = tf.raw_ops.SparseMatrixMatMul(a=matrix, b=tf.reshape(x, [shape[0], -1]))  # (rows, B g): one product
    return tf.reshape(y, tf.concat([[num_rows], shape[1:]], 0))


def csr_apply(op: Operator, layout: CSRLayout, x: tf.Tensor, transposed: bool = False) -> tf.Tensor:
    """``apply_operator(op, x)`` (``op.transposed()`` with ``transposed``) as one CSR sparse-dense product,
    TensorFlow's CPU kernel (not XLA-compilable): x (|V|, ...) is viewed as (|V|, B g), so one product serves
    every sample and feature. The CSR matrix is built from ``op``'s values with ``layout``; the gradient is
    the product with the transpose. Equal to :func:`apply_operator` up to the order of the sums."""
    rows, cols = (op.cols, op.rows) if transposed else (op.rows, op.cols)
    order, order_t = (layout.order_t, layout.order) if transposed else (layout.order, layout.order_t)
    shape = (layout.num_cols, layout.num_rows) if transposed else (layout.num_rows, layout.num_cols)

    @tf.custom_gradient
    def product(x):
        def grad(dy):
            return _csr_product(_csr_matrix(cols, rows, op.values, order_t, shape[::-1]), dy, shape[1])

        return _csr_product(_csr_matrix(rows, cols, op.values, order, shape), x, shape[0]), grad

    return product(x)


class CSRKernels:
    """CSR layouts of a graph's operators, found by the identity of their index tensors (as traced): an
    operator with the rows and cols of a registered one (any values), or its transpose (rows and cols
    swapped). Others fall back to :func:`apply_operator`."""

    def __init__(self, layouts: list[tuple[Operator, CSRLayout]]):
        self._layouts = [(op, lay) for op, lay in layouts if op is not None and lay is not None]

    def __bool__(self) -> bool:
        return bool(self._layouts)

    def find(self, op) -> tuple[CSRLayout, bool] | None:
        """(layout, transposed) of ``op``, or None."""
        rows, cols = getattr(op, "rows", None), getattr(op, "cols", None)
        if getattr(op, "per_sample", True) or rows is None:
            return None
        for base, layout in self._layouts:
            if rows is base.rows and cols is base.cols:
                return layout, False
            if rows is base.cols and cols is base.rows:
                return layout, True
        return None

    def apply(self, op, x: tf.Tensor) -> tf.Tensor:
        """op @ x by its CSR kernel if it has one, else :func:`apply_operator`."""
        found = self.find(op)
        if found is None:
            return apply_operator(op, x)
        layout, transposed = found
        # csr_apply(op, ...) with transposed: op's rows/cols are the base's swapped, so pass the base view
        base = op.transposed() if transposed else op
        return csr_apply(base, layout, x, transposed)
