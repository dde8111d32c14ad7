"""Power-allocation dataset: channel values, layouts, metadata, determinism, loader and tf.data."""

import dataclasses
import shutil

import h5py
import numpy as np
import pytest

from channel_models import link_distances, uma_los, uma_nlos_optional
from channel_models.shadowing import clipped_normal_std
from datasets import power_allocation as pa
from datasets import storage
from datasets.power_allocation import PowerAllocationConfig, PowerAllocationDataset
from datasets.storage import DatasetError


@pytest.fixture
def make(tmp_path, tiny_power_config):
    """make(name="pa.h5", **overrides) generates the tiny config with `overrides` into tmp_path."""

    def build(name="pa.h5", **overrides):
        return pa.generate(dataclasses.replace(tiny_power_config, **overrides), tmp_path / name)

    return build


def large_scale_db(data, split="train"):
    """Per batch: -20 log10 of the stored H on the large-scale model only (no fading)."""
    with h5py.File(data, "r") as file:
        return -20 * np.log10(file[f"{split}/H"][:].astype(np.float64))


def test_paper_preset_defaults():
    config = PowerAllocationConfig()
    assert (config.pairs, config.area, config.batch_size) == (25, 1000.0, 64)
    assert config.num_batches == {"train": 10_000, "test": 100}  # 640 000 training matrices
    assert (config.carrier_ghz, config.bandwidth_mhz, config.pmax) == (0.9, 5.0, 5.0)
    assert config.pathloss == "uma-nlos-optional" and config.fading == "rayleigh"
    assert (config.shadowing_std, config.shadowing_clip) == (7.2, 2.0)
    assert config.noise_power_dbm == pytest.approx(-106.87, abs=0.005)
    assert config.threshold_db == pytest.approx(138.86, abs=0.005)
    assert config.shadowing_source == "paper authors' value (7.2 dB)"
    assert dataclasses.replace(config, shadowing_std=7.8).shadowing_source.startswith("3GPP TR 38.901")
    assert dataclasses.replace(config, shadowing_std=0.0).shadowing_source == "disabled"
    assert dataclasses.replace(config, threshold=False).threshold_db is None


def test_file_layout_and_metadata(power_file, tiny_power_config):
    with h5py.File(power_file, "r") as file:
        assert file["train/H"].shape == (6, 5, 4, 4) and file["train/H"].dtype == np.float32
        assert file["train/H"].chunks == (1, 5, 4, 4)
        assert file["test/H"].shape == (3, 5, 4, 4)
        for split, batches in (("train", 6), ("test", 3)):
            for name in ("tx_pos", "rx_pos"):
                assert file[f"{split}/{name}"].shape == (batches, 4, 2)
                assert file[f"{split}/{name}"].dtype == np.float64
    with PowerAllocationDataset(power_file) as data:
        assert PowerAllocationConfig(**data.config) == tiny_power_config
        assert data.attrs["generator"] == "datasets.power_allocation 1.0"
        assert data.noise_power_w == pytest.approx(1.380649e-23 * 298 * 5e6)
        assert data.attrs["noise_dbm"] == pytest.approx(-106.87, abs=0.005)
        assert data.pmax_w == 5.0 and data.attrs["bandwidth_hz"] == 5e6
        assert data.attrs["threshold_db"] == pytest.approx(138.86, abs=0.005)
        assert data.attrs["shadowing_std_db"] == 7.2
        assert (data.num_pairs, data.batch_size, data.num_batches("train"), data.num_batches()) == (
            4,
            5,
            6,
            6,
        )
        data.verify()


def test_layouts_shared_by_consecutive_batches(power_file):
    with h5py.File(power_file, "r") as file:
        tx, rx, h = file["train/tx_pos"][:], file["train/rx_pos"][:], file["train/H"][:]
        test_tx = file["test/tx_pos"][:]
    # batches_per_layout = 2: batches (0, 1), (2, 3), (4, 5) share a layout; layouts differ.
    for first in (0, 2, 4):
        assert np.array_equal(tx[first], tx[first + 1]) and np.array_equal(rx[first], rx[first + 1])
        assert not np.array_equal(h[first], h[first + 1])  # fading differs
    assert not np.array_equal(tx[0], tx[2]) and not np.array_equal(tx[2], tx[4])
    assert np.all(np.abs(tx) <= 500) and np.all(np.abs(rx) <= 500)
    # One fresh layout per test batch by default, independent of the training layouts.
    assert len({test_tx[b].tobytes() for b in range(3)}) == 3
    assert not any(np.array_equal(test_tx[b], tx[a]) for a in range(6) for b in range(3))


