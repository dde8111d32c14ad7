"""3GPP TR 38.901 urban-macro (UMa) path loss, breakpoint distance and LOS probability.

Implements Table 7.4.1-1 (path loss, UMa rows) and Table 7.4.2-1 (LOS probability, UMa row) of
3GPP TR 38.901 (Release 16), as specified in docs/design.md, section 7. Conventions:

* carrier frequency `fc_ghz` in GHz, distances and heights in metres, path loss in dB;
* every function is vectorized: distances (and heights) broadcast as NumPy arrays;
* the formulas take the 3-D distance d3D = sqrt(d2D^2 + (h_BS - h_UT)^2); the functions take d2D and
  convert, because the validity range and the LOS/NLOS breakpoint are stated on d2D. Passing d2D
  where d3D belongs is a known error of some public implementations (about 9 dB off at 10 m).

Input handling (the same in every function):

* a non-finite or non-positive distance, height or frequency raises ValueError;
* `fc_ghz` outside 0.5-100 GHz (the range the notes of Table 7.4.1-1 give for UMa) raises ValueError
  (never clamped);
* h_UT outside the UMa range 1.5 m <= h_UT <= 22.5 m of Table 7.4.1-1 raises ValueError (h_BS is not held to
  the table's 25 m: the ad-hoc networks of the datasets put transmitters at user height, docs/design.md, section 7);
* d2D outside the path-loss validity range 10 m <= d2D <= 5 km raises ValueError by default; with
  `clamp=True` it is clipped into [10 m, 5 km] first, which is what the dataset generators use, as
  random layouts occasionally put a receiver within 10 m of a transmitter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from channel_models._validation import as_float_array, require_in_range, require_positive

SPEED_OF_LIGHT = 3.0e8
"""Speed of light in m/s as TR 38.901 Table 7.4.1-1 note 1 specifies it (not 299 792 458)."""

MIN_FREQUENCY_GHZ = 0.5
MAX_FREQUENCY_GHZ = 100.0
"""Frequency range of the UMa formulas (TR 38.901 Table 7.4.1-1 notes: 0.5 GHz to f_H = 100 GHz)."""

MIN_DISTANCE_2D = 10.0
MAX_DISTANCE_2D = 5000.0
"""Validity range of d2D for every UMa path-loss formula (TR 38.901 Table 7.4.1-1)."""

DEFAULT_H_BS = 25.0
DEFAULT_H_UT = 1.5
DEFAULT_H_E = 1.0
"""UMa base-station height, user-terminal height and environment height (Table 7.4.1-1, note 1)."""

MIN_H_UT = 1.5
MAX_H_UT = 22.5
"""The user-terminal heights the UMa path-loss rows of Table 7.4.1-1 hold for (note 1: 1.5 m <= h_UT <= 22.5 m)."""

_FREQUENCY_SOURCE = "TR 38.901 Table 7.4.1-1 covers 0.5-100 GHz"
_DISTANCE_SOURCE = "TR 38.901 Table 7.4.1-1 validity range; pass clamp=True to clip instead"


def distance_3d(d2d, h_bs=DEFAULT_H_BS, h_ut=DEFAULT_H_UT) -> np.ndarray:
    """3-D distance sqrt(d2D^2 + (h_BS - h_UT)^2) in metres (TR 38.901 Figure 7.4.1-1).

    Raises ValueError if d2D is not positive or a height is not positive.
    """
    d2d = require_positive(d2d, "d2d")
    h_bs = require_positive(h_bs, "h_bs")
    h_ut = require_positive(h_ut, "h_ut")
    return np.sqrt(d2d**2 + (h_bs - h_ut) ** 2)


def breakpoint_distance(fc_ghz, h_bs=DEFAULT_H_BS, h_ut=DEFAULT_H_UT, h_e=DEFAULT_H_E) -> np.ndarray:
    """Breakpoint distance d'_BP = 4 h'_BS h'_UT f_c / c in metres (Table 7.4.1-1, note 1).

    h' = h - h_E are the antenna heights above the effective environment height h_E (1 m by default;
    see `sample_environment_height` for the UMa draw when h_UT >= 13 m). f_c is converted to Hz.
    Raises ValueError if f_c is outside 0.5-100 GHz or if a height does not exceed h_E.
    """
    fc_ghz = _check_frequency(fc_ghz)
    h_e = require_positive(h_e, "h_e")
    h_bs_eff = require_positive(as_float_array(h_bs, "h_bs") - h_e, "h_bs - h_e")
    h_ut_eff = require_positive(as_float_array(h_ut, "h_ut") - h_e, "h_ut - h_e")
    return 4.0 * h_bs_eff * h_ut_eff * fc_ghz * 1e9 / SPEED_OF_LIGHT


def uma_los(d2d, fc_ghz, h_bs=DEFAULT_H_BS, h_ut=DEFAULT_H_UT, h_e=DEFAULT_H_E, clamp=False) -> np.ndarray:
    """UMa line-of-sight path loss in dB (Table 7.4.1-1, UMa LOS; shadow fading sigma 4 dB).

    PL1 = 28.0 + 22 log10(d3D) + 20 log10(f_c)                        for 10 m <= d2D <= d'_BP,
    PL2 = 28.0 + 40 log10(d3D) + 20 log10(f_c) - 9 log10(d'_BP^2 + (h_BS - h_UT)^2)  for d'_BP < d2D <= 5 km.
    Out-of-range d2D raises ValueError, or is clipped into [10 m, 5 km] when `clamp` is true.
    """
    d2d = _check_distance(d2d, clamp)
    fc_ghz = _check_frequency(fc_ghz)
    _check_ut_height(h_ut)
    d_bp = breakpoint_distance(fc_ghz, h_bs, h_ut, h_e)
    d3d = distance_3d(d2d, h_bs, h_ut)
    h_bs = np.asarray(h_bs, dtype=np.float64)
    h_ut = np.asarray(h_ut, dtype=np.float64)
    pl1 = 28.0 + 22.0 * np.log10(d3d) + 20.0 * np.log10(fc_ghz)
    pl2 = 28.0 + 40.0 * np.log10(d3d) + 20.0 * np.log10(fc_ghz) - 9.0 * np.log10(d_bp**2 + (h_bs - h_ut) ** 2)
    # The table switches formula on d2D (not d3D) at the breakpoint.
    return np.where(d2d <= d_bp, pl1, pl2)


def uma_nlos(d2d, fc_ghz, h_bs=DEFAULT_H_BS, h_ut=DEFAULT_H_UT, h_e=DEFAULT_H_E, clamp=False) -> np.ndarray:
    """UMa non-line-of-sight path loss in dB (Table 7.4.1-1, UMa NLOS; shadow fading sigma 6 dB).

    PL = max(PL_UMa-LOS, PL'_UMa-NLOS) with
    PL'_UMa-NLOS = 13.54 + 39.08 log10(d3D) + 20 log10(f_c) - 0.6 (h_UT - 1.5), 10 m <= d2D <= 5 km.
    The max() keeps NLOS loss from ever being smaller than LOS loss at the same distance.
    Out-of-range d2D raises ValueError, or is clipped into [10 m, 5 km] when `clamp` is true.
    """
    d2d = _check_distance(d2d, clamp)
    fc_ghz = _check_frequency(fc_ghz)
    _check_ut_height(h_ut)
    d3d = distance_3d(d2d, h_bs, h_ut)
    h_ut = np.asarray(h_ut, dtype=np.float64)
    pl_nlos = 13.54 + 39.08 * np.log10(d3d) + 20.0 * np.log10(fc_ghz) - 0.6 * (h_ut - 1.5)
    return np.maximum(uma_los(d2d, fc_ghz, h_bs, h_ut, h_e), pl_nlos)


def uma_nlos_optional(d2d, fc_ghz, h_bs=DEFAULT_H_BS, h_ut=DEFAULT_H_UT, clamp=False) -> np.ndarray:
    """UMa NLOS 'optional' path loss in dB (Table 7.4.1-1; shadow fading sigma 7.8 dB).

    PL = 32.4 + 20 log10(f_c) + 30 log10(d3D). With h_BS == h_UT (the paper preset, both ends of a
    link at the same height) d3D equals d2D. Out-of-range d2D raises ValueError, or is clipped into
    [10 m, 5 km] when `clamp` is true.
    """
    d2d = _check_distance(d2d, clamp)
    fc_ghz = _check_frequency(fc_ghz)
    _check_ut_height(h_ut)
    d3d = distance_3d(d2d, h_bs, h_ut)
    return 32.4 + 20.0 * np.log10(fc_ghz) + 30.0 * np.log10(d3d)


def uma_los_probability(d2d, h_ut=DEFAULT_H_UT) -> np.ndarray:
    """Probability that a UMa link is line-of-sight (TR 38.901 Table 7.4.2-1, UMa row).

    Pr_LOS = 1 for d2D <= 18 m, otherwise
    [18/d2D + exp(-d2D/63) (1 - 18/d2D)] (1 + C'(h_UT) (5/4) (d2D/100)^3 exp(-d2D/150)),
    C'(h_UT) = 0 for h_UT <= 13 m and ((h_UT - 13)/10)^1.5 for 13 m < h_UT <= 23 m.
    d2D must be positive (any length: no 10 m lower limit here); h_UT must be in (0, 23] m.
    The result is capped at 1: for h_UT > 13 m the table's product exceeds 1 by up to a few tenths of
    a percent just beyond 18 m (e.g. 1.0025 at 18.1 m for h_UT = 20 m).
    """
    d2d = require_positive(d2d, "d2d")
    h_ut = require_in_range(require_positive(h_ut, "h_ut"), "h_ut", 0.0, 23.0, "TR 38.901 Table 7.4.2-1")
    c_prime = np.where(h_ut <= 13.0, 0.0, ((np.maximum(h_ut, 13.0) - 13.0) / 10.0) ** 1.5)
    # Evaluated on max(d2D, 18) so that the masked-out branch never divides by a tiny distance.
    d = np.maximum(d2d, 18.0)
    base = 18.0 / d + np.exp(-d / 63.0) * (1.0 - 18.0 / d)
    height_term = 1.0 + c_prime * 1.25 * (d / 100.0) ** 3 * np.exp(-d / 150.0)
    return np.where(d2d <= 18.0, 1.0, np.minimum(base * height_term, 1.0))


def environment_height_c(d2d, h_ut) -> np.ndarray:
    """C(d2D, h_UT) of Table 7.4.1-1 note 1, which sets P(h_E = 1 m) = 1 / (1 + C).

    C = 0 for h_UT < 13 m, ((h_UT - 13)/10)^1.5 g(d2D) for 13 m <= h_UT <= 23 m, with g(d2D) = 0 for
    d2D <= 18 m and (5/4) (d2D/100)^3 exp(-d2D/150) beyond.
    """
    d2d = require_positive(d2d, "d2d")
    h_ut = require_in_range(h_ut, "h_ut", 0.0, 23.0, "TR 38.901 Table 7.4.1-1 note 1")
    g = np.where(d2d <= 18.0, 0.0, 1.25 * (d2d / 100.0) ** 3 * np.exp(-d2d / 150.0))
    return np.where(h_ut < 13.0, 0.0, ((np.maximum(h_ut, 13.0) - 13.0) / 10.0) ** 1.5 * g)


def sample_environment_height(d2d, h_ut, rng: np.random.Generator) -> np.ndarray:
    """Draw the UMa effective environment height h_E in metres (Table 7.4.1-1, note 1).

    h_E = 1 m with probability 1 / (1 + C(d2D, h_UT)); otherwise uniform over {12, 15, ..., h_UT - 1.5}.
    For 13 m <= h_UT < 13.5 m that set is empty and h_E = 1 m is returned (the note does not cover it).
    Output has the broadcast shape of d2d and h_ut.
    """
    c = environment_height_c(d2d, h_ut)
    h_ut = np.broadcast_to(np.asarray(h_ut, dtype=np.float64), c.shape)
    num_choices = np.floor((h_ut - 1.5 - 12.0) / 3.0) + 1.0
    choice = 12.0 + 3.0 * np.floor(rng.random(c.shape) * np.maximum(num_choices, 1.0))
    use_default = (rng.random(c.shape) < 1.0 / (1.0 + c)) | (num_choices < 1.0)
    return np.where(use_default, DEFAULT_H_E, choice)


@dataclass(frozen=True)
class PathlossModel:
    """A named path-loss formula with the shadow-fading sigma the standard pairs it with."""

    name: str
    function: Callable[..., np.ndarray]  # (d2d, fc_ghz, h_bs=, h_ut=, clamp=) -> dB
    shadowing_std_db: float
    reference: str


PATHLOSS_MODELS: dict[str, PathlossModel] = {
    model.name: model
    for model in (
        PathlossModel("uma-los", uma_los, 4.0, "TR 38.901 Table 7.4.1-1, UMa LOS"),
        PathlossModel("uma-nlos", uma_nlos, 6.0, "TR 38.901 Table 7.4.1-1, UMa NLOS"),
        PathlossModel(
            "uma-nlos-optional", uma_nlos_optional, 7.8, "TR 38.901 Table 7.4.1-1, UMa NLOS optional"
        ),
    )
}
"""Registry of the UMa path-loss models by command-line name."""


def get_pathloss_model(name: str) -> PathlossModel:
    """Look up a model of `PATHLOSS_MODELS`; raise ValueError listing the known names otherwise."""
    try:
        return PATHLOSS_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PATHLOSS_MODELS))
        raise ValueError(f"unknown path-loss model {name!r}; known models: {known}") from None


def _check_frequency(fc_ghz) -> np.ndarray:
    return require_in_range(fc_ghz, "fc_ghz", MIN_FREQUENCY_GHZ, MAX_FREQUENCY_GHZ, _FREQUENCY_SOURCE)


def _check_ut_height(h_ut) -> np.ndarray:
    return require_in_range(h_ut, "h_ut", MIN_H_UT, MAX_H_UT, "TR 38.901 Table 7.4.1-1 note 1, UMa")


def _check_distance(d2d, clamp: bool) -> np.ndarray:
    d2d = require_positive(d2d, "d2d")
    if clamp:
        return np.clip(d2d, MIN_DISTANCE_2D, MAX_DISTANCE_2D)
    return require_in_range(d2d, "d2d", MIN_DISTANCE_2D, MAX_DISTANCE_2D, _DISTANCE_SOURCE)
