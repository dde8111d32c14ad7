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
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import tensorflow as tf

from core.comm import CommSimulator, Message
from core.gcnn import Exchange
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


def stacked_parts(op: Operator, x: tf.Tensor) -> int:
    """How many parts x stacks on its node axis: x is (P*N, B, g), part-major (rows p*N .. p*N + N - 1)."""
    rows = int(x.shape[0])
    if rows % op.num_nodes:
        raise ValueError(f"{rows} feature rows are not a whole number of copies of the {op.num_nodes} nodes")
    return rows // op.num_nodes


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
        sim: the simulator that records the payloads (None: compute only, e.g. for evaluation).
        tape_backward: also record the ``bwd`` payload when GradientTape differentiates through a
            ``fwd`` exchange (distributed training: a network running that backward pass sends it).
        offset, part: as :meth:`core.comm.CommSimulator.view`: forward/backward payload l is recorded
            as index l + offset, tagged ``part`` (parallel parts share the round).
    """

    def __init__(self, sim: CommSimulator | None, tape_backward: bool = False, offset: int = 0, part: str = ""):
        self.sim, self.tape_backward, self.offset, self.part = sim, bool(tape_backward), int(offset), part

    def view(self, offset: int = 0, part: str = "") -> DenseExchange:
        """The same exchange, numbering payloads from ``offset`` and tagging them ``part``."""
        return DenseExchange(self.sim, self.tape_backward, self.offset + offset, part)

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        if message is None:
            raise ValueError("every exchange must name its payload, e.g. ('fwd', 1)")
        kind, index = message
        if kind not in ("fwd", "bwd"):
            raise ValueError(f"DenseExchange carries fwd/bwd payloads only, got {kind!r}")
        index += self.offset
        self._record(kind, index, stacked_parts(op, x) * int(x.shape[-1]))  # stacked parts travel together
        if self.tape_backward and kind == "fwd":
            return self._with_counted_backward(op, x, index)
        return dense_apply(op, x)

    def _record(self, kind: str, index: int, size: int) -> None:
        if self.sim is not None:  # batched: the B per-sample payloads of this exchange
            for b in range(self.sim.schedule.B):
                self.sim.record(Message(kind, b, index, self.part), size)

    def _with_counted_backward(self, op: Operator, x: tf.Tensor, index: int) -> tf.Tensor:
        """op @ x whose gradient op^T dy (eq. 14's kind of message) is recorded as ``bwd`` ``index``.

        The gradient is taken with respect to x only: operator weights are channel data, not trained.
        """

        @tf.custom_gradient
        def exchange(x):
            def backward(dy):
                self._record("bwd", index, stacked_parts(op, dy) * int(dy.shape[-1]))
                return dense_apply(op, dy, transpose=True)

            return dense_apply(op, x), backward

        return exchange(x)