def test_channel_equals_pathloss_of_stored_positions(make):
    """Without randomness in the gains, H[j, i] = 10^(-PL(|tx_j - rx_i|)/20): checks the j -> i convention."""
    path = make(fading="none", shadowing_std=0.0, threshold=False, area=3000.0, pairs=6)
    with h5py.File(path, "r") as file:
        for split in ("train", "test"):
            distances = link_distances(file[f"{split}/tx_pos"][:], file[f"{split}/rx_pos"][:])
            expected = 10 ** (-uma_nlos_optional(distances, 0.9, 1.5, 1.5, clamp=True) / 20)
            h = file[f"{split}/H"][:]
            np.testing.assert_allclose(h, np.broadcast_to(expected[:, None], h.shape), rtol=1e-6)
            assert not np.allclose(h, np.swapaxes(h, -1, -2))  # the matrix is not symmetric


def test_other_pathloss_models_and_heights(make):
    path = make(fading="none", shadowing_std=0.0, pathloss="uma-los", tx_height=25.0, carrier_ghz=3.5)
    with h5py.File(path, "r") as file:
        distances = link_distances(file["train/tx_pos"][0], file["train/rx_pos"][0])
        expected = 10 ** (-uma_los(distances, 3.5, 25.0, 1.5, clamp=True) / 20)
        np.testing.assert_allclose(file["train/H"][0, 2], expected, rtol=1e-6)


def test_shadowing_per_layout_and_clipped(make):
    path = make(fading="none", threshold=False, pairs=20, layouts=4, batches_per_layout=2)
    without = make(
        "plain.h5",
        fading="none",
        threshold=False,
        pairs=20,
        layouts=4,
        batches_per_layout=2,
        shadowing_std=0.0,
    )
    shadow = large_scale_db(path) - large_scale_db(without)  # same seed: same layouts
    assert not np.allclose(shadow[0], shadow[2], atol=1)  # differs across layouts
    np.testing.assert_allclose(shadow[0], shadow[1], atol=1e-4)  # fixed within a layout
    np.testing.assert_allclose(shadow[:, 0], shadow[:, 3], atol=1e-4)  # ... and across samples
    values = shadow[::2, 0].ravel()  # 4 layouts x 400 links
    assert np.abs(values).max() == pytest.approx(14.4, abs=1e-3)  # clipped at 2 x 7.2 dB
    assert values.std() == pytest.approx(clipped_normal_std(7.2, 2.0), rel=0.05)


def test_shadowing_per_sample(make):
    path = make(fading="none", threshold=False, shadowing_per="sample", shadowing_clip=0.0)
    without = make("plain.h5", fading="none", threshold=False, shadowing_std=0.0)
    shadow = large_scale_db(path) - large_scale_db(without)
    assert not np.allclose(shadow[0, 0], shadow[0, 1])
    assert shadow.std() == pytest.approx(7.2, rel=0.1) and np.abs(shadow).max() > 14.4


@pytest.mark.parametrize("fading", ["rayleigh", "rician"])
def test_fading_has_unit_power(make, fading):
    sizes = dict(
        layouts=2, batches_per_layout=10, batch_size=100, pairs=5, threshold=False, shadowing_std=0.0
    )
    path = make(fading=fading, rician_k=4.0, **sizes)
    without = make("plain.h5", fading="none", **sizes)
    with h5py.File(path, "r") as file, h5py.File(without, "r") as plain:
        power = (file["train/H"][:].astype(np.float64) / plain["train/H"][:]) ** 2
    assert power.mean() == pytest.approx(1.0, abs=0.02)
    # Rayleigh: E r^4 = 2; Rician K = 4: (K^2 + 4K + 2)/(K + 1)^2 = 34/25.
    assert (power**2).mean() == pytest.approx(2.0 if fading == "rayleigh" else 34 / 25, rel=0.06)


def test_threshold_zeroes_weak_interferers_only(make):
    path = make(area=4000.0, pairs=10)
    minimum = 10 ** (-PowerAllocationConfig().threshold_db / 20)
    with h5py.File(path, "r") as file:
        h = file["train/H"][:]
    off = ~np.eye(10, dtype=bool)
    assert 0.05 < np.mean(h[..., off] == 0) < 0.95  # a 4 km square has many links beyond 138.86 dB
    assert h[..., off][h[..., off] > 0].min() >= np.float32(minimum)
    diagonal = np.diagonal(h, axis1=-2, axis2=-1)
    assert np.all(diagonal > 0) and diagonal.min() < minimum  # direct links are never cut


