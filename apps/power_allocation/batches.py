"""Training mini-batches of App B streamed from the HDF5 file as the graphs G(t) of Algorithm 1.

In App B a mini-batch *is* a graph: the B channel matrices of one file batch (one layout) are the
per-sample shift S = H of the GCNNs, and the consensus graph of the batch comes from the same CSI
(docs/design.md, section 8). :class:`TrainingBatches` is therefore the sampler of
:class:`core.trainer.RandomGraphs`: each ``draw(rng)`` returns the :class:`core.trainer.GraphOps` of the
next file batch, with

- ``shift``: H as a per-sample complete operator (values (B, N*N), S_ij = H[b, i, j]; cut links are
  zero weights, so shapes never change and the compiled step never retraces);
- ``mixing``: the consensus weights W (eq. 16, or the authors' Laplacian rule) of the batch's
  consensus graph on the same complete pattern, or None for centralized optimizers.

Consensus graph. The dataset fixes the *layout* per batch (one tx/rx placement per file batch, by
construction of datasets/power_allocation.py), but not the thresholded interference graph: the
control-channel threshold applies to the faded amplitude, so about 2 % of the entries of H switch
between zero and non-zero from sample to sample within a batch (measured on the paper preset; e.g.
~292 bidirectional links per sample but only ~150 present in all 64). Algorithm 1 needs one graph per
mini-batch, and the eq. (17) schedule spreads the parameter message over all LB forward rounds, so a
link must be up throughout the batch: the consensus graph is the set of pairs {i, j} with H_ij != 0 and
H_ji != 0 in *every* sample of the batch. (The GCNN and WMMSE exchanges still use each sample's own H.)

Order and resume. The trainer draws whole epochs (one ``draw`` per mini-batch, ``num_batches`` per
epoch) and resumes at epoch boundaries, so the first draw of an epoch takes a permutation of the file
batches from the trainer's checkpointed generator: the batch order is a function of the trainer's
seed and state, and a resumed run sees the same batches as an uninterrupted one.

Memory and speed. A background thread reads up to ``prefetch`` batches ahead of the one being
trained on and turns them into tensors; memory holds those few batches only, whatever the file size.
The per-batch host work is kept small (the step itself takes ~2 ms): the index pattern is converted
once, and the consensus weights are computed densely (``mixing_values``; the sparse
:class:`core.graph.Graph` route costs ~0.5 ms per batch, and a test checks both agree).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from apps.power_allocation.exchange import complete_operator, complete_pattern
from core.graph import MIXING_RULES
from core.trainer import GraphOps
from datasets.power_allocation import PowerAllocationDataset


def consensus_adjacency(H: np.ndarray) -> np.ndarray:
    """Links {i, j} up in both directions in every sample of a batch H (B, N, N): a symmetric bool
    (N, N) adjacency without self-loops (see the module docstring)."""
    up = np.all(H != 0, axis=0)
    adjacency = up & up.T
    np.fill_diagonal(adjacency, False)
    return adjacency


def mixing_values(H: np.ndarray, rule: str, beta: float) -> np.ndarray:
    """The consensus weights of the batch's consensus graph, row-major on all N x N entries (W_ij at
    i*N + j; zero for pairs that are not linked), as :meth:`core.graph.Graph.mixing_matrix` defines them:

    - ``"mh"``, eq. (16): W_ij = 1 / (1 + max(d_i, d_j)) on links, W_ii = 1 - sum_{j != i} W_ij;
    - ``"laplacian"``: I - beta (D - A) on the unweighted adjacency.
    """
    adjacency = consensus_adjacency(H).astype(np.float64)
    degree = adjacency.sum(axis=1)
    if rule == "mh":
        off = adjacency / (1.0 + np.maximum.outer(degree, degree))
    elif rule == "laplacian":
        if not beta > 0:
            raise ValueError(f"mixing beta must be positive, got {beta}")
        off = beta * adjacency
    else:
        raise ValueError(f"unknown mixing rule {rule!r}; choose one of {', '.join(MIXING_RULES)}")
    return (off + np.diag(1.0 - off.sum(axis=1))).reshape(-1)


class TrainingBatches:
    """A :class:`core.trainer.RandomGraphs` sampler over the training split (module docstring).

    Args:
        dataset: the open dataset (kept open while drawing).
        dtype: float dtype of the operators.
        mixing: consensus rule (``"mh"`` or ``"laplacian"``), or None when no consensus is needed.
        mixing_beta: beta of the Laplacian rule.
        prefetch: batches read ahead by the background thread.
    """

    fixed = False

    def __init__(self, dataset: PowerAllocationDataset, dtype=tf.float32, mixing: str | None = "mh",
                 mixing_beta: float = 1e-3, prefetch: int = 128):
        self.dataset, self.dtype = dataset, tf.as_dtype(dtype)
        self.mixing, self.mixing_beta = mixing, float(mixing_beta)
        self.num_batches = dataset.num_batches("train")
        self.num_nodes = dataset.num_pairs
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="power-allocation-prefetch")
        self._pattern = tuple(tf.constant(a) for a in complete_pattern(self.num_nodes))  # converted once
        self._pending: deque[Future] = deque()
        self._order = np.arange(self.num_batches)
        self._cursor = 0

    def draw(self, rng: np.random.Generator) -> GraphOps:
        """The GraphOps of the next training batch (the first draw of an epoch shuffles the batches)."""
        if self._cursor == 0:
            self._order = rng.permutation(self.num_batches)
            self._pending = deque(self._submit(k) for k in range(min(self.prefetch, self.num_batches)))
        ahead = self._cursor + self.prefetch
        if ahead < self.num_batches:
            self._pending.append(self._submit(ahead))
        self._cursor = (self._cursor + 1) % self.num_batches
        values, mixing = self._pending.popleft().result()
        n, pattern = self.num_nodes, self._pattern
        shift = complete_operator(values, n, pattern)
        # observed: H as the WMMSE sums measure it (link failures cut the GCNN's messages, not the channel)
        return GraphOps(shift, None if mixing is None else complete_operator(mixing, n, pattern), observed=shift)

    def _submit(self, position: int) -> Future:
        return self._pool.submit(self._load, int(self._order[position]))

    def _load(self, index: int) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Read file batch ``index`` and make its operator values (runs in the prefetch thread)."""
        H = self.dataset.batch("train", index).H
        values = tf.constant(H.reshape(H.shape[0], -1), self.dtype)
        mixing = None
        if self.mixing is not None:
            mixing = tf.constant(mixing_values(H, self.mixing, self.mixing_beta), self.dtype)
        return values, mixing

    def close(self) -> None:
        """Stop the prefetch thread (pending reads are finished first)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
