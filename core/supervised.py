"""Supervised node-level learning with a GCNN on a fixed data set: a :class:`core.trainer.Task`.

The training set (X(n), y(n)), n = 1..N, lives in memory as sample-major tensors (N, |V|, g). A
mini-batch is a set of indices into it; its local gradients come from the explicit forward pass and
local backpropagation of :class:`core.executors.BatchedExecutor` (eqs. 10-14), with every exchange
counted, or, for a centralized optimizer, from the gradient of sum_b mean_i l_i(b) (docs/design.md, section 3).

Metrics: ``train_<loss>`` and ``test_<loss>``, the node- and sample-mean of the per-node loss l_i
(``mse`` for the squared error of eq. 6c). For per-node parameter copies every node predicts with its
own copy (and its neighbours' messages come from theirs): distributed inference, eq. (10).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from core.backend import LOCAL
from core.comm import Schedule
from core.executors import BatchedExecutor, check_batch, squared_error, unflatten
from core.gcnn import GCNN
from core.optimizers import Optimizer
from core.trainer import GraphOps, Task


def _check_data(gcnn: GCNN, tensors: dict, loss: Callable) -> None:
    """A ValueError naming the array that does not fit (shapes as :func:`core.executors.check_batch`) or holds
    NaN or inf (which would otherwise surface as a diverged model)."""
    nodes = tensors["x_train"].shape[1] if tensors["x_train"].shape.rank == 3 else None
    for split in ("train", "test"):
        try:
            check_batch(gcnn, tensors[f"x_{split}"], tensors[f"y_{split}"], nodes, loss, nodes_from="x_train")
        except ValueError as e:
            raise ValueError(f"{split} data: {e}") from None
    for name, t in tensors.items():
        if not bool(tf.reduce_all(tf.math.is_finite(t))):
            raise ValueError(f"{name} holds NaN or inf")


class SupervisedGCNN(Task):
    """Regression of node labels y (N, |V|, g_L) from node features x (N, |V|, g_0) on one graph.

    Args:
        gcnn: the model (student) architecture.
        theta0: the shared initial parameters, flat (|theta|,).
        x_train, y_train, x_test, y_test: arrays, sample-major.
        dtype: float dtype of data and parameters.
        loss: per-node loss l_i(y_hat, y) (default squared error).
        loss_name: the loss's metric name (``train_<loss_name>``, ``test_<loss_name>``).
        eval_graph: the graph to evaluate on when training graphs are drawn per mini-batch (the
            trainer then passes no graph to :meth:`evaluate`).
        backend: :class:`core.backend.LocalBackend` (default) or an :class:`core.backend.MPIBackend`; under
            MPI the arrays hold this rank's nodes only (``x[:, backend.owned]``) and the graphs are its
            views (``backend.local_graph``). Metrics are then means over the owned nodes, which the
            trainer combines (weighted by owned nodes).
    """

    def __init__(self, gcnn: GCNN, theta0, x_train, y_train, x_test, y_test, dtype=tf.float32,
                 loss: Callable = squared_error, loss_name: str = "mse", eval_graph: GraphOps | None = None,
                 backend=None):
        self.gcnn, self.dtype, self.loss, self.eval_graph = gcnn, dtype, loss, eval_graph
        self.backend = LOCAL if backend is None else backend
        self.executor = BatchedExecutor(gcnn, loss)
        self.theta0 = tf.convert_to_tensor(theta0, dtype)
        if self.theta0.shape != (gcnn.num_params,):
            raise ValueError(f"theta0 must be the flat shared parameters, shape ({gcnn.num_params},), got "
                             f"{tuple(self.theta0.shape)}")
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        tensors = {name: tf.convert_to_tensor(a, dtype) for name, a in arrays.items()}
        _check_data(gcnn, tensors, loss)
        self.data = {
            "train": (tensors["x_train"], tensors["y_train"]),
            "test": (tensors["x_test"], tensors["y_test"]),
        }
        self.num_train = int(self.data["train"][0].shape[0])
        self.num_nodes = int(self.data["train"][0].shape[1])
        self.train_metrics = (f"train_{loss_name}",)
        self.test_metrics = (f"test_{loss_name}",)
        self.primary = self.test_metrics[0]

    def initial_theta(self) -> tf.Tensor:
        return self.theta0

    def schedule(self, optimizer: Optimizer, batch_size: int) -> Schedule:
        return self.executor.schedule_for(optimizer, batch_size)

    def gradients(self, theta, indices, graph: GraphOps, optimizer: Optimizer, exchange):
        x_all, y_all = self.data["train"]
        x, y = tf.gather(x_all, indices), tf.gather(y_all, indices)
        if optimizer.centralized:
            grad, loss = self.executor.centralized_gradient(theta, x, y, graph.shift, None, exchange)
        else:
            grad, loss = self.executor.local_gradients(theta, x, y, graph.shift, None, exchange)
        return grad, {self.train_metrics[0]: loss}

    def predict(self, theta, x, graph: GraphOps) -> tf.Tensor:
        """Outputs (B, |V|, g_L) for shared or per-node parameters (no exchange is counted)."""
        y_hat, _ = self.gcnn.forward(unflatten(self.gcnn, theta), x, graph.shift, sample_major=True,
                                     exchange=self.backend.eval_transport)
        return y_hat

    def evaluate(self, theta, graph: GraphOps | None, split: str) -> dict[str, tf.Tensor]:
        x, y = self.data[split]
        graph = self.eval_graph if graph is None else graph
        name = (self.train_metrics if split == "train" else self.test_metrics)[0]
        return {name: tf.reduce_mean(self.loss(self.predict(theta, x, graph), y))}