def test_disc_layout(make):
    path = make(layout="disc", pair_min_distance=20.0, pair_max_distance=50.0, area=800.0)
    with h5py.File(path, "r") as file:
        tx, rx = file["train/tx_pos"][:], file["train/rx_pos"][:]
    direct = np.linalg.norm(tx - rx, axis=-1)
    assert direct.min() >= 20.0 and direct.max() <= 50.0
    assert np.linalg.norm(tx, axis=-1).max() <= 400.0


def test_determinism(make, power_file):
    again = make("again.h5")
    assert again.read_bytes() == power_file.read_bytes()
    other = make("other.h5", seed=12)
    with h5py.File(power_file, "r") as a, h5py.File(other, "r") as b:
        assert not np.array_equal(a["train/H"][0], b["train/H"][0])
        assert not np.array_equal(a["test/tx_pos"][0], b["test/tx_pos"][0])
        assert a.attrs["checksum"] != b.attrs["checksum"]


def test_training_data_independent_of_test_size(make, power_file):
    # Each split (and each layout) has its own random stream.
    bigger = make(test_batches=5, test_batches_per_layout=2)
    with h5py.File(power_file, "r") as a, h5py.File(bigger, "r") as b:
        assert np.array_equal(a["train/H"][:], b["train/H"][:])
        tx = b["test/tx_pos"][:]  # 5 batches, 2 per layout: layouts (0, 1), (2, 3), (4,)
        assert np.array_equal(tx[0], tx[1]) and np.array_equal(tx[2], tx[3])
        assert not np.array_equal(tx[1], tx[2]) and not np.array_equal(tx[3], tx[4])


