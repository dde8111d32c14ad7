"""Small-scale fading amplitudes normalised to unit mean power, E|r|^2 = 1.

Rayleigh fading is the amplitude of a circularly symmetric complex Gaussian CN(0, 1); Rician fading
adds a deterministic line-of-sight component carrying a fraction K/(K+1) of the power (K is the
linear Rician K-factor, K = 0 gives Rayleigh). The channel amplitude of a link is then
h = 10^(-PL/20) * r (docs/design.md, section 7). The LOS phase does not affect |r|, so it is fixed to 0.
"""

from __future__ import annotations

import numpy as np

from channel_models._validation import require_non_negative


def rayleigh_amplitude(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Rayleigh amplitudes r = |CN(0, 1)| with E|r|^2 = 1.

    |CN(0, 1)|^2 is exponentially distributed with mean 1, so r = sqrt(Exp(1)): one draw per value
    instead of two Gaussians, which halves the cost of the dataset generator's hot loop.
    `dtype` is float32 (default) or float64.
    """
    power = rng.standard_exponential(shape, dtype=dtype)
    return np.sqrt(power, out=power)


def rician_amplitude(shape, k_factor: float, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Rician amplitudes r = |sqrt(K/(K+1)) + sqrt(1/(K+1)) CN(0, 1)| with E|r|^2 = 1.

    `k_factor` is the linear K-factor (ratio of LOS to scattered power, >= 0; use `db_to_k_factor` for
    a value in dB). Raises ValueError for a negative or non-finite K.
    """
    k = float(require_non_negative(k_factor, "k_factor"))
    los = (k / (k + 1.0)) ** 0.5
    # Each real component of the scattered part carries half of its power 1/(K+1).
    scatter_std = (0.5 / (k + 1.0)) ** 0.5
    real = rng.standard_normal(shape, dtype=dtype)
    imag = rng.standard_normal(shape, dtype=dtype)
    real *= scatter_std
    real += los
    imag *= scatter_std
    return np.hypot(real, imag, out=real)


def db_to_k_factor(k_db: float) -> float:
    """Convert a Rician K-factor from dB to linear (K = 10^(K_dB/10))."""
    return float(10.0 ** (np.asarray(k_db, dtype=np.float64) / 10.0))
