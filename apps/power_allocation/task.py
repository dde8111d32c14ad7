"""UWMMSE power allocation as a :class:`core.trainer.Task` (unsupervised sum-rate maximisation).

The trainer runs Algorithm 1; this task supplies the local gradients of a mini-batch and the
evaluation. The mini-batch's channels arrive as the graph G(t) (``graph.shift`` is H, see
:mod:`apps.power_allocation.batches`), so the trainer's sample indices are not used.

Objective (docs/design.md, section 8 with the scaling of section 3): node i's loss on sample b is
l_i(b) = -rate_i(b). Centralized optimizers get the gradient of sum_b (1/N) sum_i l_i(b) for the shared
θ; distributed ones get, for every node's copy θ^i, the local gradient sum_b sum_j dl_j(b)/dθ^i
(eq. 8c) from one GradientTape over the whole pipeline (8 GCNNs and the unfolded WMMSE steps), whose
node average equals the centralized gradient. The paper's loss, -mean_b sum_i rate_i, is the same up
to the factor B/N, which Adam ignores.

Exchanges are counted through the trainer's simulator (forward rounds only for a centralized model;
forward and backward for distributed training), computed densely by
:class:`~apps.power_allocation.exchange.DenseExchange`.

Why D-Adam trails C-Adam here (measured on the paper dataset, seed 0). The local gradients are correct
(their node mean equals the centralized gradient to 3e-7) and the consensus graphs are sane (degrees
6-19, mean 12, connected, |lambda_2(W)| ~ 0.6; consensus error ~1e-4), but they are extremely uneven:
per-node norms span four orders of magnitude (from 0 to 30-50x the norm of the mean), the median over
coordinates of mean_i g_i^2 / (mean_i g_i)^2 is 20-50, and the sign of a coordinate agrees poorly
between nodes (cosine of mean_i sign(g_i) with sign(mean_i g_i): 0.24-0.62). DADAM moves the node
average by the mean of per-node normalised steps m_i / sqrt(v_i), in which a node whose rate barely
depends on a parameter weighs as much as the node that dominates it: a poor descent direction for the
sum-rate (over a longer horizon it keeps improving slowly: 18.21, 18.84 after 20, 50 epochs, C-Adam
19.48, 19.57). It is not a mixing problem: with exact averaging (W = 11^T / N in every batch) D-Adam reaches
16.72 after one epoch, as with the MH weights (C-Adam: 17.51); the authors' bias-corrected variant
also 16.73. ``--optimizer d-gc-adam`` (core.optimizers.GradientConsensusAdam: K rounds of gradient
consensus, then local Adam) normalises the mixed gradient instead: K = 5 gave 17.37, 17.95, 18.27,
18.46, 18.57, 18.62, 18.64, 18.64, 18.63, 18.63 over epochs 1-10 (C-Adam 17.51 ... 19.05, D-Adam
16.72 ... 17.61) with a consensus error of 2-4 % (parameters are not mixed, so copies drift); K = 1
gave 17.51 after one epoch but a consensus error of 33 %. ``--optimizer d-gcp-adam`` (the same optimizer
with ``mix_parameters=True``) mixes [θ^i, g_i] in the same K rounds (2|θ| floats per round instead of
|θ|, no extra round) and takes the Adam step from the mixed parameters, so the copies stay together:
K = 5 gave 17.51, 18.39, 18.71, 18.88, 18.98, 19.00, 18.97, 19.01, 19.03, 19.05 over epochs 1-10
(C-Adam 17.51, 18.39, 18.70, 18.87, 18.99, 18.96, 18.96, 19.00, 19.03, 19.05: within 0.04 at every
epoch; same alpha = 1e-2, B = 64, seed 0) with a consensus error of 7e-5 after epoch 1 and 4e-6 - 1e-5
afterwards, at 654 rounds and 8 800 floats per node and mini-batch (D-Adam: 649 and 6 929; D-GC-Adam
K = 5: 654 and 7 760). With K = 1 (650 rounds, 7 136 floats) it is slower early: 17.05, 17.60, 18.03,
18.32, 18.51, 18.66, 18.76, 18.85, 18.91, 18.95 (0.46-0.79 below C-Adam in epochs 1-5, within 0.3
from epoch 7, 0.10 after epoch 10; consensus error 2e-5 - 2e-4).

Metrics: ``train_sum_rate`` (the mean over the mini-batch of sum_i rate_i, in bit/s/Hz, measured
before the update) and ``test_sum_rate`` (the same on the whole test split). Distributed models are
evaluated as they run: every node with its own parameter copy.

MPI (docs/design.md, section 11; ``backend``: an :class:`apps.power_allocation.exchange.PairsBackend`): every
rank holds the whole mini-batch's H and W (each rank reads the HDF5 file) and computes the rows of its pairs
only, every exchange going over MPI (:class:`~apps.power_allocation.exchange.RankRowsExchange`; training and
evaluation on separate communicators so that their bytes are counted apart). theta is the rank's rows
(n_own, |theta|) for a distributed optimizer (their local gradients, eq. 8c, arrive through the reverse
exchanges), or the shared theta, of which each rank computes the gradient of its pairs' share
-sum_b sum_{i owned} rate_i(b) / N; the trainer sums the ranks' parts (an Allreduce). Metrics are reported
as N times the mean over the rank's pairs, so that the trainer's node-weighted mean over ranks
(:meth:`core.backend.MPIBackend.reduce_metrics`) is the sum over all pairs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from apps.power_allocation.exchange import DenseExchange, complete_sparse_operator
from apps.power_allocation.uwmmse import UWMMSE, Channel
from core.backend import LOCAL
from core.comm import CommSimulator, Schedule
from core.links import LinkContext
from core.optimizers import Optimizer
from core.trainer import GraphOps, Task


class PowerAllocationTask(Task):
    """UWMMSE on the power-allocation dataset.

    Args:
        model: the architecture.
        theta0: shared initial parameters (|θ|,).
        num_train_batches, batch_size: size of the training split in file batches and samples per batch.
        sigma2, pmax: noise power and power budget in W (from the dataset).
        test_H: the test split (T, B, N, N), held in memory for the evaluation.
        train_eval_H: training batches (T', B, N, N) for the evaluation of the initial model on the
            training split (the training split itself streams and is not held in memory).
        dtype: float dtype of parameters and data.
        bandwidth_hz: the channel bandwidth, for the sum-rates in Mbps (bit/s/Hz x bandwidth) beside
            those in bit/s/Hz.
        backend: :class:`core.backend.LocalBackend` (default: every pair here) or the
            :class:`~apps.power_allocation.exchange.PairsBackend` of an MPI run (module docstring).
    """

    train_metrics = ("train_sum_rate", "train_sum_rate_mbps")
    test_metrics = ("test_sum_rate", "test_sum_rate_mbps")
    primary = "test_sum_rate"
    maximize = frozenset({"train_sum_rate", "test_sum_rate", "train_sum_rate_mbps", "test_sum_rate_mbps"})

    def __init__(self, model: UWMMSE, theta0, num_train_batches: int, batch_size: int, sigma2: float, pmax: float,
                 test_H: np.ndarray, train_eval_H: np.ndarray, dtype=tf.float32, bandwidth_hz: float = 20e6,
                 backend=None):
        self.model, self.dtype = model, tf.as_dtype(dtype)
        self.backend = LOCAL if backend is None else backend
        self.theta0 = tf.convert_to_tensor(theta0, self.dtype)
        self.batch_size = int(batch_size)
        self.num_train = int(num_train_batches) * self.batch_size  # one mini-batch per file batch and epoch
        self.pairs = int(test_H.shape[-1])  # N
        # this process's pairs: all of them, or an MPI rank's (then node-means are scaled, module docstring)
        self._split = bool(self.backend.distributed)
        self.num_nodes = self.backend.num_owned if self._split else self.pairs
        self._owned = tf.constant(self.backend.owned, tf.int32) if self._split else None
        self._scale = self.pairs / self.num_nodes
        self.sigma2, self.pmax = float(sigma2), float(pmax)
        self.mbps_per_bit_s_hz = float(bandwidth_hz) / 1e6
        # variables, not constants: the compiled evaluation reads them instead of embedding megabytes
        self._eval_data = {
            "test": tf.Variable(np.asarray(test_H, self.dtype.as_numpy_dtype), trainable=False),
            "train": tf.Variable(np.asarray(train_eval_H, self.dtype.as_numpy_dtype), trainable=False),
        }
        self._pattern = None  # the complete pattern the test links are drawn on (test_links)
        self._lossy_eval = None  # (its setup, the compiled rate sum) of the evaluation over lossy links

    def upgrade_row(self, row: dict) -> dict:
        """Rows saved before the Mbps columns existed get them (bit/s/Hz x bandwidth)."""
        for split in ("train", "test"):
            if f"{split}_sum_rate_mbps" not in row and f"{split}_sum_rate" in row:
                row[f"{split}_sum_rate_mbps"] = row[f"{split}_sum_rate"] * self.mbps_per_bit_s_hz
        return row

    def initial_theta(self) -> tf.Tensor:
        return self.theta0

    def schedule(self, optimizer: Optimizer, batch_size: int) -> Schedule:
        return Schedule(optimizer.schedule, self.model.num_exchanges, batch_size, optimizer.consensus_rounds,
                        optimizer.payload_size(self.model.num_params))

    def _network(self, sim: CommSimulator | None = None, tape_backward: bool = False, train: bool = True):
        """The exchanges of one pipeline: dense on the whole network, or over MPI for this rank's pairs."""
        transport = None
        if self._split:
            transport = self.backend.transport if train else self.backend.eval_transport
        return DenseExchange(sim, tape_backward, transport=transport)

    def _over_all_pairs(self, total: tf.Tensor) -> tf.Tensor:
        """A sum over this process's pairs as the trainer reduces it: itself, or on an MPI rank N times the
        mean over its pairs (module docstring)."""
        return total * tf.constant(self._scale, total.dtype) if self._split else total

    def gradients(self, theta, indices, graph: GraphOps, optimizer: Optimizer, exchange):
        del indices  # the mini-batch is the graph's channel (module docstring)
        # the WMMSE sums measure the channel H (graph.observed); the GCNNs' messages travel on S (graph.shift:
        # H on the links up, under link failures)
        channel = Channel.from_shift(graph.shift if graph.observed is None else graph.observed, self._owned)
        channel = channel._replace(shift=graph.shift)
        distributed = not optimizer.centralized
        counter = exchange if isinstance(exchange, CommSimulator) else None
        network = self._network(counter, tape_backward=distributed)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            rates, _ = self.model.rates(theta, channel, self.sigma2, self.pmax, network)
            if distributed:
                objective = -tf.reduce_sum(rates)  # sum_b sum_j l_j(b): node i's copy gets eq. (8c)
            elif self._split:  # this rank's share sum_b (1/N) sum_{i owned} l_i(b); the ranks' parts are summed
                objective = -tf.reduce_sum(rates) / tf.constant(self.pairs, rates.dtype)
            else:
                objective = -tf.reduce_sum(tf.reduce_mean(rates, axis=1))  # sum_b (1/N) sum_i l_i(b)
        grad = tape.gradient(objective, theta)
        rate = self._over_all_pairs(tf.reduce_mean(tf.reduce_sum(rates, axis=1)))
        return grad, {"train_sum_rate": rate, "train_sum_rate_mbps": rate * self.mbps_per_bit_s_hz}

    def test_links(self):
        """The complete pattern of the N pairs and, under MPI, the evaluation's exchange: the links an evaluation
        over imperfect links draws on (core.trainer.Task.test_links; :meth:`_evaluate_under_loss`)."""
        if self._pattern is None:  # one object: the trainer keeps its layout
            self._pattern = complete_sparse_operator(self.pairs)
        return self._pattern, (self.backend.eval_transport if self._split else None)

    def evaluate(self, theta, graph: GraphOps | None, split: str) -> dict[str, tf.Tensor]:
        del graph  # evaluation uses the stored batches of the split
        if self.backend.under_loss and split == "test":
            return self._evaluate_under_loss(theta)
        data = self._eval_data[split]
        num_batches = data.shape[0]

        def body(k, total):
            rates, _ = self.model.rates(theta, Channel.from_matrices(data[k], self._owned), self.sigma2, self.pmax,
                                        self._network(train=False))
            return k + 1, total + self._over_all_pairs(tf.reduce_sum(rates))

        _, total = tf.while_loop(lambda k, _: k < num_batches, body, (tf.constant(0), tf.zeros([], self.dtype)))
        mean = total / tf.cast(num_batches * data.shape[1], self.dtype)
        return {f"{split}_sum_rate": mean, f"{split}_sum_rate_mbps": mean * self.mbps_per_bit_s_hz}

    def _evaluate_under_loss(self, theta) -> dict[str, tf.Tensor]:
        """The test sum-rate over imperfect links (the trainer's ``eval_under_loss``): test batch k loses the packets
        of the evaluation's mini-batch k (``backend.eval_transport.plans``) in the GCNNs' forward exchanges, and
        under link failures its GCNNs run on S = H on the links up; the WMMSE sums measure the whole H."""
        links = self.backend.eval_transport  # the trainer's evaluation links (core.trainer._EvaluationLinks)
        data = self._eval_data["test"]
        schedule = Schedule("forward", self.model.num_exchanges, int(data.shape[1]))
        lost, keep = links.plans(schedule, int(data.shape[0]))
        total = tf.zeros([], self.dtype)
        for k in range(data.shape[0]):
            up = tf.ones([self.pairs * self.pairs], tf.bool) if keep is None else tf.constant(keep[k])
            total += self._lossy_rate_sum(theta, data[k], lost[k], up, links)
        mean = total / tf.cast(data.shape[0] * data.shape[1], self.dtype)
        return {"test_sum_rate": mean, "test_sum_rate_mbps": mean * self.mbps_per_bit_s_hz}

    def _lossy_rate_sum(self, theta, H, lost, up, links) -> tf.Tensor:
        """The sum over a test batch and this process's pairs of the rates, over the links of ``lost`` and ``up``
        (compiled once: every evaluation's ``links`` has the run's policy, the kept layout and one transport)."""
        key = (links.policy, id(links.layout), links.transport)
        if self._lossy_eval is None or self._lossy_eval[0] != key:
            schedule = Schedule("forward", self.model.num_exchanges, int(H.shape[0]))

            @tf.function(autograph=False)
            def rate_sum(theta, H, lost, up):
                context = LinkContext(lost, links.policy, None, links.layout, link_major=True)
                network = DenseExchange(CommSimulator(schedule, links=context), transport=links.transport)
                channel = Channel.from_matrices(H, self._owned)
                values = channel.shift.values
                channel = channel._replace(shift=channel.shift._replace(
                    values=tf.where(up[None], values, tf.zeros_like(values))))  # the failed links carry nothing
                rates, _ = self.model.rates(theta, channel, self.sigma2, self.pmax, network)
                return self._over_all_pairs(tf.reduce_sum(rates))

            self._lossy_eval = (key, rate_sum)
        return self._lossy_eval[1](theta, H, lost, up)

    def powers(self, theta, split: str = "test") -> np.ndarray | None:
        """Allocated powers p (T, B, N) in W of theta on the stored batches of ``split``; under MPI
        (collective) gathered to rank 0 in pair order (None on the other ranks)."""
        data = self._eval_data[split]
        p = np.stack([self._powers_fn(theta, data[k]).numpy() for k in range(data.shape[0])])
        if not self._split:
            return p
        rows = self.backend.gather_rows(np.moveaxis(p, -1, 0))  # (N, T, B) on rank 0
        return None if rows is None else np.moveaxis(rows, 0, -1)

    @tf.function(autograph=False)
    def _powers_fn(self, theta, H):
        return self.model.rates(theta, Channel.from_matrices(H, self._owned), self.sigma2, self.pmax,
                                self._network(train=False))[1]
