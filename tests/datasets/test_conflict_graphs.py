"""Conflict-graph dataset: graph properties, degree spread, stored weights, determinism, loader."""

import dataclasses
import shutil

import h5py
import numpy as np
import pytest

from datasets import conflict_graphs as cg
from datasets.conflict_graphs import ConflictGraphDataset, ConflictGraphsConfig
from datasets.storage import DatasetError


def test_erdos_renyi_mean_degree_and_structure():
    rng = np.random.default_rng(0)
    degrees = []
    for _ in range(200):
        adjacency = cg.erdos_renyi_adjacency(100, 12.0, rng)
        assert adjacency.dtype == np.uint8 and cg.check_adjacency(adjacency) is None
        degrees.append(adjacency.sum(axis=1).mean())
    # The mean degree of G(100, 12/99) is 2|E|/100 with |E| ~ Bin(4950, 12/99): std 0.46 per graph,
    # 0.033 over 200 graphs.
    assert np.mean(degrees) == pytest.approx(12.0, abs=0.15)
    assert np.std(degrees) == pytest.approx(0.46, rel=0.2)
    assert cg.erdos_renyi_adjacency(10, 0.0, rng).sum() == 0
    assert cg.erdos_renyi_adjacency(10, 9.0, rng).sum() == 90  # p = 1: complete graph


def test_file_contents(graph_file, tiny_graph_config):
    with ConflictGraphDataset(graph_file) as data:
        assert (data.num_vertices, data.num_graphs("train"), data.num_graphs("test")) == (12, 7, 4)
        assert data.num_test_samples == 3
        assert ConflictGraphsConfig(**data.config) == tiny_graph_config
        assert data.attrs["generator"] == "datasets.conflict_graphs 1.0"
        train = list(data.graphs("train"))
        assert all(g.weights is None and 1.0 <= g.mean_degree <= 6.0 for g in train)
        assert len({g.mean_degree for g in train}) == 7  # drawn, not spaced
        test = list(data.graphs("test"))
        np.testing.assert_allclose([g.mean_degree for g in test], [1.0, 8 / 3, 13 / 3, 6.0])
        for graph in train + test:
            assert graph.adjacency.shape == (12, 12) and cg.check_adjacency(graph.adjacency) is None
        weights = np.stack([g.weights for g in test])
        assert weights.shape == (4, 3, 12) and weights.min() >= 0 and weights.max() < 1
        assert len(np.unique(weights)) == weights.size  # fresh draws, no repeats
        data.verify()


def test_edges_lists_both_directions():
    adjacency = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=np.uint8)
    senders, receivers = cg.ConflictGraph(0, adjacency, 1.33, None).edges()
    assert list(zip(senders.tolist(), receivers.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 0), (2, 0)]


def test_determinism(tmp_path, graph_file, tiny_graph_config):
    again = cg.generate(tiny_graph_config, tmp_path / "again.h5")
    assert again.read_bytes() == graph_file.read_bytes()
    other = cg.generate(dataclasses.replace(tiny_graph_config, seed=1), tmp_path / "other.h5")
    with h5py.File(graph_file, "r") as a, h5py.File(other, "r") as b:
        assert not np.array_equal(a["train/adjacency"][:], b["train/adjacency"][:])
        assert not np.array_equal(a["test/weights"][:], b["test/weights"][:])
        np.testing.assert_array_equal(a["test/mean_degree"][:], b["test/mean_degree"][:])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vertices": 1}, "--vertices must be at least 2"),
        ({"vertices": 0}, "--vertices must be a positive integer"),
        ({"min_degree": 5.0, "max_degree": 3.0}, "need --min-degree <= --max-degree <= --vertices - 1 = 99"),
        ({"vertices": 10}, "--vertices - 1 = 9, got 2.0 and 25.0"),
        ({"min_degree": -1.0}, "--min-degree must be >= 0"),
        ({"test_samples": 0}, "--test-samples must be a positive integer"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        ConflictGraphsConfig(**overrides)


def _flip_one_direction(file):
    adjacency = file["train/adjacency"]
    adjacency[2, 0, 1] = 1 - adjacency[2, 0, 1]


@pytest.mark.parametrize(
    ("split", "edit", "message"),
    [
        ("train", _flip_one_direction, r"train/adjacency\[2\] is not symmetric"),
        ("train", lambda f: f["train/adjacency"].__setitem__((2, 3, 3), 1), r"\[2\] has self-loops"),
        (
            "train",
            lambda f: f["train/adjacency"].__setitem__((2, 0, 0), 7),
            r"\[2\] has entries other than 0",
        ),
        (
            "test",
            lambda f: f["test/weights"].__setitem__((2, 0, 0), -0.5),
            r"test/weights\[2\] has values outside",
        ),
    ],
)
def test_loader_rejects_invalid_graphs(tmp_path, graph_file, split, edit, message):
    path = tmp_path / "broken.h5"
    shutil.copy(graph_file, path)
    with h5py.File(path, "r+") as file:
        edit(file)
    with ConflictGraphDataset(path) as data:
        data.graph(split, 1)  # the other graphs still load
        with pytest.raises(DatasetError, match=message):
            data.graph(split, 2)


def test_loader_rejects_wrong_size(tmp_path, graph_file):
    path = tmp_path / "resized.h5"
    shutil.copy(graph_file, path)
    with h5py.File(path, "r+") as file:
        del file["test/weights"]
        file["test/weights"] = np.zeros((4, 3, 11))
    with pytest.raises(
        DatasetError, match="test/weights has vertices=11 but train/adjacency has vertices=12"
    ):
        ConflictGraphDataset(path)


def test_shuffling_and_tf_dataset(graph_file):
    import tensorflow as tf

    with ConflictGraphDataset(graph_file) as data:
        order = [g.index for g in data.graphs("train", shuffle=True, seed=2)]
        assert sorted(order) == list(range(7)) and order != list(range(7))
        dataset = data.as_tf_dataset("test")
        assert dataset.element_spec["adjacency"] == tf.TensorSpec((12, 12), tf.uint8)
        assert dataset.element_spec["weights"] == tf.TensorSpec((3, 12), tf.float64)
        items = list(dataset)
        assert len(items) == 4
        np.testing.assert_array_equal(items[3]["weights"].numpy(), data.graph("test", 3).weights)
        train = data.as_tf_dataset("train", shuffle=True, seed=2)
        assert "weights" not in train.element_spec
        assert [float(item["mean_degree"]) for item in train] == [
            data.graph("train", i).mean_degree for i in order
        ]
