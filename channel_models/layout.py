"""Node layouts of transmitter-receiver pairs in the plane, and the distances between them.

Two layouts:

* `uniform_square_layout`: transmitters and receivers placed independently and uniformly in a square
  of side `side_m` centred at the origin (x, y ~ U(-side/2, side/2)); this is the paper preset
  (docs/design.md, section 7: 25 pairs in 1 km x 1 km).
* `paired_disc_layout`: transmitters uniform in a disc of radius `radius_m`; each receiver uniform in
  the annulus min_distance <= r <= max_distance around its own transmitter (so direct links are short).

Positions have shape (*batch_shape, num_pairs, 2) in metres; row i of `tx` and `rx` is pair i.
"""

from __future__ import annotations

import numpy as np

from channel_models._validation import require_non_negative, require_positive


def uniform_square_layout(
    num_pairs: int, side_m: float, rng: np.random.Generator, batch_shape: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Independent uniform transmitter and receiver positions in a square centred at the origin.

    Returns (tx, rx), each of shape (*batch_shape, num_pairs, 2), float64, in metres.
    Raises ValueError for num_pairs < 1 or a non-positive side.
    """
    shape = (*batch_shape, _check_count(num_pairs), 2)
    half = 0.5 * float(require_positive(side_m, "side_m"))
    tx = rng.uniform(-half, half, size=shape)
    rx = rng.uniform(-half, half, size=shape)
    return tx, rx


def paired_disc_layout(
    num_pairs: int,
    radius_m: float,
    min_distance_m: float,
    max_distance_m: float,
    rng: np.random.Generator,
    batch_shape: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Transmitters uniform in a disc; each receiver uniform in an annulus around its transmitter.

    The receiver of pair i lies at distance in [min_distance_m, max_distance_m] from transmitter i,
    uniformly over the annulus area (so it may lie outside the transmitter disc). Returns (tx, rx),
    each of shape (*batch_shape, num_pairs, 2). Raises ValueError for num_pairs < 1, a non-positive
    radius or max distance, a negative min distance, or min > max.
    """
    shape = (*batch_shape, _check_count(num_pairs))
    radius = float(require_positive(radius_m, "radius_m"))
    low = float(require_non_negative(min_distance_m, "min_distance_m"))
    high = float(require_positive(max_distance_m, "max_distance_m"))
    if low > high:
        raise ValueError(f"min_distance_m ({low:g}) must not exceed max_distance_m ({high:g})")
    tx = _polar_to_xy(_annulus_radius(0.0, radius, shape, rng), rng.uniform(0.0, 2.0 * np.pi, shape))
    offset = _polar_to_xy(_annulus_radius(low, high, shape, rng), rng.uniform(0.0, 2.0 * np.pi, shape))
    return tx, tx + offset


def link_distances(tx: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """Horizontal distances d[..., j, i] = ||tx[..., j, :] - rx[..., i, :]|| in metres.

    Index convention of docs/design.md, section 7: row j is the transmitter, column i the receiver, so the
    diagonal holds the direct links. tx and rx have shape (..., N, 2); the result (..., N, N).
    """
    tx = np.asarray(tx, dtype=np.float64)
    rx = np.asarray(rx, dtype=np.float64)
    if tx.shape != rx.shape or tx.shape[-1:] != (2,):
        raise ValueError(f"tx and rx must have equal shapes (..., N, 2), got {tx.shape} and {rx.shape}")
    delta = tx[..., :, None, :] - rx[..., None, :, :]
    return np.hypot(delta[..., 0], delta[..., 1])


def _check_count(num_pairs: int) -> int:
    if int(num_pairs) != num_pairs or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}")
    return int(num_pairs)


def _annulus_radius(low: float, high: float, shape, rng: np.random.Generator) -> np.ndarray:
    # Uniform over the area: the squared radius is uniform between low^2 and high^2.
    return np.sqrt(rng.uniform(low * low, high * high, shape))


def _polar_to_xy(radius: np.ndarray, angle: np.ndarray) -> np.ndarray:
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
