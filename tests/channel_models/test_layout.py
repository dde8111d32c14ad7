"""Transmitter-receiver layouts and the j -> i distance convention."""

import numpy as np
import pytest

from channel_models.layout import link_distances, paired_disc_layout, uniform_square_layout


def test_uniform_square_bounds_shape_and_uniformity():
    tx, rx = uniform_square_layout(25, 1000.0, np.random.default_rng(0), batch_shape=(400,))
    assert tx.shape == rx.shape == (400, 25, 2) and tx.dtype == np.float64
    for pos in (tx, rx):
        assert pos.min() >= -500.0 and pos.max() <= 500.0
        assert pos.mean() == pytest.approx(0.0, abs=5.0)
        # U(-500, 500) has std 1000 / sqrt(12) = 288.7 m.
        assert pos.std() == pytest.approx(288.7, rel=0.01)
    # Transmitters and receivers are independent: their coordinates are uncorrelated.
    assert abs(np.corrcoef(tx.ravel(), rx.ravel())[0, 1]) < 0.01


def test_paired_disc_direct_distances_in_annulus():
    tx, rx = paired_disc_layout(10, 500.0, 20.0, 100.0, np.random.default_rng(1), batch_shape=(2000,))
    assert tx.shape == rx.shape == (2000, 10, 2)
    assert np.all(np.hypot(tx[..., 0], tx[..., 1]) <= 500.0)
    direct = np.diagonal(link_distances(tx, rx), axis1=-2, axis2=-1)
    assert direct.min() >= 20.0 and direct.max() <= 100.0
    # Uniform over the annulus area: P(d <= 60) = (60^2 - 20^2) / (100^2 - 20^2) = 1/3.
    assert np.mean(direct <= 60.0) == pytest.approx(1 / 3, abs=0.01)
    # Transmitters uniform in the disc: P(|tx| <= 250) = 1/4.
    assert np.mean(np.hypot(tx[..., 0], tx[..., 1]) <= 250.0) == pytest.approx(0.25, abs=0.01)


def test_link_distances_convention():
    tx = np.array([[0.0, 0.0], [10.0, 0.0]])
    rx = np.array([[0.0, 3.0], [10.0, 4.0]])
    d = link_distances(tx, rx)
    # d[j, i]: transmitter j to receiver i, direct links on the diagonal.
    np.testing.assert_allclose(d, [[3.0, np.hypot(10, 4)], [np.hypot(10, 3), 4.0]])
    with pytest.raises(ValueError, match="equal shapes"):
        link_distances(tx, rx[:1])


def test_layout_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_pairs must be a positive integer"):
        uniform_square_layout(0, 1000.0, rng)
    with pytest.raises(ValueError, match="side_m must be > 0"):
        uniform_square_layout(3, -1.0, rng)
    with pytest.raises(ValueError, match="must not exceed max_distance_m"):
        paired_disc_layout(3, 100.0, 50.0, 10.0, rng)
