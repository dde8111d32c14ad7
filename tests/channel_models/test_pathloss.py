"""UMa path loss, breakpoint and LOS probability against hand-computed TR 38.901 values.

Reference numbers: docs/design.md, section 7 (f_c 3.5 GHz, h_BS 25 m, h_UT 1.5 m) plus values computed by
hand from Tables 7.4.1-1 / 7.4.2-1 with d3D = sqrt(d2D^2 + 23.5^2) on both sides of the 560 m
breakpoint and of the 18 m LOS limit.
"""

import numpy as np
import pytest

from channel_models import pathloss as pl

FC = 3.5

# d2D (m): (LOS, NLOS, NLOS optional) in dB.
REFERENCE_DB = {
    10.0: (69.84, 79.42, 85.50),
    100.0: (83.14, 103.04, 103.63),
    559.0: (99.33, 131.81, 125.72),
    561.0: (99.38, 131.87, 125.76),
    1000.0: (109.41, 141.67, 133.28),
    2000.0: (121.45, 153.43, 142.31),
    5000.0: (137.37, 168.98, 154.25),
}


@pytest.mark.parametrize("d2d", sorted(REFERENCE_DB))
def test_reference_values(d2d):
    los, nlos, optional = REFERENCE_DB[d2d]
    assert pl.uma_los(d2d, FC) == pytest.approx(los, abs=0.005)
    assert pl.uma_nlos(d2d, FC) == pytest.approx(nlos, abs=0.005)
    assert pl.uma_nlos_optional(d2d, FC) == pytest.approx(optional, abs=0.005)


def test_vectorized_over_distances_and_shape_kept():
    d = np.array([[10.0, 100.0], [1000.0, 5000.0]])
    expected = np.array([[69.84, 83.14], [109.41, 137.37]])
    np.testing.assert_allclose(pl.uma_los(d, FC), expected, atol=0.005)
    assert pl.uma_nlos(d, FC).shape == (2, 2)


def test_breakpoint_distance():
    assert pl.breakpoint_distance(FC) == pytest.approx(560.0, abs=1e-9)
    # Linear in f_c and in each effective height h - h_E.
    assert pl.breakpoint_distance(28.0) == pytest.approx(4480.0)
    assert pl.breakpoint_distance(FC, h_ut=2.0) == pytest.approx(1120.0)
    assert pl.breakpoint_distance(FC, h_e=0.5) == pytest.approx(4 * 24.5 * 1.0 * 3.5e9 / 3e8)


def test_los_is_continuous_at_the_breakpoint():
    # PL2 - PL1 = 9 log10(d3D^2) - 9 log10(d'_BP^2 + dh^2) vanishes at d2D = d'_BP.
    d_bp = float(pl.breakpoint_distance(FC))
    below, above = pl.uma_los([d_bp, d_bp * (1 + 1e-12)], FC)
    assert above == pytest.approx(below, abs=1e-9)
    # ... but the slope changes from 22 to 40 dB per decade of d3D.
    slope = (pl.uma_los(5000.0, FC) - pl.uma_los(2000.0, FC)) / np.log10(
        pl.distance_3d(5000.0) / pl.distance_3d(2000.0)
    )
    assert slope == pytest.approx(40.0)


def test_formulas_use_3d_distance():
    # At 10 m, d3D = 25.54 m: using d2D instead would give 22 log10(10) + ... = 60.88 dB.
    assert pl.distance_3d(10.0) == pytest.approx(np.hypot(10.0, 23.5))
    assert pl.uma_los(10.0, FC) - (28.0 + 22.0 + 20.0 * np.log10(FC)) == pytest.approx(8.96, abs=0.01)
    # Equal heights (the paper preset): d3D == d2D.
    assert pl.uma_nlos_optional(100.0, 0.9, h_bs=1.5, h_ut=1.5) == pytest.approx(
        32.4 + 20 * np.log10(0.9) + 60.0
    )


def test_nlos_never_below_los():
    d = np.geomspace(10.0, 5000.0, 200)
    assert np.all(pl.uma_nlos(d, FC) >= pl.uma_los(d, FC))
    # Taller UT lowers NLOS' by 0.6 dB per metre until LOS takes over (far from it at 1 km).
    diff = pl.uma_nlos(1000.0, FC, h_ut=11.5) - pl.uma_nlos(1000.0, FC, h_ut=1.5)
    d3_ratio = 39.08 * np.log10(pl.distance_3d(1000.0, 25, 11.5) / pl.distance_3d(1000.0, 25, 1.5))
    assert diff == pytest.approx(-6.0 + d3_ratio)


