"""Link budget: unit conversions, thermal noise k*T*B and the control-channel threshold.

The power-allocation preset of docs/design.md, section 7 uses a noise power of -106.87 dBm over 5 MHz, which
is k*T*B at T = 298 K (the customary 290 K gives -106.99 dBm), so the temperature is a parameter.
A link belongs to the interference graph only if the received power clears the control-channel
threshold: its path loss must not exceed

    PL_max = P_tx[dBm] - N_0[dBm] - SNR_req[dB] + margin[dB],

e.g. 36.99 - (-106.87) - 10 + 5 = 138.86 dB for Pmax = 5 W, i.e. an amplitude gain of at least
10^(-138.86/20) = 1.1403e-7.
"""

from __future__ import annotations

import numpy as np

from channel_models._validation import as_float_array, require_positive

BOLTZMANN = 1.380649e-23
"""Boltzmann constant in J/K (exact since the 2019 SI redefinition)."""

PAPER_NOISE_TEMPERATURE_K = 298.0
"""Noise temperature that reproduces the authors' -106.87 dBm over 5 MHz (docs/design.md, section 7)."""


def w_to_dbm(power_w) -> np.ndarray:
    """Power in W to dBm (10 log10(P / 1 mW)); raises ValueError for non-positive power."""
    return 10.0 * np.log10(require_positive(power_w, "power_w")) + 30.0


def dbm_to_w(power_dbm) -> np.ndarray:
    """Power in dBm to W."""
    return 10.0 ** ((as_float_array(power_dbm, "power_dbm") - 30.0) / 10.0)


def db_to_amplitude(gain_db) -> np.ndarray:
    """Power gain in dB to an amplitude gain: a path loss PL gives 10^(-PL/20) when passed as -PL."""
    return 10.0 ** (as_float_array(gain_db, "gain_db") / 20.0)


def thermal_noise_w(bandwidth_hz, temperature_k=PAPER_NOISE_TEMPERATURE_K) -> np.ndarray:
    """Thermal noise power k*T*B in W. Raises ValueError for a non-positive bandwidth or temperature."""
    bandwidth_hz = require_positive(bandwidth_hz, "bandwidth_hz")
    temperature_k = require_positive(temperature_k, "temperature_k")
    return BOLTZMANN * temperature_k * bandwidth_hz


def thermal_noise_dbm(bandwidth_hz, temperature_k=PAPER_NOISE_TEMPERATURE_K) -> np.ndarray:
    """Thermal noise power k*T*B in dBm (-106.87 dBm for 5 MHz at 298 K)."""
    return w_to_dbm(thermal_noise_w(bandwidth_hz, temperature_k))


def control_channel_threshold_db(tx_power_w, noise_dbm, snr_required_db=10.0, margin_db=5.0) -> np.ndarray:
    """Largest path loss (dB) at which a link still clears the control channel (docs/design.md, section 7).

    PL_max = 10 log10(P_tx / 1 mW) - N_0[dBm] - SNR_req + margin; 138.86 dB for the paper preset.
    """
    snr_required_db = as_float_array(snr_required_db, "snr_required_db")
    margin_db = as_float_array(margin_db, "margin_db")
    return w_to_dbm(tx_power_w) - as_float_array(noise_dbm, "noise_dbm") - snr_required_db + margin_db


def apply_threshold(amplitude: np.ndarray, threshold_db: float, keep_diagonal: bool = True) -> np.ndarray:
    """Zero every amplitude gain below 10^(-threshold_db/20), in place; return the array.

    `amplitude[..., j, i]` is the gain from transmitter j to receiver i. With `keep_diagonal` (the
    default) the direct links H[..., i, i] are never zeroed: the threshold decides which interfering
    links a receiver can detect, i.e. the edges of the interference graph, not whether a pair exists.
    """
    minimum = float(db_to_amplitude(-float(threshold_db)))
    below = amplitude < minimum
    if keep_diagonal:
        n = amplitude.shape[-1]
        below &= ~np.eye(n, dtype=bool)
    amplitude[below] = 0
    return amplitude
