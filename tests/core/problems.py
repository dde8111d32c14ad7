"""Small supervised problems the core tests train on (not collected): a BA graph's S and W, and a GCNN
regression of sigmoid(sum of the features) per node."""

import networkx as nx
import numpy as np
import tensorflow as tf

from core.executors import flatten
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.supervised import SupervisedGCNN
from core.trainer import GraphOps


def ba_regression(model: GCNN, nodes: int, n_train: int, n_test: int, dtype=tf.float64):
    """(task, GraphOps) on BA(nodes, 2) (seed 3), normalized Laplacian S and Metropolis-Hastings W; fixed seeds."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(nodes, 2, seed=3))
    ops = GraphOps(to_operator(graph.shift_operator("normalized_laplacian"), dtype),
                   to_operator(graph.metropolis_hastings(), dtype))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_train + n_test, nodes, model.widths[0]))
    y = 1 / (1 + np.exp(-x.sum(-1, keepdims=True)))
    task = SupervisedGCNN(model, flatten(model.init_params(1, "uniform", dtype)), x[:n_train], y[:n_train],
                          x[n_train:], y[n_train:], dtype)
    return task, ops
