"""Small-scale fading: unit mean power, distribution moments, Rician K-factor, determinism."""

import numpy as np
import pytest

from channel_models.fading import db_to_k_factor, rayleigh_amplitude, rician_amplitude

N = 1_000_000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rayleigh_unit_power_and_moments(dtype):
    r = rayleigh_amplitude(N, np.random.default_rng(0), dtype=dtype)
    assert r.dtype == dtype and np.all(r >= 0)
    assert np.mean(r**2) == pytest.approx(1.0, abs=0.005)
    # Rayleigh with E r^2 = 1: E r = sqrt(pi)/2, E r^4 = 2, P(r^2 < x) = 1 - exp(-x).
    assert np.mean(r) == pytest.approx(np.sqrt(np.pi) / 2, abs=0.002)
    assert np.mean(r.astype(np.float64) ** 4) == pytest.approx(2.0, abs=0.02)
    assert np.mean(r**2 < 0.1) == pytest.approx(1 - np.exp(-0.1), abs=0.002)


@pytest.mark.parametrize("k", [0.0, 1.0, 10.0])
def test_rician_unit_power_and_k_factor(k):
    r = rician_amplitude(N, k, np.random.default_rng(1), dtype=np.float64)
    assert np.mean(r**2) == pytest.approx(1.0, abs=0.005)
    # With unit power, E r^4 = (K^2 + 4K + 2) / (K + 1)^2 identifies K.
    assert np.mean(r**4) == pytest.approx((k * k + 4 * k + 2) / (k + 1) ** 2, abs=0.02)


def test_rician_with_k_zero_is_rayleigh_in_distribution():
    r = rician_amplitude(N, 0.0, np.random.default_rng(2))
    assert r.dtype == np.float32
    assert np.mean(r**2 < 0.1) == pytest.approx(1 - np.exp(-0.1), abs=0.002)


def test_determinism_and_shape():
    a = rayleigh_amplitude((2, 3, 4), np.random.default_rng(5))
    b = rayleigh_amplitude((2, 3, 4), np.random.default_rng(5))
    c = rayleigh_amplitude((2, 3, 4), np.random.default_rng(6))
    assert a.shape == (2, 3, 4) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_k_factor_conversion_and_validation():
    assert db_to_k_factor(10.0) == pytest.approx(10.0)
    assert db_to_k_factor(0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k_factor must be >= 0"):
        rician_amplitude(3, -1.0, np.random.default_rng(0))
