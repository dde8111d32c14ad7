"""Thermal noise, unit conversions and the control-channel threshold of docs/design.md, section 7."""

import numpy as np
import pytest

from channel_models import link_budget as lb


def test_thermal_noise():
    # k T B at 298 K over 5 MHz: the authors' -106.87 dBm; at 290 K the textbook -174 dBm/Hz + 67 dB.
    assert lb.thermal_noise_dbm(5e6) == pytest.approx(-106.87, abs=0.005)
    assert lb.thermal_noise_dbm(5e6, 290.0) == pytest.approx(-106.99, abs=0.005)
    assert lb.thermal_noise_dbm(1.0, 290.0) == pytest.approx(-173.98, abs=0.005)
    assert lb.thermal_noise_w(5e6) == pytest.approx(1.380649e-23 * 298 * 5e6)
    with pytest.raises(ValueError, match="bandwidth_hz must be > 0"):
        lb.thermal_noise_w(0.0)
    with pytest.raises(ValueError, match="temperature_k must be > 0"):
        lb.thermal_noise_w(5e6, -1.0)


def test_conversions_round_trip():
    assert lb.w_to_dbm(5.0) == pytest.approx(36.99, abs=0.005)
    assert lb.w_to_dbm(1e-3) == pytest.approx(0.0)
    np.testing.assert_allclose(lb.dbm_to_w(lb.w_to_dbm([1e-14, 0.5, 5.0])), [1e-14, 0.5, 5.0])
    assert lb.db_to_amplitude(-20.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="power_w must be > 0"):
        lb.w_to_dbm(0.0)


def test_paper_threshold():
    threshold = lb.control_channel_threshold_db(5.0, -106.87, snr_required_db=10.0, margin_db=5.0)
    assert threshold == pytest.approx(138.86, abs=0.005)
    assert lb.db_to_amplitude(-threshold) == pytest.approx(1.1403e-7, rel=1e-4)


def test_apply_threshold_keeps_direct_links():
    h = np.array([[[1e-8, 1e-8], [2e-7, 1e-6]], [[5e-7, 1e-9], [1e-9, 1e-9]]], dtype=np.float32)
    out = lb.apply_threshold(h.copy(), 138.86)
    expected = np.array([[[1e-8, 0.0], [2e-7, 1e-6]], [[5e-7, 0.0], [0.0, 1e-9]]], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    everything = lb.apply_threshold(h.copy(), 138.86, keep_diagonal=False)
    expected[0, 0, 0] = expected[1, 1, 1] = 0.0
    np.testing.assert_array_equal(everything, expected)
