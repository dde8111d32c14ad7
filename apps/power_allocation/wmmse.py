"""WMMSE power allocation for sum-rate maximisation, batched in TensorFlow (docs/design.md, section 8).

This is the baseline of paper Section IV-B ("WMMSE", 100 iterations, and "WMMSE-Tr", 4) and the
building block of the unfolded UWMMSE: `wmmse_step` takes optional per-node multipliers a, b so that
the learned version runs exactly the same update with ŵ = a ⊙ w + b.

Channel convention (docs/design.md, section 7): H has shape (..., N, N) and H[..., j, i] is the amplitude gain
from transmitter j to receiver i; H[..., i, i] is the direct link of pair i. Transmit amplitudes v
(..., N), powers p = v², noise power σ², power budget Pmax per transmitter.

Derivation (Shi, Razaviyayn, Luo, Hong, IEEE TSP 2011, SISO interference channel, rate weights α = 1).
Shi et al. write h_kj for the gain from transmitter j to receiver k, i.e. h_kj = H[j, k] here. WMMSE
solves min over (u, w, v) of Σ_i (w_i e_i − log w_i) s.t. 0 <= v_i <= √Pmax, where the MSE of pair i
with receive coefficient u_i is
    e_i = (1 − u_i H_ii v_i)² + u_i² (σ² + Σ_{j≠i} H_ji² v_j²),
by block-coordinate descent; each block update is an exact minimiser:
    u_i = H_ii v_i / (σ² + Σ_j H_ji² v_j²)     sum over TRANSMITTERS j: everything receiver i hears
                                                (column i of H², i.e. H²ᵀ v²);
    w_i = 1 / (1 − u_i H_ii v_i) = 1 / e_i;
    v_i = H_ii u_i w_i / Σ_j H_ij² u_j² w_j     sum over RECEIVERS j: the interference transmitter i
                                                causes at every receiver j, weighted by that
                                                receiver's u_j² w_j (row i of H², i.e. H² (u² w)),
clipped to [0, √Pmax]. The v-subproblem separates over transmitters into 1-D convex quadratics, so the
clip is the exact constrained minimiser and the objective never increases (Shi et al.); at
the optimal (u, w) for a given v it equals N − ln 2 · Σ_i rate_i, so the sum-rate never decreases.
These are docs/design.md, section 8's formulas and the updates unfolded by Chowdhury et al. (UWMMSE, IEEE TWC
2021); the paper authors' code uses the same index pattern (Hᵀ-product for u, H-product for v).

Neighbour sums: a WMMSE step needs two sums over other pairs, the interference Σ_{j≠i} H_ji² v_j² heard
by receiver i and the feedback Σ_j H_ij² x_j collected by transmitter i. `ChannelSums` computes them as
dense batched products (centralized); every function here takes an optional `sums` object with the
same two methods, so that a distributed implementation can make each sum a counted neighbour exchange
(apps/power_allocation/uwmmse.py) while running exactly these formulas.

Numerics: w_i is evaluated as (σ² + Σ_j H_ji² v_j²) / (σ² + Σ_{j≠i} H_ji² v_j²), algebraically equal
to 1 / (1 − u_i H_ii v_i) for the MMSE u_i but free of the cancellation in 1 − u_i H_ii v_i = 1/(1 + SINR_i):
in float32 that difference has relative error ~6e-8 · SINR and rounds to 0 (w = inf) beyond SINR ~3e7,
and short links under the docs/design.md, section 7 channel model reach SNR ~1e8 (61.5 dB path loss at 10 m,
Pmax = 5 W, σ² ≈ 2e-14 W). Rates likewise use the off-diagonal sum rather than a difference.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = [
    "ChannelSums",
    "in_dtype",
    "link_rates",
    "mmse_receiver",
    "sum_rate",
    "transmitter_update",
    "weighted_sum_mse",
    "wmmse",
    "wmmse_step",
]


def in_dtype(x, dtype):
    """``x`` as a tensor of ``dtype``, a Python or NumPy number built directly in that dtype.

    ``tf.cast(2e-14, tf.float64)`` first makes a float32 tensor of the Python float, so σ² and Pmax
    of float64 runs would carry float32 rounding (relative error up to 6e-8); a tensor is cast.
    """
    return tf.cast(x, dtype) if tf.is_tensor(x) else tf.constant(x, dtype)


class ChannelSums:
    """The two neighbour sums of WMMSE for a channel H (..., N, N), as dense batched products.

    `interference(p)_i = Σ_{j≠i} H_ji² p_j`: what receiver i hears from the other transmitters
    (column i of H² without the diagonal, i.e. H²ᵀ p); `feedback(x)_i = Σ_j H_ij² x_j`: the
    interference transmitter i causes at every receiver j, priced by x_j (row i of H², i.e. H² x).
    `direct` is diag(H). Replace this object to change how the sums are computed (see module docstring).
    """

    def __init__(self, H):
        H_sq = tf.square(H)
        self.direct = tf.linalg.diag_part(H)
        self._H_sq = H_sq
        self._H_sq_off = tf.linalg.set_diag(H_sq, tf.zeros_like(self.direct))

    def interference(self, p):
        return tf.linalg.matvec(self._H_sq_off, p, transpose_a=True)  # Σ_j H_sq_off[j, i] p_j

    def feedback(self, x):
        return tf.linalg.matvec(self._H_sq, x)  # Σ_j H_sq[i, j] x_j


def mmse_receiver(H, v, sigma2, sums=None):
    """MMSE receive coefficients u and MSE weights w for transmit amplitudes v.

    u_i = H_ii v_i / (σ² + Σ_j H_ji² v_j²) and w_i = 1 / (1 − u_i H_ii v_i) (docs/design.md, section 8), w in
    the cancellation-free form of the module docstring. H (..., N, N), v (..., N) -> (u, w) (..., N).
    `sums` computes the interference sum (default `ChannelSums(H)`).
    """
    sums = ChannelSums(H) if sums is None else sums
    H_diag = sums.direct
    noise_and_interference = sigma2 + sums.interference(tf.square(v))
    received = noise_and_interference + tf.square(H_diag * v)  # σ² + Σ_j H_ji² v_j²
    u = H_diag * v / received
    w = received / noise_and_interference
    return u, w


def transmitter_update(H, u, w_hat, pmax, sums=None):
    """v_i = H_ii u_i ŵ_i / Σ_j H_ij² u_j² ŵ_j, clipped to [0, √Pmax] (docs/design.md, section 8).

    The denominator runs over receivers j (row i of H²): the interference transmitter i causes at
    receiver j, priced by that receiver's u_j² ŵ_j. A zero denominator implies a zero numerator
    (the j = i term is H_ii² u_i² ŵ_i); such a transmitter is switched off (v_i = 0) instead of NaN.
    H (..., N, N), u and w_hat (..., N) -> v (..., N). `sums` computes the feedback sum (default
    `ChannelSums(H)`).
    """
    sums = ChannelSums(H) if sums is None else sums
    H_diag = sums.direct
    pmax = in_dtype(pmax, H.dtype)
    denominator = sums.feedback(tf.square(u) * w_hat)  # Σ_j H_sq[i, j] u_j² ŵ_j
    numerator = H_diag * u * w_hat
    root_pmax = tf.sqrt(pmax)
    # clip(numerator / denominator, 0, √Pmax) without forming the quotient where it exceeds √Pmax: a
    # tiny denominator made it overflow to inf, and the clipped entry then back-propagated 0 * inf =
    # NaN through the division (C-Adam training turned NaN after 14 paper epochs).
    v = tf.math.divide_no_nan(numerator, tf.maximum(denominator, numerator / root_pmax))
    return tf.clip_by_value(v, tf.zeros_like(v), root_pmax)


def wmmse_step(H, v, sigma2, pmax, a=None, b=None, sums=None):
    """One WMMSE iteration v -> v' (one UWMMSE layer when a, b are given); docs/design.md, section 8.

    u, w = mmse_receiver(H, v, σ²); ŵ = a ⊙ w + b (a = 1 and b = 0 when omitted: plain WMMSE);
    v' = transmitter_update(H, u, ŵ, Pmax).

    Args:
      H: (..., N, N) float32/float64 amplitude gains, H[..., j, i] from transmitter j to receiver i.
      v: (..., N) current transmit amplitudes in [0, √Pmax].
      sigma2, pmax: noise power and power budget (scalars or tensors broadcastable to (..., N)).
      a, b: optional per-node multipliers broadcastable to (..., N), e.g. GCNN outputs squeezed to
        shape (B, N); differentiable, so gradients flow into whatever produced them.
      sums: how the step's two neighbour sums are computed (default `ChannelSums(H)`; see the module
        docstring).

    Returns:
      v' with the shape of v.
    """
    sigma2 = in_dtype(sigma2, H.dtype)
    sums = ChannelSums(H) if sums is None else sums
    u, w = mmse_receiver(H, v, sigma2, sums)
    w_hat = w
    if a is not None:
        w_hat = in_dtype(a, H.dtype) * w_hat
    if b is not None:
        w_hat = w_hat + in_dtype(b, H.dtype)
    return transmitter_update(H, u, w_hat, pmax, sums)


def _wmmse_loop(H, sigma2, pmax, num_iterations):
    # A tensor-valued loop condition makes AutoGraph emit one tf.while_loop whose trip count is a
    # runtime value: 4 and 100 iterations share one trace and, under XLA, one compilation (a
    # tf.range bound would be a compile-time constant to XLA and recompile for every count).
    v = tf.ones_like(H[..., 0]) * tf.sqrt(pmax)  # v_i initialised to √Pmax (docs/design.md, section 8)
    iteration = tf.constant(0, tf.int32)
    while iteration < num_iterations:
        v = wmmse_step(H, v, sigma2, pmax)
        iteration += 1
    return tf.square(v)


# XLA fuses the dozen tiny (B, N, N) ops of an iteration: 4-10x faster than the plain graph for
# B = 64, N = 25 and 100 iterations (benchmarks/bench_lgs_wmmse.py), at the price of one compilation
# (~0.5-2 s) per input shape and dtype. The plain graph suits one-off calls on many shapes (tests).
_wmmse_xla = tf.function(_wmmse_loop, reduce_retracing=True, jit_compile=True)
_wmmse_graph = tf.function(_wmmse_loop, reduce_retracing=True)


def wmmse(H, sigma2, pmax, num_iterations: int = 100, *, jit_compile: bool = True):
    """WMMSE power allocation: `num_iterations` steps from v = √Pmax; returns powers p = v² (..., N).

    100 iterations is the paper's "WMMSE" baseline, 4 its truncated "WMMSE-Tr". H is a (..., N, N)
    float32/float64 tensor or array (H[..., j, i]: transmitter j to receiver i); sigma2 > 0 and
    pmax > 0 are scalars. Runs as a compiled tf.function, XLA-compiled unless jit_compile=False;
    neither retraces nor recompiles across iteration counts or scalar values.
    """
    H = tf.convert_to_tensor(H)
    if H.dtype not in (tf.float32, tf.float64):
        raise ValueError(f"H must be float32 or float64, got {H.dtype.name}")
    if H.shape.rank is None or H.shape.rank < 2 or (
        H.shape[-1] is not None and H.shape[-2] is not None and H.shape[-1] != H.shape[-2]
    ):
        raise ValueError(f"H must have shape (..., N, N), got {H.shape}")
    if int(num_iterations) != num_iterations or num_iterations < 0:
        raise ValueError(f"num_iterations must be a non-negative integer, got {num_iterations}")
    for name, value in (("sigma2", sigma2), ("pmax", pmax)):
        if tf.is_tensor(value) and not tf.executing_eagerly():
            continue  # symbolic inside someone's graph: cannot be checked here
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"{name} must be a finite positive scalar, got {value}")
    run = _wmmse_xla if jit_compile else _wmmse_graph
    return run(
        H,
        in_dtype(sigma2, H.dtype),
        in_dtype(pmax, H.dtype),
        tf.constant(int(num_iterations), tf.int32),
    )


def link_rates(H, p, sigma2, sums=None):
    """Per-link rates log2(1 + H_ii² p_i / (σ² + Σ_{j≠i} H_ji² p_j)) in bit/s/Hz, shape (..., N).

    `sums` computes the interference sum (default `ChannelSums(H)`).
    """
    p = tf.convert_to_tensor(p)
    H = in_dtype(H, p.dtype)
    sums = ChannelSums(H) if sums is None else sums
    sinr = tf.square(sums.direct) * p / (in_dtype(sigma2, p.dtype) + sums.interference(p))
    return tf.math.log1p(sinr) / tf.constant(math.log(2.0), p.dtype)  # ln 2 in full precision of p


def sum_rate(H, p, sigma2, sums=None):
    """Sum over links of `link_rates`: the per-sample sum-rate (...,) in bit/s/Hz."""
    return tf.reduce_sum(link_rates(H, p, sigma2, sums), axis=-1)


def weighted_sum_mse(H, u, w, v, sigma2):
    """The WMMSE objective Σ_i (w_i e_i − ln w_i) per sample (...,), which every WMMSE block update
    does not increase; e_i = (1 − u_i H_ii v_i)² + u_i² (σ² + Σ_{j≠i} H_ji² v_j²) (Shi et al. 2011).

    At the MMSE (u, w) of a given v it equals N − ln 2 · sum_rate(H, v², σ²).
    """
    v = tf.convert_to_tensor(v)
    H = in_dtype(H, v.dtype)
    sums = ChannelSums(H)
    mse = tf.square(1.0 - u * sums.direct * v) + tf.square(u) * (
        in_dtype(sigma2, v.dtype) + sums.interference(tf.square(v))
    )
    return tf.reduce_sum(w * mse - tf.math.log(w), axis=-1)
