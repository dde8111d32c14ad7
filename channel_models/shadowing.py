"""Log-normal shadow fading (large-scale fading) in dB.

TR 38.901 models shadow fading as a zero-mean Gaussian in dB whose standard deviation sigma_SF depends
on the scenario (Table 7.4.1-1: UMa LOS 4 dB, NLOS 6 dB, NLOS optional 7.8 dB). The paper authors
used 7.2 dB and clipped the draw at +-2 sigma (docs/design.md, section 7), so clipping is an option here.
Clipping sets values beyond the bound to the bound (it does not redraw them), which lowers the
standard deviation: see `clipped_normal_std`.
"""

from __future__ import annotations

import math

import numpy as np

from channel_models._validation import require_non_negative


def shadow_fading_db(
    shape,
    std_db: float,
    rng: np.random.Generator,
    clip_sigmas: float | None = None,
    dtype=np.float64,
) -> np.ndarray:
    """Draw shadow fading values X ~ N(0, std_db^2) in dB, optionally clipped to +-clip_sigmas * std_db.

    `std_db = 0` disables shadowing (returns zeros, consuming no random numbers). `clip_sigmas=None`
    (or 0) disables clipping. Raises ValueError for a negative std_db or clip_sigmas.
    """
    std_db = float(require_non_negative(std_db, "std_db"))
    if clip_sigmas is not None:
        clip_sigmas = float(require_non_negative(clip_sigmas, "clip_sigmas"))
    if std_db == 0.0:
        return np.zeros(shape, dtype=dtype)
    draw = rng.standard_normal(shape, dtype=dtype)
    if clip_sigmas:
        np.clip(draw, -clip_sigmas, clip_sigmas, out=draw)
    draw *= std_db
    return draw


def clipped_normal_std(std: float, clip_sigmas: float | None) -> float:
    """Standard deviation of N(0, std^2) after clipping at +-clip_sigmas * std (None/0: no clipping).

    For Z ~ N(0, 1) clipped at +-k: E[Z^2] = (2 Phi(k) - 1) - 2 k phi(k) + 2 k^2 (1 - Phi(k)), where
    phi and Phi are the standard normal density and distribution; the mean stays 0 by symmetry.
    """
    if not clip_sigmas:
        return float(std)
    k = float(clip_sigmas)
    pdf = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    tail = 0.5 * math.erfc(k / math.sqrt(2.0))  # 1 - Phi(k)
    second_moment = (1.0 - 2.0 * tail) - 2.0 * k * pdf + 2.0 * k * k * tail
    return float(std) * math.sqrt(second_moment)
