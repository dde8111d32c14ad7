"""Shadow fading statistics with fixed seeds, with and without clipping."""

import numpy as np
import pytest

from channel_models.shadowing import clipped_normal_std, shadow_fading_db

N = 400_000  # standard error of the std estimate ~ sigma / sqrt(2N) = 0.1 % of sigma


def test_unclipped_mean_and_std():
    x = shadow_fading_db(N, 7.8, np.random.default_rng(1))
    assert abs(x.mean()) < 0.03
    assert x.std() == pytest.approx(7.8, rel=0.005)
    assert np.abs(x).max() > 3 * 7.8  # really unclipped


def test_clipped_at_two_sigma():
    x = shadow_fading_db(N, 7.2, np.random.default_rng(2), clip_sigmas=2.0)
    assert x.max() == pytest.approx(14.4) and x.min() == pytest.approx(-14.4)
    # P(|Z| > 2) = 4.55 % of the draws sit exactly on the bounds.
    assert np.mean(np.isclose(np.abs(x), 14.4)) == pytest.approx(0.0455, abs=0.002)
    assert abs(x.mean()) < 0.03
    assert x.std() == pytest.approx(clipped_normal_std(7.2, 2.0), rel=0.005)


def test_clipped_std_formula():
    # Numerical integration of E[min(max(Z, -k), k)^2] for Z ~ N(0, 1).
    z = np.linspace(-12, 12, 2_000_001)
    density = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    for k in (0.5, 1.0, 2.0, 3.0):
        second_moment = np.trapezoid(np.clip(z, -k, k) ** 2 * density, z)
        assert clipped_normal_std(1.0, k) == pytest.approx(np.sqrt(second_moment), rel=1e-6)
    assert clipped_normal_std(7.2, 2.0) == pytest.approx(7.2 * 0.95945, rel=1e-4)
    assert clipped_normal_std(7.2, None) == 7.2


def test_zero_std_disables_and_is_deterministic():
    rng = np.random.default_rng(3)
    assert np.array_equal(shadow_fading_db((3, 4), 0.0, rng), np.zeros((3, 4)))
    a = shadow_fading_db((5,), 6.0, np.random.default_rng(7), clip_sigmas=2.0)
    b = shadow_fading_db((5,), 6.0, np.random.default_rng(7), clip_sigmas=2.0)
    assert np.array_equal(a, b)


def test_float32_output_and_bad_arguments():
    assert shadow_fading_db(4, 1.0, np.random.default_rng(0), dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="std_db must be >= 0"):
        shadow_fading_db(4, -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip_sigmas must be >= 0"):
        shadow_fading_db(4, 1.0, np.random.default_rng(0), clip_sigmas=-2.0)
