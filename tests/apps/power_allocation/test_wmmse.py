"""Tests of the WMMSE power-allocation baseline (apps/power_allocation/wmmse.py, docs/design.md, section 8).

The reference below is a deliberately plain loop over samples and links that follows the design's
(docs/design.md, section 8) formulas literally (including w = 1 / (1 − u H v)), written independently of the module.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from apps.power_allocation import wmmse as W


def wmmse_graph(H, sigma2, pmax, num_iterations):
    """W.wmmse without XLA: no per-shape compilation, so the many shapes below stay fast.

    The XLA path runs the same Python loop; test_xla_matches_graph_and_compiles_once compares them.
    """
    return W.wmmse(H, sigma2, pmax, num_iterations, jit_compile=False)


def random_channels(seed, batch, n, min_distance=0.03, dtype=np.float64):
    """Rayleigh-faded amplitude gains with d^-3.5 path-loss-like scaling, H[b, j, i]: tx j -> rx i.

    Transmitters uniform in the unit square, each receiver within 0.2 of its own transmitter; with
    σ² = 1 the direct-link SNRs span roughly 10-50 dB and cross links interfere noticeably.
    """
    rng = np.random.default_rng(seed)
    tx = rng.random((batch, n, 2))
    angle = rng.uniform(0, 2 * np.pi, (batch, n))
    radius = rng.uniform(0.02, 0.2, (batch, n))
    rx = tx + radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    distance = np.linalg.norm(tx[:, :, None, :] - rx[:, None, :, :], axis=-1)  # [b, j, i]
    path_gain = np.maximum(distance, min_distance) ** -3.5 * 1e-3
    rayleigh = np.abs(rng.normal(size=distance.shape) + 1j * rng.normal(size=distance.shape)) / np.sqrt(2)
    return (np.sqrt(path_gain) * rayleigh).astype(dtype)


def reference_wmmse(H, sigma2, pmax, num_iterations, a=None, b=None):
    """Loop-based WMMSE: returns the amplitudes v after each iteration, shape (iterations + 1, B, N)."""
    batch, n, _ = H.shape
    a = np.ones((batch, n)) if a is None else np.broadcast_to(a, (batch, n))
    b = np.zeros((batch, n)) if b is None else np.broadcast_to(b, (batch, n))
    v = np.full((batch, n), np.sqrt(pmax))
    history = [v.copy()]
    for _ in range(num_iterations):
        new_v = np.empty_like(v)
        for s in range(batch):
            Hs = H[s]
            u = np.empty(n)
            w = np.empty(n)
            for i in range(n):
                u[i] = Hs[i, i] * v[s, i] / (sigma2 + np.sum(Hs[:, i] ** 2 * v[s] ** 2))
                w[i] = 1.0 / (1.0 - u[i] * Hs[i, i] * v[s, i])
            w_hat = a[s] * w + b[s]
            for i in range(n):
                value = Hs[i, i] * u[i] * w_hat[i] / np.sum(Hs[i, :] ** 2 * u**2 * w_hat)
                new_v[s, i] = min(max(value, 0.0), np.sqrt(pmax))
        v = new_v
        history.append(v.copy())
    return np.array(history)


def reference_sum_rate(H, p, sigma2):
    batch, n, _ = H.shape
    total = np.zeros(batch)
    for s in range(batch):
        for i in range(n):
            interference = sum(H[s, j, i] ** 2 * p[s, j] for j in range(n) if j != i)
            total[s] += np.log2(1 + H[s, i, i] ** 2 * p[s, i] / (sigma2 + interference))
    return total


@pytest.mark.parametrize(("n", "seed"), [(5, 0), (13, 1), (25, 2)])
def test_matches_loop_reference_in_float64(n, seed):
    H = random_channels(seed, batch=6, n=n)
    sigma2, pmax = 1.0, 2.0
    history = reference_wmmse(H, sigma2, pmax, 100)
    for iterations in (1, 4, 100):
        p = wmmse_graph(H, sigma2, pmax, iterations).numpy()
        expected_p = history[iterations] ** 2
        np.testing.assert_allclose(p, expected_p, rtol=1e-10, atol=1e-12 * pmax)
        rate = W.sum_rate(H, p, sigma2).numpy()
        np.testing.assert_allclose(rate, reference_sum_rate(H, expected_p, sigma2), rtol=1e-10, atol=1e-10)


def test_two_user_case_by_hand():
    # H[j, i]: tx j -> rx i. Direct gains 1/2 and 1; tx 1 -> rx 0 is strong (2), tx 0 -> rx 1 is 1/2.
    # σ² = 1, Pmax = 1, v = (1, 1). One iteration, exact fractions:
    #   u_0 = (1/2) / (1 + 1/4 + 4) = 2/21          u_1 = 1 / (1 + 1/4 + 1) = 4/9
    #   w_0 = 1 / (1 - (2/21)(1/2)) = 21/20          w_1 = 1 / (1 - 4/9) = 9/5
    #   v_0 = (1/2)(2/21)(21/20) / [(1/4)(2/21)²(21/20) + (1/4)(4/9)²(9/5)] = (1/20) / (23/252) = 63/115
    #   v_1 = (4/9)(9/5) / [4 (2/21)²(21/20) + (4/9)²(9/5)] = (4/5) / (124/315) = 63/31 -> clipped to 1
    # Link 1 keeps full power; link 0, drowned by tx 1, backs off. With the H_ij/H_ji sums swapped the
    # result would be v = (1, 1) instead.
    H = np.array([[[0.5, 0.5], [2.0, 1.0]]])
    u, w = W.mmse_receiver(H, tf.ones((1, 2), tf.float64), 1.0)
    np.testing.assert_allclose(u.numpy(), [[2 / 21, 4 / 9]], rtol=1e-14)
    np.testing.assert_allclose(w.numpy(), [[21 / 20, 9 / 5]], rtol=1e-14)
    p = wmmse_graph(H, 1.0, 1.0, num_iterations=1).numpy()
    np.testing.assert_allclose(p, [[(63 / 115) ** 2, 1.0]], rtol=1e-14)
    # rates: SINR_0 = (1/4)(63/115)² / (1 + 4 · 1), SINR_1 = 1 / (1 + (1/4)(63/115)²)
    p0 = Fraction(63, 115) ** 2
    sinr = [p0 / 4 / 5, 1 / (1 + p0 / 4)]
    expected = sum(math.log2(1 + float(s)) for s in sinr)
    np.testing.assert_allclose(W.sum_rate(H, p, 1.0).numpy(), [expected], rtol=1e-14)
    np.testing.assert_allclose(
        W.link_rates(H, p, 1.0).numpy(), [[math.log2(1 + float(s)) for s in sinr]], rtol=1e-14
    )


def test_weighted_sum_mse_does_not_increase_over_block_updates():
    H = tf.constant(random_channels(3, batch=8, n=20))
    sigma2, pmax = 1.0, 1.5
    v = tf.fill((8, 20), tf.constant(math.sqrt(pmax), tf.float64))
    u, w = W.mmse_receiver(H, v, sigma2)
    objective = W.weighted_sum_mse(H, u, w, v, sigma2).numpy()
    n = 20
    for _ in range(40):
        # v-block: the clipped update minimises the objective over v for fixed (u, w)
        v = W.transmitter_update(H, u, w, pmax)
        after_v = W.weighted_sum_mse(H, u, w, v, sigma2).numpy()
        # u-block (w fixed), then w-block: each an exact minimiser
        u_new, w_new = W.mmse_receiver(H, v, sigma2)
        after_u = W.weighted_sum_mse(H, u_new, w, v, sigma2).numpy()
        after_w = W.weighted_sum_mse(H, u_new, w_new, v, sigma2).numpy()
        tolerance = 1e-12 * np.abs(objective) + 1e-12
        assert np.all(after_v <= objective + tolerance)
        assert np.all(after_u <= after_v + tolerance)
        assert np.all(after_w <= after_u + tolerance)
        # at the MMSE (u, w) of v the objective is N − ln 2 · sum-rate (Shi et al. 2011)
        rate = W.sum_rate(H, tf.square(v), sigma2).numpy()
        np.testing.assert_allclose(after_w, n - math.log(2) * rate, rtol=1e-10)
        u, w, objective = u_new, w_new, after_w


def test_sum_rate_increases_with_iterations():
    H = random_channels(4, batch=16, n=25)
    sigma2, pmax = 1.0, 1.0
    counts = [0, 1, 2, 4, 10, 30, 100]
    rates = np.array([W.sum_rate(H, wmmse_graph(H, sigma2, pmax, k), sigma2).numpy() for k in counts])
    # monotone per sample (the objective identity above), and strictly better on average
    assert np.all(np.diff(rates, axis=0) >= -1e-9 * rates[1:])
    assert rates[-1].mean() > rates[1].mean() + 0.1
    assert rates[2].mean() > rates[1].mean()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_powers_stay_within_budget(dtype):
    H = random_channels(5, batch=8, n=12, dtype=dtype)
    rng = np.random.default_rng(5)
    for pmax in (0.01, 1.0, 5.0):
        p = wmmse_graph(H, 1.0, pmax, 30).numpy()
        assert p.dtype == dtype
        assert np.all(p >= 0) and np.all(p <= pmax * (1 + 1e-6))
        # UWMMSE-style multipliers, including switched-off nodes (a = b = 0 gives v = 0, not NaN)
        a = rng.random((8, 12)).astype(dtype)
        b = rng.random((8, 12)).astype(dtype)
        a[:, 0], b[:, 0] = 0, 0
        v = tf.fill((8, 12), tf.constant(math.sqrt(pmax), dtype))
        for _ in range(4):
            v = W.wmmse_step(H, v, 1.0, pmax, a=a, b=b)
        v = v.numpy()
        assert np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(v <= math.sqrt(pmax) * (1 + 1e-6))
        assert np.all(v[:, 0] == 0)


def test_step_with_multipliers_matches_reference():
    H = random_channels(6, batch=4, n=9)
    rng = np.random.default_rng(6)
    a, b = rng.random((4, 9)), rng.random((4, 9))
    v = tf.fill((4, 9), tf.constant(1.0, tf.float64))
    expected = reference_wmmse(H, 0.5, 1.0, 4, a=a, b=b)
    for k in range(1, 5):
        v = W.wmmse_step(H, v, 0.5, 1.0, a=a, b=b)
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-10)
    # a common scale of ŵ cancels in the v update: a = 3, b = 0 is plain WMMSE
    v0 = tf.fill((4, 9), tf.constant(1.0, tf.float64))
    np.testing.assert_allclose(
        W.wmmse_step(H, v0, 0.5, 1.0, a=3.0).numpy(), W.wmmse_step(H, v0, 0.5, 1.0).numpy(), rtol=1e-12
    )


def test_gradients_flow_into_multipliers():
    H = tf.constant(random_channels(7, batch=4, n=6))
    a = tf.Variable(tf.fill((4, 6), tf.constant(0.8, tf.float64)))
    b = tf.Variable(tf.fill((4, 6), tf.constant(0.1, tf.float64)))
    pmax = 1e3  # large budget so that the clip is inactive and the gradient is non-zero
    with tf.GradientTape() as tape:
        v = tf.fill((4, 6), tf.constant(math.sqrt(pmax), tf.float64))
        for _ in range(4):
            v = W.wmmse_step(H, v, 1.0, pmax, a=a, b=b)
        loss = -tf.reduce_mean(W.sum_rate(H, tf.square(v), 1.0))
    grad_a, grad_b = tape.gradient(loss, [a, b])
    assert np.all(np.isfinite(grad_a.numpy())) and np.any(grad_a.numpy() != 0)
    assert np.all(np.isfinite(grad_b.numpy())) and np.any(grad_b.numpy() != 0)


def test_float32_is_stable_at_realistic_snr():
    # docs/design.md, section 7 scales: amplitudes 10^(-PL/20) × Rayleigh, σ² = -106.87 dBm, Pmax = 5 W, cross
    # links beyond 138.86 dB path loss zeroed by the control-channel threshold. Receivers 0-4 hear no
    # other transmitter (isolated pairs), so their short links have SINR up to ~1e8, where
    # 1 − u H v cancels to 0 in float32 (w = inf, then NaN powers).
    rng = np.random.default_rng(8)
    batch, n = 8, 25
    path_loss_db = rng.uniform(110, 160, (batch, n, n))
    path_loss_db[:, :, :5] = np.inf
    path_loss_db[:, np.arange(n), np.arange(n)] = rng.uniform(61.5, 110, (batch, n))
    path_loss_db[:, :5, :5] = np.where(np.eye(5, dtype=bool), rng.uniform(61.5, 65, (batch, 5, 5)), np.inf)
    rayleigh = np.abs(rng.normal(size=(batch, n, n)) + 1j * rng.normal(size=(batch, n, n))) / np.sqrt(2)
    H = np.where(path_loss_db > 138.86, 0.0, 10 ** (-path_loss_db / 20) * rayleigh)
    sigma2 = 10 ** ((-106.87 - 30) / 10)
    direct_snr = np.diagonal(H, axis1=1, axis2=2) ** 2 * 5.0 / sigma2
    assert direct_snr[:, :5].max() > 1e8  # the regime this test is about
    rate64 = W.sum_rate(H, W.wmmse(H, sigma2, 5.0, 100), sigma2).numpy()
    H32 = H.astype(np.float32)
    p32 = W.wmmse(H32, sigma2, 5.0, 100)  # the default, XLA-compiled path
    rate32 = W.sum_rate(H32, p32, sigma2).numpy()
    assert np.all(np.isfinite(p32.numpy()))
    np.testing.assert_allclose(rate32, rate64, rtol=1e-3)


def test_one_trace_serves_all_iteration_counts_and_scalars():
    H = random_channels(9, batch=4, n=7)
    wmmse_graph(H, 1.0, 1.0, 1)  # warm-up: may trace for this dtype
    traces = W._wmmse_graph.experimental_get_tracing_count()
    wmmse_graph(H, 0.5, 2.0, 4)
    wmmse_graph(H, 2.0, 3.0, 100)
    assert W._wmmse_graph.experimental_get_tracing_count() == traces
    np.testing.assert_allclose(wmmse_graph(H, 1.0, 3.0, 0).numpy(), np.full((4, 7), 3.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xla_matches_graph_and_compiles_once(dtype):
    # Same shape as test_float32_is_stable_at_realistic_snr, so the XLA cache is shared.
    H = random_channels(10, batch=8, n=25, dtype=dtype)
    W.wmmse(H, 1.0, 2.0, 1)
    traces = W._wmmse_xla.experimental_get_tracing_count()
    for iterations in (0, 4, 100):
        xla = W.wmmse(H, 1.0, 2.0, iterations).numpy()
        graph = wmmse_graph(H, 1.0, 2.0, iterations).numpy()
        assert xla.dtype == dtype
        np.testing.assert_allclose(xla, graph, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-7)
    assert W._wmmse_xla.experimental_get_tracing_count() == traces


@pytest.mark.parametrize(
    ("H", "sigma2", "pmax", "iterations", "message"),
    [
        (np.ones((2, 3, 3), dtype=np.int32), 1.0, 1.0, 4, "float32 or float64"),
        (np.ones((2, 3, 4)), 1.0, 1.0, 4, r"\(\.\.\., N, N\)"),
        (np.ones(3), 1.0, 1.0, 4, r"\(\.\.\., N, N\)"),
        (np.ones((2, 3, 3)), 0.0, 1.0, 4, "sigma2"),
        (np.ones((2, 3, 3)), 1.0, -1.0, 4, "pmax"),
        (np.ones((2, 3, 3)), 1.0, float("nan"), 4, "pmax"),
        (np.ones((2, 3, 3)), 1.0, 1.0, -1, "num_iterations"),
        (np.ones((2, 3, 3)), 1.0, 1.0, 2.5, "num_iterations"),
    ],
)
def test_invalid_inputs_raise_clear_errors(H, sigma2, pmax, iterations, message):
    with pytest.raises(ValueError, match=message):
        wmmse_graph(H, sigma2, pmax, iterations)


def test_clipped_transmitter_update_has_finite_gradients():
    """A tiny feedback sum makes the unclipped amplitude overflow float32; the clipped update must still
    back-propagate finite gradients (it used to give 0 * inf = NaN and poison training)."""
    rng = np.random.default_rng(0)
    H = tf.constant(rng.uniform(1e-3, 1e-2, (2, 4, 4)), tf.float32)
    u = tf.constant(rng.uniform(1e-16, 1e-15, (2, 4)), tf.float32)
    w_hat = tf.Variable(rng.uniform(1e-3, 1.0, (2, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        v = W.transmitter_update(H, u, w_hat, pmax=1.0)
        objective = tf.reduce_sum(v)
    grad = tape.gradient(objective, w_hat)
    np.testing.assert_allclose(v.numpy(), 1.0)  # every amplitude at its budget, none above
    assert np.all(np.isfinite(grad.numpy()))


# σ² = -106.87 dBm and a Pmax that float32 cannot hold: either, cast through float32 (tf.cast of a Python
# float), is off by up to 6e-8 relative, far above float64 round-off.
SIGMA2_W = 10 ** ((-106.87 - 30) / 10)
PMAX_W = 0.2


def test_noise_and_pmax_are_the_exact_float64_values():
    H = random_channels(11, batch=3, n=4) * math.sqrt(SIGMA2_W)
    for value in (SIGMA2_W, PMAX_W, np.float64(PMAX_W)):
        assert W.in_dtype(value, tf.float64).numpy() == float(value)
        assert W.in_dtype(value, tf.float32).numpy() == np.float32(value)
    assert W.in_dtype(tf.constant(PMAX_W, tf.float64), tf.float64).numpy() == PMAX_W  # tensors are kept
    # zero iterations: p = (√Pmax)² with √Pmax computed from the float64 Pmax, on both compiled paths
    expected = np.full((3, 4), np.sqrt(PMAX_W) ** 2)
    np.testing.assert_array_equal(wmmse_graph(H, SIGMA2_W, PMAX_W, 0).numpy(), expected)
    np.testing.assert_array_equal(W.wmmse(H, SIGMA2_W, PMAX_W, 0).numpy(), expected)
    # the clip of the transmitter update is √Pmax of the float64 Pmax (isolated links, v_i = 1 / u_i = 1e6)
    u, w = tf.constant(np.full((3, 4), 1e-6)), tf.ones((3, 4), tf.float64)
    v = W.transmitter_update(tf.constant(np.eye(4)[None].repeat(3, 0)), u, w, PMAX_W).numpy()
    np.testing.assert_array_equal(v, np.full((3, 4), np.sqrt(PMAX_W)))


def test_float64_wmmse_at_realistic_noise_matches_the_numpy_reference():
    """Noise-limited links at σ² ~ 2e-14 W: the float64 run follows the NumPy float64 loop to round-off,
    which a float32-rounded σ² or Pmax (relative error ~1e-8) would not."""
    H = random_channels(12, batch=4, n=6) * math.sqrt(SIGMA2_W)  # SNRs of 10-50 dB at this σ²
    history = reference_wmmse(H, SIGMA2_W, PMAX_W, 10)
    p = wmmse_graph(H, SIGMA2_W, PMAX_W, 10).numpy()
    np.testing.assert_allclose(p, history[10] ** 2, rtol=1e-12, atol=0)
    rates = W.link_rates(H, p, SIGMA2_W).numpy().sum(-1)
    np.testing.assert_allclose(rates, reference_sum_rate(H, p, SIGMA2_W), rtol=1e-13)
    rounded = float(np.float32(SIGMA2_W))  # what tf.cast(SIGMA2_W, tf.float64) gave
    off = wmmse_graph(H, rounded, float(np.float32(PMAX_W)), 10).numpy()
    assert np.abs(off / (history[10] ** 2) - 1).max() > 1e-10  # the test would see the float32 constants
