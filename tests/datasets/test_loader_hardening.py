"""Every loader turns a crafted or damaged file into one `DatasetError` naming the file and the problem.

The files are valid datasets edited with h5py: a `config` attribute of the wrong JSON type, invalid
JSON, missing or mistyped entries, and arrays of the wrong shape or dtype. A KeyError, TypeError or
AttributeError escaping a loader would fail these tests.
"""

import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest

from datasets import node_regression as nr
from datasets import storage
from datasets.conflict_graphs import ConflictGraphDataset
from datasets.power_allocation import PowerAllocationDataset
from datasets.storage import DatasetError


@pytest.fixture(scope="module")
def node_file(tmp_path_factory):
    config = nr.NodeRegressionConfig(nodes=9, train_samples=4, test_samples=2, input_dim=6, teacher_hidden=(3,))
    return nr.generate(config, tmp_path_factory.mktemp("nodes") / "nodes.h5")


def load_node_regression(path):
    return nr.load(path)


def open_power_allocation(path):
    with PowerAllocationDataset(path) as data:
        return data.batch("train", 0)


def open_conflict_graphs(path):
    with ConflictGraphDataset(path) as data:
        return data.graph("test", 0)


LOADERS = {
    "node-regression": (load_node_regression, "node_file", "nodes"),
    "power-allocation": (open_power_allocation, "power_file", "pairs"),
    "conflict-graphs": (open_conflict_graphs, "graph_file", "vertices"),
}


def edited(request, tmp_path, kind, edit):
    """A copy of the kind's valid file with `edit(h5py.File)` applied."""
    source = request.getfixturevalue(LOADERS[kind][1])
    path = tmp_path / f"edited-{kind}.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as file:
        edit(file)
    return path


def set_config(value):
    def edit(file):
        file.attrs["config"] = value

    return edit


def change_config(**changes):
    def edit(file):
        config = json.loads(file.attrs["config"])
        for key, value in changes.items():
            if value is KeyError:
                del config[key]
            else:
                config[key] = value
        file.attrs["config"] = json.dumps(config)

    return edit


def replace_array(name, transform):
    def edit(file):
        values = transform(file[name][()])
        del file[name]
        file[name] = values

    return edit


def assert_dataset_error(loader, path, message):
    with pytest.raises(DatasetError, match=message) as info:
        loader(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (set_config("[1, 2]"), "the 'config' attribute is a JSON array, expected an object"),
        (set_config('"text"'), "the 'config' attribute is a JSON string, expected an object"),
        (set_config("null"), "the 'config' attribute is a JSON null, expected an object"),
        (set_config("3.5"), "the 'config' attribute is a JSON number, expected an object"),
        (set_config("{not json"), "the 'config' attribute is not valid JSON"),
        (set_config(np.arange(3)), "the 'config' attribute is not valid JSON"),
        (set_config("[" * 100_000), "the 'config' attribute is not valid JSON"),
        (change_config(seed=KeyError), r"the 'config' attribute lacks the entries \['seed'\]"),
        (change_config(seed="zero"), "the stored 'config' is invalid: --data-seed must be a non-negative integer"),
        (change_config(seed=[1]), "the stored 'config' is invalid"),
    ],
)
def test_bad_config_attribute(request, tmp_path, kind, edit, message):
    assert_dataset_error(LOADERS[kind][0], edited(request, tmp_path, kind, edit), message)


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("value", [None, "12", 12.5, [12], {"n": 12}, -3, True])
def test_mistyped_size_in_config(request, tmp_path, kind, value):
    loader, _, size = LOADERS[kind]
    path = edited(request, tmp_path, kind, change_config(**{size: value}))
    assert_dataset_error(loader, path, "the stored 'config' is invalid")


