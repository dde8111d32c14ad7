"""The shared HDF5 format: round trip, checksum, atomic writes and every kind of broken file."""

import json
import shutil

import h5py
import numpy as np
import pytest

from datasets import storage
from datasets.storage import DatasetError

SCHEMA = storage.Schema(
    name="toy",
    version=2,
    arrays=(
        storage.ArraySpec(
            "a/x", ("items", "width"), np.float32, (storage.check_finite, storage.check_non_negative)
        ),
        storage.ArraySpec("a/label", ("items",), np.int64, ()),
    ),
)
X = np.arange(24, dtype=np.float32).reshape(6, 4)
LABELS = np.arange(6) * 10


def write_toy(path, x=X, labels=LABELS, config=None):
    with storage.write_dataset(
        path, SCHEMA, config or {"seed": 1}, "tests.toy 0.1", {"extra": 2.5}
    ) as writer:
        writer.create_array("a/x", x.shape, rows_per_chunk=2)
        writer.create_array("a/label", labels.shape, rows_per_chunk=len(labels))
        for start in range(0, len(x), 4):  # two appends of unequal size
            writer.append("a/x", x[start : start + 4])
        writer.append("a/label", labels)
    return path


def broken_copy(source, tmp_path, edit):
    """Copy `source` and apply `edit(h5py.File)` to the copy in r+ mode."""
    path = tmp_path / "broken.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as file:
        edit(file)
    return path


@pytest.fixture
def toy(tmp_path):
    return write_toy(tmp_path / "toy.h5")


def test_round_trip_attributes_and_rows(toy):
    with storage.DatasetReader(toy, SCHEMA) as reader:
        assert reader.config == {"seed": 1}
        assert reader.attrs["generator"] == "tests.toy 0.1" and reader.attrs["extra"] == 2.5
        assert reader.attrs["schema"] == "toy" and reader.attrs["schema_version"] == 2
        assert reader.dims == {"items": 6, "width": 4}
        np.testing.assert_array_equal(reader.read("a/x", 3), X[3])
        np.testing.assert_array_equal(reader.read("a/x", slice(1, 4)), X[1:4])
        np.testing.assert_array_equal(reader.read("a/label", slice(0, None)), LABELS)
        assert reader.checksum.startswith("sha256:") and len(reader.checksum) == 7 + 64
        assert reader.file["a/x"].chunks == (2, 4)
        reader.verify()


def test_checksum_depends_on_content_and_config(tmp_path, toy):
    def checksum(path):
        with storage.DatasetReader(path, SCHEMA) as reader:
            return reader.checksum

    same = write_toy(tmp_path / "same.h5")
    assert checksum(same) == checksum(toy)
    assert same.read_bytes() == toy.read_bytes()  # byte-identical files for identical content
    other_value = X.copy()
    other_value[5, 3] += 1
    assert checksum(write_toy(tmp_path / "value.h5", x=other_value)) != checksum(toy)
    assert checksum(write_toy(tmp_path / "config.h5", config={"seed": 2})) != checksum(toy)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "toy.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with storage.write_dataset(path, SCHEMA, {}, "g") as writer:
            writer.create_array("a/x", X.shape)
            writer.append("a/x", X[:3])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_previous_file(tmp_path, toy):
    before = toy.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with storage.write_dataset(toy, SCHEMA, {}, "g") as writer:
            writer.create_array("a/x", X.shape)
            raise KeyboardInterrupt
    assert toy.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["toy.h5"]


def test_incomplete_dataset_is_not_published(tmp_path):
    path = tmp_path / "toy.h5"
    with pytest.raises(RuntimeError, match=r"missing arrays \['a/label'\], partly written \['a/x'\]"):
        with storage.write_dataset(path, SCHEMA, {}, "g") as writer:
            writer.create_array("a/x", X.shape)
            writer.append("a/x", X[:5])
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_appends(tmp_path):
    with pytest.raises(ValueError, match="cannot append"):
        with storage.write_dataset(tmp_path / "t.h5", SCHEMA, {}, "g") as writer:
            writer.create_array("a/x", X.shape)
            writer.append("a/x", X)
            writer.append("a/x", X[:1])  # one row too many
    with pytest.raises(ValueError, match="has dims"):
        with storage.write_dataset(tmp_path / "t.h5", SCHEMA, {}, "g") as writer:
            writer.create_array("a/x", (6,))
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_foreign_files(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset file"):
        storage.DatasetReader(tmp_path / "nothing.h5", SCHEMA)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DatasetError, match=r"notes.h5: not a readable HDF5 file"):
        storage.DatasetReader(text, SCHEMA)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="foreign.h5: not a dataset of this project"):
        storage.DatasetReader(foreign, SCHEMA)


