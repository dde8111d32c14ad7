"""Message-passing primitives in TensorFlow: applying a sparse operator to node-major features.

All distributed computations in ``core`` keep node features *node-major*, shape (|V|, B, g): node
axis first, then the B samples of a mini-batch, then features. In that layout a neighbour exchange
is a gather of the senders' rows followed by ``tf.math.unsorted_segment_sum`` into the receivers
(both compile under XLA, which has no sparse-dense matmul kernel), and the per-node products with
per-node parameter copies are one batched ``tf.linalg.matmul`` over the node axis, with no transposes.
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