@pytest.mark.parametrize(
    ("d2d", "h_ut", "expected"),
    [
        (5.0, 1.5, 1.0),
        (18.0, 1.5, 1.0),
        (18.1, 1.5, 0.9986),
        (50.0, 1.5, 0.6494),
        (100.0, 1.5, 0.3477),
        (200.0, 1.5, 0.1280),
        (1000.0, 1.5, 0.0180),
        (50.0, 20.0, 0.6920),
        (100.0, 20.0, 0.4783),
        (200.0, 20.0, 0.3257),
    ],
)
def test_los_probability(d2d, h_ut, expected):
    assert pl.uma_los_probability(d2d, h_ut) == pytest.approx(expected, abs=5e-5)


def test_los_probability_capped_at_one_just_beyond_18m():
    # The table's product is 1.0025 at 18.1 m for h_UT = 20 m.
    assert pl.uma_los_probability(18.1, 20.0) == 1.0
    p = pl.uma_los_probability(np.linspace(1.0, 3000.0, 500), 13.0)
    assert np.all((p > 0) & (p <= 1)) and np.all(np.diff(p) <= 0)


def test_environment_height():
    rng = np.random.default_rng(0)
    # Short UTs and short links: always 1 m.
    assert np.all(pl.sample_environment_height(np.full(100, 300.0), 1.5, rng) == 1.0)
    assert np.all(pl.sample_environment_height(np.full(100, 15.0), 22.5, rng) == 1.0)
    # h_UT = 22.5 m at 300 m: P(h_E = 1) = 1 / (1 + C), otherwise uniform on {12, 15, 18, 21}.
    c = float(pl.environment_height_c(300.0, 22.5))
    assert c == pytest.approx((0.95**1.5) * 1.25 * 27 * np.exp(-2.0))
    draws = pl.sample_environment_height(np.full(200_000, 300.0), 22.5, rng)
    assert set(np.unique(draws)) == {1.0, 12.0, 15.0, 18.0, 21.0}
    assert np.mean(draws == 1.0) == pytest.approx(1 / (1 + c), abs=0.005)
    assert np.mean(draws == 21.0) == pytest.approx(c / (1 + c) / 4, abs=0.005)


@pytest.mark.parametrize("function", [pl.uma_los, pl.uma_nlos, pl.uma_nlos_optional])
def test_out_of_range_distance_raises_or_clamps(function):
    with pytest.raises(ValueError, match=r"d2d must be in \[10, 5000\].*got 9.5"):
        function(9.5, FC)
    with pytest.raises(ValueError, match="d2d must be in"):
        function(np.array([100.0, 5001.0]), FC)
    np.testing.assert_allclose(
        function([0.1, 9.5, 6000.0], FC, clamp=True), function([10.0, 10.0, 5000.0], FC)
    )
    for bad in (0.0, -3.0):
        with pytest.raises(ValueError, match="d2d must be > 0"):
            function(bad, FC, clamp=True)
    with pytest.raises(ValueError, match="d2d must be finite"):
        function(np.nan, FC, clamp=True)


@pytest.mark.parametrize("fc", [0.4, 120.0, 0.0])
def test_frequency_out_of_range_raises(fc):
    with pytest.raises(ValueError, match=r"fc_ghz must be in \[0.5, 100\]"):
        pl.uma_nlos_optional(100.0, fc)
    with pytest.raises(ValueError, match="fc_ghz"):
        pl.breakpoint_distance(fc)


def test_bad_heights_raise():
    with pytest.raises(ValueError, match="h_ut - h_e must be > 0"):
        pl.uma_los(100.0, FC, h_ut=1.5, h_e=2.0)
    for model in (pl.uma_los, pl.uma_nlos, pl.uma_nlos_optional):
        for h_ut in (1.0, 30.0):  # outside 1.5-22.5 m, Table 7.4.1-1 note 1
            with pytest.raises(ValueError, match=r"h_ut must be in \[1.5, 22.5\]"):
                model(100.0, FC, h_ut=h_ut)
    with pytest.raises(ValueError, match="h_ut must be in"):
        pl.uma_los_probability(100.0, h_ut=30.0)


def test_registry():
    model = pl.get_pathloss_model("uma-nlos-optional")
    assert model.shadowing_std_db == 7.8 and model.function is pl.uma_nlos_optional
    assert {m.shadowing_std_db for m in pl.PATHLOSS_MODELS.values()} == {4.0, 6.0, 7.8}
    with pytest.raises(ValueError, match="unknown path-loss model 'uma'; known models: uma-los"):
        pl.get_pathloss_model("uma")