def test_other_kind_and_version(tmp_path, toy):
    other = storage.Schema("other", 2, SCHEMA.arrays)
    with pytest.raises(DatasetError, match="is a 'toy' dataset, expected 'other'"):
        storage.DatasetReader(toy, other)
    newer = storage.Schema("toy", 3, SCHEMA.arrays)
    with pytest.raises(DatasetError, match="schema version 2 of 'toy', this code reads version 3"):
        storage.DatasetReader(toy, newer)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("a/label"), "missing array 'a/label'"),
        (lambda f: f.attrs.__delitem__("config"), r"missing root attributes \['config'\]"),
        (lambda f: f.attrs.__setitem__("config", "{not json"), "'config' attribute is not valid JSON"),
        (lambda f: _replace(f, "a/x", X.astype(np.float64)), "a/x has dtype float64, expected float32"),
        (lambda f: _replace(f, "a/x", X[:, :, None]), r"a/x has shape \(6, 4, 1\), expected axes"),
        (lambda f: _replace(f, "a/label", LABELS[:5]), "a/label has items=5 but a/x has items=6"),
    ],
)
def test_structural_errors(tmp_path, toy, edit, message):
    path = broken_copy(toy, tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as info:
        storage.DatasetReader(path, SCHEMA)
    assert str(path) in str(info.value)


def test_expected_dims_from_config(tmp_path, toy):
    class Reader(storage.DatasetReader):
        def expected_dims(self):
            return {"width": self.config["width"]}

    with pytest.raises(DatasetError, match="lacks the entry 'width'"):
        Reader(toy, SCHEMA)
    path = broken_copy(toy, tmp_path, lambda f: f.attrs.__setitem__("config", json.dumps({"width": 5})))
    with pytest.raises(DatasetError, match="dimension 'width' is 4 in the arrays but 5 in the metadata"):
        Reader(path, SCHEMA)


def test_bad_content_is_reported_on_read_and_verify(tmp_path, toy):
    def poison(file):
        file["a/x"][4, 1] = np.nan
        file["a/x"][2, 0] = -1.0

    path = broken_copy(toy, tmp_path, poison)
    with storage.DatasetReader(path, SCHEMA) as reader:  # structure is fine: opens
        np.testing.assert_array_equal(reader.read("a/x", 1), X[1])
        with pytest.raises(DatasetError, match=r"a/x\[4\] contains NaN or infinite values"):
            reader.read("a/x", 4)
        with pytest.raises(DatasetError, match=r"a/x\[2\] contains negative values \(min -1\)"):
            reader.read("a/x", 2)
        with pytest.raises(DatasetError, match=r"a/x\[4\] contains NaN"):  # the first bad row, not the read's range
            reader.verify()


def test_flipped_bytes_fail_the_checksum(tmp_path, toy):
    path = tmp_path / "flipped.h5"
    shutil.copy(toy, path)
    with h5py.File(path, "r") as file:
        offset = file["a/x"].id.get_chunk_info(1).byte_offset  # rows 2-3
    raw = bytearray(path.read_bytes())
    raw[offset + 5] ^= 0x01  # a valid, finite, non-negative float32 after the flip
    path.write_bytes(bytes(raw))
    with storage.DatasetReader(path, SCHEMA) as reader:
        assert reader.read("a/x", 2)[1] != X[2, 1]
        with pytest.raises(DatasetError, match="a/x does not match its checksum"):
            reader.verify()


def test_edited_metadata_fails_the_checksum(tmp_path, toy):
    path = broken_copy(toy, tmp_path, lambda f: f.attrs.__setitem__("extra", 3.5))
    with storage.DatasetReader(path, SCHEMA) as reader:
        with pytest.raises(DatasetError, match="metadata does not match the checksum"):
            reader.verify()


def test_truncated_file(tmp_path, toy):
    path = tmp_path / "truncated.h5"
    path.write_bytes(toy.read_bytes()[: toy.stat().st_size // 2])
    with pytest.raises(
        DatasetError, match=r"truncated.h5: not a readable HDF5 file \(truncated or corrupted\?\)"
    ):
        storage.DatasetReader(path, SCHEMA)


def _replace(file, name, values):
    del file[name]
    file[name] = values
