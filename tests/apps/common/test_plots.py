"""apps.common.plots: curves with nothing a log axis can show (a run that diverged in its first epoch has only
its initial model, at 0 rounds) are named in the legend with why, and the figure is still written."""

import warnings

import matplotlib
import numpy as np
import pytest

from apps.common import plots

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend)


def drawn(monkeypatch):
    """What every plot_curves call from now on draws: {"legend": [...], "texts": [...], "lines": [(x, y)]}."""
    seen = {}
    real = plots.atomic_savefig

    def save(fig, path, **kwargs):
        ax = fig.axes[0]
        legend = ax.get_legend()
        seen.update(legend=[t.get_text() for t in legend.texts] if legend else [],
                    texts=[t.get_text() for t in ax.texts],
                    lines=[(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines])
        return real(fig, path, **kwargs)

    monkeypatch.setattr(plots, "atomic_savefig", save)
    return seen


def test_curves_with_only_a_point_at_zero_are_named_not_drawn_and_the_figure_is_written(tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    path = tmp_path / "test_mse_vs_rounds.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a warning on stderr about singular limits
        plots.plot_curves(path, {"C-SGD (diverged at epoch 1)": ([0.0], [761.0]), "D-SGD": ([0.0], [761.0])},
                          xlabel="message-passing rounds", ylabel="test MSE", logx=True, logy=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["legend"] == ["C-SGD (diverged at epoch 1; not drawn: no point at message-passing rounds > 0)",
                              "D-SGD (not drawn: no point at message-passing rounds > 0)"]
    assert seen["texts"] == ["nothing to draw"]


def test_a_lone_curve_without_a_drawable_point_still_says_why(tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    plots.plot_curves(tmp_path / "c.png", {"test_mse": ([0.0, 40.0], [float("nan"), float("nan")])},
                      xlabel="rounds", ylabel="MSE", logx=True, logy=True)
    assert seen["legend"] == ["test_mse (not drawn: no finite MSE)"]


def test_the_drawable_points_of_other_curves_are_drawn(tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    plots.plot_curves(tmp_path / "c.png", {"a": ([0, 10, 20], [5.0, 2.0, -1.0]), "b": ([0], [3.0])},
                      xlabel="rounds", ylabel="MSE", logx=True, logy=True)
    assert seen["lines"][0] == ([10.0], [2.0])  # 0 rounds and MSE <= 0 are off the log axes
    assert seen["legend"] == ["a", "b (not drawn: no point at rounds > 0)"]
    assert seen["texts"] == []


@pytest.mark.parametrize("x, y, logx, logy, reason", [
    ([1, 2], [1, 2], True, True, None),
    ([0, 0], [1, 2], True, True, "no point at x > 0"),
    ([1, 2], [0, -1], True, True, "no y > 0"),
    ([0, 0], [0, -1], False, False, None),  # linear axes draw them
    ([1, 2], [np.nan, np.inf], False, False, "no finite y"),
    ([], [], False, False, "no point"),
])
def test_drawable_says_why_a_curve_has_nothing_to_draw(x, y, logx, logy, reason):
    mask, why = plots.drawable(x, y, logx, logy)
    assert why == reason and mask.any() == (reason is None)


def test_not_drawn_goes_inside_a_trailing_parenthesis():
    assert plots.not_drawn("D-SGD", None) == "D-SGD"
    assert plots.not_drawn("D-SGD", "why") == "D-SGD (not drawn: why)"
    assert plots.not_drawn("D-SGD (diverged)", "why") == "D-SGD (diverged; not drawn: why)"


def test_log_scales_on_axes_without_positive_data_do_not_raise(tmp_path):
    fig, ax = plt.subplots()
    try:
        ax.plot([], [])
        ax.axhline(0.01)  # a single positive y value: a decade around it
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plots.log_scales(ax, logx=True, logy=True)
            fig.savefig(tmp_path / "x.png")
        assert ax.get_xlim() == (1.0, 10.0)
        assert ax.get_ylim() == pytest.approx((0.01 / 10 ** 0.5, 0.01 * 10 ** 0.5))
    finally:
        plt.close(fig)