@pytest.mark.parametrize("kind", LOADERS)
def test_missing_size_in_config(request, tmp_path, kind):
    loader, _, size = LOADERS[kind]
    path = edited(request, tmp_path, kind, change_config(**{size: KeyError}))
    assert_dataset_error(loader, path, rf"the 'config' attribute lacks the entries \['{size}'\]")


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("node-regression", replace_array("train/x", lambda x: x.astype(np.float32)),
         "train/x has dtype float32, expected float64"),
        ("node-regression", replace_array("train/y", lambda y: y[:, :, 0]), r"train/y has shape \(4, 9\)"),
        ("node-regression", replace_array("teacher/theta", lambda t: t[:-1]),
         "dimension 'teacher_params' is 41 in the arrays but 42 in the metadata"),
        ("node-regression", replace_array("graph/adjacency", lambda a: a[:8, :8]),
         "train/x has nodes=9 but graph/adjacency has nodes=8"),
        ("node-regression", change_config(nodes=10), "dimension 'nodes' is 9 in the arrays but 10"),
        ("power-allocation", replace_array("train/H", lambda h: h.astype(np.float64)),
         "train/H has dtype float64, expected float32"),
        ("power-allocation", replace_array("test/tx_pos", lambda p: p[..., :1]),
         "test/tx_pos has xy=1 but train/tx_pos has xy=2"),
        ("power-allocation", replace_array("train/H", lambda h: h[:, :, :, :3]),
         "train/H has pairs=3 but train/H has pairs=4"),
        ("power-allocation", replace_array("train/rx_pos", lambda p: p[None]),
         r"train/rx_pos has shape \(1, 6, 4, 2\)"),
        ("power-allocation", change_config(batch_size=6), "dimension 'batch_size' is 5 in the arrays but 6"),
        ("conflict-graphs", replace_array("train/adjacency", lambda a: a.astype(np.int64)),
         "train/adjacency has dtype int64, expected uint8"),
        ("conflict-graphs", replace_array("test/weights", lambda w: w[:, :2]),
         "dimension 'test_samples' is 2 in the arrays but 3 in the metadata"),
        ("conflict-graphs", replace_array("test/mean_degree", lambda d: d.reshape(-1, 1)),
         r"test/mean_degree has shape \(4, 1\)"),
        ("conflict-graphs", lambda f: f.__delitem__("test/weights"), "missing array 'test/weights'"),
        ("conflict-graphs", lambda f: f.move("test/weights", "weights") or f["test"].create_group("weights"),
         "'test/weights' is not an array"),
    ],
)
def test_arrays_of_the_wrong_shape_or_dtype(request, tmp_path, kind, edit, message):
    assert_dataset_error(LOADERS[kind][0], edited(request, tmp_path, kind, edit), message)


def set_attribute(name, value):
    def edit(file):
        if value is KeyError:
            del file.attrs[name]
        else:
            file.attrs[name] = value

    return edit


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("power-allocation", set_attribute("noise_power_w", KeyError), r"missing root attributes \['noise_power_w'\]"),
        ("power-allocation", set_attribute("shadowing_source", KeyError), r"missing root attributes"),
        ("power-allocation", set_attribute("pmax_w", -5.0), r"the 'pmax_w' attribute is -5.0, expected a number > 0"),
        ("power-allocation", set_attribute("noise_power_w", "small"), r"'noise_power_w' attribute is 'small'"),
        ("power-allocation", set_attribute("noise_power_w", np.inf), r"'noise_power_w' attribute is inf"),
        ("node-regression", set_attribute("schema_version", "1"), r"the 'schema_version' attribute is '1', not an "
         r"integer"),
        ("conflict-graphs", set_attribute(b"\xff\xfe", 1), r"an attribute name is not text"),
    ],
)
def test_root_attributes_are_checked_on_open(request, tmp_path, kind, edit, message):
    assert_dataset_error(LOADERS[kind][0], edited(request, tmp_path, kind, edit), message)


def test_verify_checks_the_graph_as_load_does(request, tmp_path):
    def self_loop(file):  # a self-loop, with checksums that match it: only the graph check can tell
        adjacency = file["graph/adjacency"][()]
        adjacency[0, 0] = 1
        file["graph/adjacency"][()] = adjacency
        file["graph/adjacency"].attrs[storage.ARRAY_DIGEST_ATTR] = hashlib.sha256(adjacency).hexdigest()
        entries = [(name, file[name].dtype.str, file[name].shape, file[name].attrs[storage.ARRAY_DIGEST_ATTR])
                   for name in (spec.name for spec in nr.SCHEMA.arrays)]
        metadata = {key: file.attrs[key] for key in file.attrs if key != storage.ATTR_CHECKSUM}
        file.attrs[storage.ATTR_CHECKSUM] = storage._combine_checksum(metadata, entries)

    path = edited(request, tmp_path, "node-regression", self_loop)
    with nr.NodeRegressionDataset(path) as reader:
        with pytest.raises(DatasetError, match="graph/adjacency is not a 0/1 symmetric matrix without self-loops"):
            reader.verify()


def test_stored_config_is_parsed_and_checked(node_file, power_file, graph_file, tiny_graph_config):
    data, _ = nr.load(node_file)
    assert data.config.teacher_hidden == (3,)
    with ConflictGraphDataset(graph_file) as graphs:
        assert graphs.parsed_config == tiny_graph_config
    with PowerAllocationDataset(power_file) as power:
        assert power.parsed_config.pairs == power.num_pairs == 4


def test_unusable_paths(tmp_path):
    assert_dataset_error(nr.load, tmp_path / "missing.h5", "no such dataset file")
    assert_dataset_error(nr.load, tmp_path, "a folder, not a dataset file")
    assert_dataset_error(PowerAllocationDataset, tmp_path / "bad\0name.h5", "no such dataset file")
