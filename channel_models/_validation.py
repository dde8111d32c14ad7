"""Argument checks shared by the channel-model modules.

Every public function of `channel_models` validates its inputs through these helpers so that a bad
value fails early with a `ValueError` that names the argument, the rule it broke and the offending
value, instead of silently producing NaN or -inf decibels deep inside a vectorized expression.
"""

from __future__ import annotations

import numpy as np


def as_float_array(value, name: str) -> np.ndarray:
    """Return `value` as a float64 array; raise ValueError if any entry is NaN or infinite."""
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {_describe(array[~np.isfinite(array)])}")
    return array


def require_positive(value, name: str) -> np.ndarray:
    """Return `value` as a float64 array; raise ValueError unless every entry is finite and > 0."""
    array = as_float_array(value, name)
    if np.any(array <= 0):
        raise ValueError(f"{name} must be > 0, got {_describe(array[array <= 0])}")
    return array


def require_non_negative(value, name: str) -> np.ndarray:
    """Return `value` as a float64 array; raise ValueError unless every entry is finite and >= 0."""
    array = as_float_array(value, name)
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0, got {_describe(array[array < 0])}")
    return array


def require_in_range(value, name: str, low: float, high: float, source: str) -> np.ndarray:
    """Return `value` as a float64 array; raise ValueError unless low <= value <= high everywhere.

    `source` names the rule (e.g. a TR 38.901 table) so the message tells the user why the range holds.
    """
    array = as_float_array(value, name)
    outside = (array < low) | (array > high)
    if np.any(outside):
        raise ValueError(f"{name} must be in [{low:g}, {high:g}] ({source}), got {_describe(array[outside])}")
    return array


def _describe(bad: np.ndarray) -> str:
    """Short description of offending values: the value itself, or a count and an example."""
    flat = np.ravel(bad)
    if flat.size == 1:
        return f"{flat[0]:g}"
    return f"{flat.size} bad values, e.g. {flat[0]:g}"