def test_interrupted_generation_leaves_no_file(tmp_path, monkeypatch, make):
    calls = []
    original = pa._channel_block

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(pa, "_channel_block", failing)
    with pytest.raises(KeyboardInterrupt):
        make()
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pairs": 0}, "--pairs must be a positive integer, got 0"),
        ({"batch_size": -2}, "--batch-size must be a positive integer"),
        ({"area": -1.0}, "--area must be > 0"),
        ({"shadowing_std": float("nan")}, "--shadowing-std must be a finite number"),
        ({"pathloss": "uma"}, "--pathloss must be one of uma-los, uma-nlos, uma-nlos-optional"),
        ({"carrier_ghz": 0.3}, r"--carrier-ghz must be in \[0.5, 100\] GHz"),
        ({"pathloss": "uma-los", "tx_height": 1.0}, "must exceed h_E = 1 m for uma-los"),
        ({"fading": "nakagami"}, "--fading must be one of rayleigh, rician, none"),
        ({"pair_min_distance": 160.0}, "--pair-min-distance .* must not exceed --pair-max-distance"),
        ({"seed": -1}, "--data-seed must be a non-negative integer"),
        ({"noise_dbm": 1000.0}, r"--noise-dbm 1000 is outside the float32 range .* \(-349.3 to 415.3 dBm\)"),
        ({"bandwidth_mhz": 1e300}, r"the noise power k T B of --bandwidth-mhz 1e\+300 and --noise-temperature 298 "
         r"\(2886 dBm\) is outside the float32 range"),
        ({"bandwidth_mhz": 1e-300}, r"k T B of --bandwidth-mhz 1e-300 .*\(-3114 dBm\) is outside"),
        ({"noise_temperature": 1e-320}, r"k T B .* \(0 or infinite W\) is outside"),
        ({"pmax": 1e-320}, r"--pmax 9.99989e-321 W is outside the float32 range"),
        ({"layout": "disc", "pair_max_distance": 1e300}, r"--pair-max-distance must be at most 1e\+06 m"),
        ({"area": 1e7}, r"--area must be at most 1e\+06 m"),
        ({"rx_height": 30.0}, r"--rx-height must be in \[1.5, 22.5\] m, the user-terminal heights"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        PowerAllocationConfig(**overrides)


def test_gains_the_readers_would_refuse_are_never_written(tmp_path):
    config = PowerAllocationConfig(pairs=4, layouts=1, batches_per_layout=1, test_batches=1, batch_size=2,
                                   shadowing_std=1e300)  # gains overflow float32
    with np.errstate(over="ignore"), pytest.raises(storage.GeneratedDataError,
                                                   match=r"the generated train/H\[0:1\] contains NaN or infinite"):
        pa.generate(config, tmp_path / "inf.h5")
    assert list(tmp_path.iterdir()) == []


def test_batch_indices_outside_the_split_are_refused(power_file):
    with PowerAllocationDataset(power_file) as data:
        for index in (6, -1, True, 1.0):
            with pytest.raises(IndexError, match=r"train batch .* does not exist: there are 6, numbered 0 to 5"):
                data.batch("train", index)
        with pytest.raises(ValueError, match="split must be one of"):
            data.batch("val", 0)
        assert data.batch("train", np.int64(5)).index == 5


def test_loader_streams_batches_in_order_and_shuffled(power_file):
    with PowerAllocationDataset(power_file) as data, h5py.File(power_file, "r") as raw:
        plain = list(data.batches("train"))
        assert [b.index for b in plain] == list(range(6))
        for batch in plain:
            np.testing.assert_array_equal(batch.H, raw["train/H"][batch.index])
            np.testing.assert_array_equal(batch.tx_pos, raw["train/tx_pos"][batch.index])
            np.testing.assert_array_equal(batch.rx_pos, raw["train/rx_pos"][batch.index])
        order = [b.index for b in data.batches("train", shuffle=True, seed=3)]
        assert sorted(order) == list(range(6)) and order != list(range(6))
        assert order == [b.index for b in data.batches("train", shuffle=True, seed=3)]
        orders = {
            tuple(b.index for b in data.batches("train", shuffle=True, seed=3, epoch=e)) for e in range(5)
        }
        assert len(orders) > 1  # reshuffled per epoch
        assert [b.index for b in data.batches("test")] == [0, 1, 2]
        with pytest.raises(ValueError, match="split must be one of"):
            data.num_batches("validation")


def test_loader_rejects_bad_files(tmp_path, power_file, graph_file):
    with pytest.raises(DatasetError, match="is a 'conflict-graphs' dataset, expected 'power-allocation'"):
        PowerAllocationDataset(graph_file)
    nan_file = tmp_path / "nan.h5"
    shutil.copy(power_file, nan_file)
    with h5py.File(nan_file, "r+") as file:
        file["train/H"][4, 0, 1, 2] = np.inf
    with PowerAllocationDataset(nan_file) as data:
        with pytest.raises(DatasetError, match=r"nan.h5: train/H\[4\] contains NaN or infinite values"):
            list(data.batches("train"))
    bad_config = tmp_path / "config.h5"
    shutil.copy(power_file, bad_config)
    with h5py.File(bad_config, "r+") as file:
        file.attrs["config"] = file.attrs["config"].replace('"pairs": 4', '"pairs": 5')
    with pytest.raises(DatasetError, match="dimension 'pairs' is 4 in the arrays but 5 in the metadata"):
        PowerAllocationDataset(bad_config)
    fewer = tmp_path / "fewer.h5"
    shutil.copy(power_file, fewer)
    with h5py.File(fewer, "r+") as file:
        for name in ("H", "tx_pos", "rx_pos"):
            values = file[f"test/{name}"][:2]
            del file[f"test/{name}"]
            file[f"test/{name}"] = values
    with pytest.raises(
        DatasetError, match="dimension 'test_batches' is 2 in the arrays but 3 in the metadata"
    ):
        PowerAllocationDataset(fewer)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(power_file.read_bytes()[:-1000])
    with pytest.raises(DatasetError, match="truncated.h5: not a readable HDF5 file"):
        PowerAllocationDataset(truncated)


def test_tf_dataset_shapes_and_reshuffling(power_file):
    import tensorflow as tf

    with PowerAllocationDataset(power_file) as data:
        dataset = data.as_tf_dataset("train", shuffle=True, seed=5)
        assert dataset.element_spec["H"] == tf.TensorSpec((5, 4, 4), tf.float32)
        assert dataset.element_spec["tx_pos"] == tf.TensorSpec((4, 2), tf.float64)
        # Each pass over the tf.data.Dataset is the loader's next epoch, so the order changes per pass.
        expected = [[b.H for b in data.batches("train", shuffle=True, seed=5, epoch=e)] for e in range(3)]
        assert not all(np.array_equal(a, b) for a, b in zip(expected[0], expected[1], strict=True))
        for epoch in range(3):
            got = [item["H"].numpy() for item in dataset]
            assert len(got) == 6
            for g, want in zip(got, expected[epoch], strict=True):
                np.testing.assert_array_equal(g, want)
        test_items = list(data.as_tf_dataset("test"))
        assert len(test_items) == 3 and test_items[2]["rx_pos"].shape == (4, 2)
