"""What a library user gets for inputs that do not fit: a ValueError or TypeError naming the problem, raised
before TensorFlow sees it (executors, SupervisedGCNN, Trainer, LearningRate)."""

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.executors import BatchedExecutor, ProtocolExecutor
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import LearningRate, make_optimizer
from core.replicas import flatten, replicate
from core.supervised import SupervisedGCNN
from core.trainer import FixedGraph, GraphOps, Trainer, TrainerConfig

GRAPH = Graph.from_networkx(nx.path_graph(5))
S, W = to_operator(GRAPH.shift_operator()), to_operator(GRAPH.metropolis_hastings())
MODEL = GCNN((2, 3, 1))
THETA = flatten(MODEL.init_params(seed=0))
COPIES = replicate(THETA, 5)
X, Y = tf.zeros((4, 5, 2)), tf.zeros((4, 5, 1))


def step(executor, theta=COPIES, x=X, y=Y, shift=S, mixing=W, optimizer="d-sgd"):
    optimizer = make_optimizer(optimizer)
    return executor.train_step(theta, optimizer.init_state(theta), x, y, shift, mixing, optimizer, 0.1)


@pytest.mark.parametrize("executor", [BatchedExecutor(MODEL), ProtocolExecutor(MODEL)], ids=["batched", "protocol"])
@pytest.mark.parametrize("kwargs, message", [
    (dict(y=tf.zeros((4, 5, 2))), r"y has 2 outputs per node, the GCNN's output width g_L is 1"),
    (dict(x=tf.zeros((4, 6, 2)), y=tf.zeros((4, 6, 1))), r"x has 6 nodes .* the graph's operator 5"),
    (dict(x=tf.zeros((4, 5, 3))), r"x has 3 features per node, the GCNN's input width g_0 is 2"),
    (dict(y=tf.zeros((4, 5))), r"y must be sample-major \(B, \|V\|, features\), got shape \(4, 5\)"),
    (dict(y=tf.zeros((3, 5, 1))), r"does not match x"),
    (dict(theta=COPIES[:, :3]), r"d-sgd needs a parameter copy per node, shape \(5, 18\)"),
    (dict(theta=COPIES[:4]), r"d-sgd needs a parameter copy per node"),
    (dict(theta=COPIES, optimizer="c-sgd"), r"c-sgd needs one shared parameter vector of shape \(18,\)"),
    (dict(x=tf.zeros((4, 5, 2), tf.float64), y=tf.zeros((4, 5, 1), tf.float64)),
     r"share one dtype .*theta float32, x float64"),
    (dict(shift=GRAPH.shift_operator()), r"shift operator is a NumPy SparseOperator: .*to_operator"),
    (dict(mixing=None), r"d-sgd mixes over the graph: pass the mixing operator W"),
])
def test_train_step_names_what_does_not_fit(executor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        step(executor, **kwargs)


def test_checks_pass_what_fits_and_hold_under_tf_function():
    executor = BatchedExecutor(MODEL)
    assert np.isfinite(float(step(executor).loss))
    assert np.isfinite(float(step(executor, theta=THETA, mixing=None, optimizer="c-adam").loss))
    optimizer = make_optimizer("d-sgd")

    @tf.function
    def compiled(theta, x, y):
        return executor.train_step(theta, optimizer.init_state(theta), x, y, S, W, optimizer, 0.1).loss

    assert np.isfinite(float(compiled(COPIES, X, Y)))
    with pytest.raises(ValueError, match="output width"):
        compiled(COPIES, X, tf.zeros((4, 5, 2)))


def test_a_custom_loss_may_take_labels_of_another_width():
    def class_loss(y_hat, labels):  # labels (|V|, B, 3): one-hot, the model's one output scores class 0
        return tf.reduce_sum(tf.square(y_hat - labels[..., :1]), axis=-1)

    assert np.isfinite(float(step(BatchedExecutor(MODEL, class_loss), y=tf.zeros((4, 5, 3))).loss))


def data(**changes):
    arrays = dict(x_train=np.zeros((6, 5, 2)), y_train=np.zeros((6, 5, 1)), x_test=np.zeros((3, 5, 2)),
                  y_test=np.zeros((3, 5, 1)))
    arrays.update(changes)
    return arrays


@pytest.mark.parametrize("arrays, theta0, message", [
    (data(y_test=np.zeros((3, 5, 2))), THETA, r"test data: y has 2 outputs per node"),
    (data(x_test=np.zeros((3, 4, 2))), THETA, r"test data: x has 4 nodes .*, x_train 5"),
    (data(y_train=np.zeros((6, 5))), THETA, r"train data: y must be sample-major"),
    (data(x_train=np.where(np.arange(60).reshape(6, 5, 2) == 7, np.nan, 0.0)), THETA, r"x_train holds NaN or inf"),
    (data(y_test=np.full((3, 5, 1), np.inf)), THETA, r"y_test holds NaN or inf"),
    (data(), THETA[:3], r"theta0 must be the flat shared parameters, shape \(18,\), got \(3,\)"),
])
def test_supervised_task_names_the_bad_array(arrays, theta0, message):
    with pytest.raises(ValueError, match=message):
        SupervisedGCNN(MODEL, theta0, **arrays)


def test_trainer_names_an_argument_of_the_wrong_kind():
    task = SupervisedGCNN(MODEL, THETA, **data())
    graphs = FixedGraph(GraphOps(S, W))
    good = dict(optimizer=make_optimizer("d-sgd"), lr=LearningRate(0.01), graphs=graphs,
                config=TrainerConfig(epochs=1, batch_size=2))
    for name, wrong, message in [
        ("optimizer", "d-sgd", r"optimizer must be an Optimizer \(core.optimizers.make_optimizer\), got str"),
        ("lr", 0.01, r"lr must be a core.optimizers.LearningRate"),
        ("graphs", GraphOps(S, W), r"graphs must be a graph sampler: FixedGraph\(GraphOps\(...\)\)"),
        ("config", dict(epochs=1), r"config must be a TrainerConfig"),
    ]:
        with pytest.raises(TypeError, match=message):
            Trainer(task, **{**good, name: wrong})


def test_learning_rate_takes_real_numbers_but_not_bools():
    assert LearningRate(np.float32(0.5)).alpha == 0.5 and type(LearningRate(np.float32(0.5)).alpha) is float
    assert LearningRate(1).alpha == 1.0
    for wrong in (True, "0.1", 0.0, float("nan")):
        with pytest.raises(ValueError, match="learning rate must be a finite number > 0"):
            LearningRate(wrong)
