"""Node-regression data (datasets.node_regression): teacher and shift against core, features, file round trip."""

import numpy as np
import pytest
import tensorflow as tf

from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from datasets import cli
from datasets import node_regression as nr
from datasets.__main__ import main as datasets_main
from datasets.storage import DatasetError

TINY = nr.NodeRegressionConfig(nodes=15, train_samples=12, test_samples=4, seed=5)


def test_paper_defaults():
    c = nr.NodeRegressionConfig()
    assert (c.nodes, c.graph, c.graph_m, c.graph_seed, c.shift) == (100, "ba", 2, 3, "normalized_laplacian")
    assert (c.features, c.input_dim, c.teacher_widths, c.teacher_activation) == ("mix", 10, (10, 10, 1), "sigmoid")
    assert (c.teacher_scale, c.teacher_neighbour_scale, c.noise_variance) == (1.0, 2.0, 0.01)
    assert (c.train_samples, c.test_samples) == (1000, 20)
    adjacency = nr.graph_adjacency(c)
    assert adjacency.shape == (100, 100) and adjacency.sum() == 2 * 2 * 98  # m (|V| - m) edges


@pytest.mark.parametrize("kind", nr.SHIFTS)
def test_dense_shift_equals_core_graph_operator(kind):
    adjacency = nr.graph_adjacency(TINY)
    expected = Graph.from_dense(adjacency).shift_operator(kind).to_dense()
    np.testing.assert_allclose(nr.dense_shift(adjacency, kind), expected, rtol=0, atol=1e-15)


def test_teacher_equals_core_gcnn_forward():
    config = nr.NodeRegressionConfig(nodes=15, teacher_hidden=(6, 4), train_samples=3, test_samples=1)
    data = nr.generate_arrays(config)
    params = nr.teacher_parameters(config, np.random.default_rng(np.random.SeedSequence(config.seed).spawn(3)[0]))
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in params]), data.teacher_theta)
    gcnn = GCNN(config.teacher_widths, "sigmoid")
    shift = to_operator(Graph.from_dense(data.adjacency).shift_operator(config.shift), tf.float64)
    x = nr.node_features(config.features, 7, config.nodes, config.input_dim, np.random.default_rng(0))
    expected, _ = gcnn.forward([tf.constant(p) for p in params], tf.constant(x), shift, sample_major=True)
    shift_dense = nr.dense_shift(data.adjacency, config.shift)
    np.testing.assert_allclose(nr.teacher_forward(params, x, shift_dense, "sigmoid"), expected.numpy(), rtol=1e-13)


def test_large_graphs_take_the_sparse_teacher_product_with_the_same_values(monkeypatch):
    config = nr.NodeRegressionConfig(nodes=40, teacher_hidden=(6,), train_samples=3, test_samples=1)
    shift = nr.dense_shift(nr.graph_adjacency(config), config.shift)
    params = nr.teacher_parameters(config, np.random.default_rng(1))
    x = nr.node_features(config.features, 5, config.nodes, config.input_dim, np.random.default_rng(2))
    dense = nr.teacher_forward(params, x, shift, "sigmoid")
    monkeypatch.setattr(nr, "DENSE_TEACHER_MAX_NODES", 10)  # 40 nodes: the sparse product
    np.testing.assert_allclose(nr.teacher_forward(params, x, shift, "sigmoid"), dense, rtol=1e-13)


def test_teacher_parameter_scales():
    params = nr.teacher_parameters(nr.NodeRegressionConfig(), np.random.default_rng(0))
    assert [p.shape for p in params] == [(10, 10), (10, 10), (10, 1), (10, 1)]
    assert params[0].min() >= 0 and params[0].max() < 1 and params[2].max() < 1
    assert params[1].max() > 1 and params[1].max() < 2  # Theta1 ~ 2 U(0, 1)


def test_mix_features_columns():
    x = nr.node_features("mix", 400, 50, 10, np.random.default_rng(1))
    assert x.shape == (400, 50, 10)
    assert 0 <= x[..., 0].min() and x[..., 0].max() < 1  # U(0, 1)
    assert abs(x[..., 1].mean()) < 0.02 and abs(x[..., 1].std() - 1) < 0.02  # N(0, 1)
    assert set(np.unique(x[..., 2])) == set(range(6))  # {0..5}
    assert abs(x[..., 3].mean() - 0.25) < 0.01 and abs(x[..., 4].mean() - 0.75) < 0.01  # Bernoulli
    one_hot = x[..., 5:]
    assert np.array_equal(one_hot.sum(-1), np.ones((400, 50))) and set(np.unique(one_hot)) == {0.0, 1.0}


def test_label_noise_has_the_configured_variance():
    clean = nr.generate_arrays(nr.NodeRegressionConfig(nodes=30, train_samples=400, test_samples=1, noise_variance=0))
    noisy = nr.generate_arrays(nr.NodeRegressionConfig(nodes=30, train_samples=400, test_samples=1))
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)
    assert np.var(noisy.y_train - clean.y_train) == pytest.approx(0.01, rel=0.03)


def test_generation_is_deterministic_and_seeded():
    a, b = nr.generate_arrays(TINY), nr.generate_arrays(TINY)
    for u, v in zip(a[:6], b[:6]):
        np.testing.assert_array_equal(u, v)
    c = nr.generate_arrays(nr.NodeRegressionConfig(nodes=15, train_samples=12, test_samples=4, seed=6))
    assert not np.array_equal(a.x_train, c.x_train)
    np.testing.assert_array_equal(a.adjacency, c.adjacency)  # the graph has its own seed


def test_file_round_trip_equals_in_memory_generation(tmp_path):
    path = nr.generate(TINY, tmp_path / "nr.h5")
    data, checksum = nr.load(path)
    assert checksum.startswith("sha256:") and data.config == TINY
    for u, v in zip(data[:6], nr.generate_arrays(TINY)[:6]):
        np.testing.assert_array_equal(u, v)
    with nr.NodeRegressionDataset(path) as reader:
        reader.verify()


def test_cli_kind_writes_the_file(tmp_path):
    assert "node-regression" in cli.discover_kinds()
    out = tmp_path / "cli.h5"
    status = datasets_main(["node-regression", "--nodes", "15", "--train-samples", "12", "--test-samples", "4",
                            "--teacher-hidden", "6,3", "--features", "normal", "--input-dim", "4", "--seed", "2",
                            "--out", str(out), "-q"])
    assert status == 0
    data, _ = nr.load(out)
    assert data.x_train.shape == (12, 15, 4) and data.config.teacher_hidden == (6, 3)
    assert data.teacher_theta.size == 2 * (4 * 6 + 6 * 3 + 3 * 1)


@pytest.mark.parametrize("flags, message", [
    (["--features", "mix", "--input-dim", "5"], "--input-dim"),
    (["--graph-m", "100"], "--graph-m"),
    (["--graph", "er", "--graph-p", "1.5"], "--graph-p"),
    (["--teacher-hidden", "0"], "--teacher-hidden"),
])
def test_cli_rejects_bad_flags(tmp_path, capsys, flags, message):
    out = tmp_path / "bad.h5"
    with pytest.raises(SystemExit) as exit_info:
        datasets_main(["node-regression", *flags, "--out", str(out), "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_corrupted_file_is_reported(tmp_path):
    path = nr.generate(TINY, tmp_path / "nr.h5")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="nr.h5"):
        nr.load(path)
